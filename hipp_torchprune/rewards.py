"""Reward tasks for policy search: POPE and ScienceQA gold-answer statistics, scored on the hot path.

Each reward is one statistic of the per-row gold margins (eq. 11): ``"margin"``, their mean (the
paper's), ``"loglik"``, the mean log-probability of the gold answer among the options
(:func:`~hipp_torchprune.evaluation.gold_loglik`), which ranks pruned models as test accuracy
does where the mean margin does not, or ``"prob"``, the mean gold probability
(:func:`~hipp_torchprune.evaluation.gold_prob`), which stops paying for confidence on rows whose
answer does not change (``docs/method.md``, "Reward statistic").

A reward and the lmms-eval tasks ``hipp_pope_*`` / ``hipp_scienceqa_img`` (``plugins/hipp-lmms``)
and ``hipp eval`` share every step, so a reward equals the ``margin``, ``loglik`` or ``prob`` those report
on the same rows:

1. rows: :func:`hipp_torchprune.data.load_task_docs` (POPE filtered by category, ScienceQA rows
   with an image), read once at construction;
2. prompts: :func:`hipp_torchprune.data.pope_prompt` / ``scienceqa_prompt`` (lmms-eval's own);
3. inputs: :func:`hipp_torchprune.evaluation.prepare_eval` decodes the images and tokenizes the
   left-padded batches once;
4. each call: :func:`hipp_torchprune.evaluation.score_task` runs one forward pass per batch,
   reads the answer-variant log-probabilities at the answer position and computes
   :func:`~hipp_torchprune.evaluation.pope_metrics` / ``mc_metrics``; the reward is their
   ``statistic`` entry.

No lmms-eval code runs on this path (no task building, no request objects, no result strings),
so a call costs the forward passes and a few list operations.

The classes are registered as ``hipp_reward_tasks`` plugins (``pope``, ``scienceqa``); look one
up with ``default_registry().get("reward task", "pope")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import nn

from hipp_torchprune.data import TASKS
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import PreparedEval, PreparedTask, evaluate, prepare_eval

__all__ = ["STATISTICS", "MarginReward", "PopeMarginReward", "RewardStatistic", "ScienceQAMarginReward"]

#: Which statistic of the gold margins a reward returns.
RewardStatistic = Literal["margin", "loglik", "prob"]
#: The valid :data:`RewardStatistic` values.
STATISTICS: tuple[str, ...] = ("margin", "loglik", "prob")


class MarginReward:
    """A gold-answer statistic of one task on prepared batches (subclasses set ``name``).

    Args:
        processor: the model's processor (chat template, tokenizer, image processor).
        data_dir: proving-ground world, split directory or lmms-lab download.
        split: split of a world directory (``calibration`` for search, ``test`` for reports).
        limit: keep the first ``limit`` rows (None: all).
        batch_size: examples per forward pass.
        statistic: ``"margin"`` (mean gold log-margin, the paper's), ``"loglik"`` (mean gold
            log-probability among the options) or ``"prob"`` (mean gold probability among them,
            :func:`~hipp_torchprune.evaluation.gold_prob`).
    """

    #: Registry name of the reward task.
    name: ClassVar[str] = ""
    #: Name of the evaluation task in :data:`hipp_torchprune.data.TASKS`.
    task: ClassVar[str] = ""

    def __init__(self, processor: Any, data_dir: str | Path, split: str = "calibration",
                 limit: int | None = 128, batch_size: int = 64, *, statistic: RewardStatistic = "margin") -> None:
        if statistic not in STATISTICS:
            raise DataError(f"unknown reward statistic {statistic!r}; valid: {', '.join(STATISTICS)}")
        self.processor, self.statistic = processor, statistic
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
        """The chosen statistic (``self.statistic``) under ``model``."""
        return float(self.metrics(model)[self.statistic])


class PopeMarginReward(MarginReward):
    """POPE yes/no margin ``log p(gold) - log p(other)``; adversarial rows unless ``category`` says otherwise."""

    name: ClassVar[str] = "pope"
    task: ClassVar[str] = "pope_adversarial"

    def __init__(self, processor: Any, data_dir: str | Path, split: str = "calibration",
                 limit: int | None = 128, batch_size: int = 64, category: str = "adversarial", *,
                 statistic: RewardStatistic = "margin") -> None:
        if f"pope_{category}" not in TASKS:
            raise DataError(f"unknown POPE category {category!r}; valid: random, popular, adversarial")
        self.category = category
        super().__init__(processor, data_dir, split, limit, batch_size, statistic=statistic)

    def task_name(self) -> str:
        """``pope_<category>``."""
        return f"pope_{self.category}"


class ScienceQAMarginReward(MarginReward):
    """ScienceQA (image questions) margin ``lp[gold] - logsumexp(lp[other options])``."""

    name: ClassVar[str] = "scienceqa"
    task: ClassVar[str] = "scienceqa_img"
