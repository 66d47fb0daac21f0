"""Reward tasks for policy search: POPE and ScienceQA mean log-margins, scored on the hot path.

A reward and the lmms-eval tasks ``hipp_pope_*`` / ``hipp_scienceqa_img`` (``plugins/hipp-lmms``)
and ``hipp eval`` share every step, so a reward equals the ``margin`` those report on the same
rows:

1. rows: :func:`hipp_torchprune.data.load_task_docs` (POPE filtered by category, ScienceQA rows
   with an image), read once at construction;
2. prompts: :func:`hipp_torchprune.data.pope_prompt` / ``scienceqa_prompt`` (lmms-eval's own);
3. inputs: :func:`hipp_torchprune.evaluation.prepare_eval` decodes the images and tokenizes the
   left-padded batches once;
4. each call: :func:`hipp_torchprune.evaluation.score_task` runs one forward pass per batch,
   reads the answer-variant log-probabilities at the answer position and computes
   :func:`~hipp_torchprune.evaluation.pope_metrics` / ``mc_metrics``; the reward is their
   ``margin``.

No lmms-eval code runs on this path (no task building, no request objects, no result strings),
so a call costs the forward passes and a few list operations.

The classes are registered as ``hipp_reward_tasks`` plugins (``pope``, ``scienceqa``); look one
up with ``default_registry().get("reward task", "pope")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from hipp_torchprune.data import TASKS
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import PreparedEval, PreparedTask, evaluate, prepare_eval

__all__ = ["MarginReward", "PopeMarginReward", "ScienceQAMarginReward"]


class MarginReward:
    """Mean gold-answer log-margin of one task on prepared batches (subclasses set ``name``).

    Args:
        processor: the model's processor (chat template, tokenizer, image processor).
        data_dir: proving-ground world, split directory or lmms-lab download.
        split: split of a world directory (``calibration`` for search, ``test`` for reports).
        limit: keep the first ``limit`` rows (None: all).
        batch_size: examples per forward pass.
    """

    #: Registry name of the reward task.
    name: ClassVar[str] = ""
    #: Name of the evaluation task in :data:`hipp_torchprune.data.TASKS`.
    task: ClassVar[str] = ""

    def __init__(self, processor: Any, data_dir: str | Path, split: str = "calibration",
                 limit: int | None = 128, batch_size: int = 64) -> None:
        self.processor = processor
        self.prepared: PreparedTask = self._prepare(processor, data_dir, self.task_name(), split, limit, batch_size)

    def task_name(self) -> str:
        """The evaluation task this reward scores."""
        return self.task

    @staticmethod
    def _prepare(processor: Any, data_dir: str | Path, task: str, split: str, limit: int | None,
                 batch_size: int) -> PreparedTask:
        if limit is not None and limit < 1:
            raise DataError(f"reward limit must be >= 1 or None, got {limit}")
        return prepare_eval(processor, data_dir, task, limit=limit, batch_size=batch_size, split=split).tasks[0]

    @property
    def size(self) -> int:
        """Number of scored examples."""
        return len(self.prepared.gold)

    def metrics(self, model: nn.Module) -> dict[str, float | int]:
        """Every metric of the task under ``model`` as it is now (masks included)."""
        return evaluate(model, self.processor, PreparedEval([self.prepared]))[self.prepared.name]

    def __call__(self, model: nn.Module) -> float:
        """The mean gold-answer log-margin under ``model``."""
        return float(self.metrics(model)["margin"])


class PopeMarginReward(MarginReward):
    """POPE yes/no margin ``log p(gold) - log p(other)``; adversarial rows unless ``category`` says otherwise."""

    name: ClassVar[str] = "pope"
    task: ClassVar[str] = "pope_adversarial"

    def __init__(self, processor: Any, data_dir: str | Path, split: str = "calibration",
                 limit: int | None = 128, batch_size: int = 64, category: str = "adversarial") -> None:
        if f"pope_{category}" not in TASKS:
            raise DataError(f"unknown POPE category {category!r}; valid: random, popular, adversarial")
        self.category = category
        super().__init__(processor, data_dir, split, limit, batch_size)

    def task_name(self) -> str:
        """``pope_<category>``."""
        return f"pope_{self.category}"


class ScienceQAMarginReward(MarginReward):
    """ScienceQA (image questions) margin ``lp[gold] - logsumexp(lp[other options])``."""

    name: ClassVar[str] = "scienceqa"
    task: ClassVar[str] = "scienceqa_img"
