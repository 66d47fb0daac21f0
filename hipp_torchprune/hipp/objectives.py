"""Robustness and utility objectives for policy search: mean log-margins on prepared batches.

The documents, prompts and margins are the evaluation code's (``hipp eval`` and the lmms-eval
tasks use the same), prepared once; each call is one forward per batch on the masked model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import evaluate, prepare_eval


class MarginObjective:
    """Mean gold-answer log-margin of a task (``pope_adversarial``, ``scienceqa`` ...) on one split."""

    def __init__(self, processor: Any, data_dir: str | Path, task: str, split: str = "calibration",
                 limit: int | None = 128, batch_size: int = 64) -> None:
        self.processor, self.task = processor, task
        self.prepared = prepare_eval(processor, data_dir, task, limit=limit, batch_size=batch_size, split=split)
        if not any(t.gold for t in self.prepared.tasks):
            raise DataError(f"no {task} examples in the {split!r} split of {data_dir}; "
                            "build a larger world or choose another split")

    def __call__(self, model: nn.Module) -> float:
        """The task's mean log-margin under ``model`` as it is now (masks included)."""
        return float(evaluate(model, self.processor, self.prepared)[self.task]["margin"])


def default_objectives(processor: Any, data_dir: str | Path, split: str = "calibration", limit: int | None = 128,
                       batch_size: int = 64) -> dict[str, MarginObjective]:
    """``rob``: POPE-adversarial margin; ``util``: ScienceQA margin."""
    return {"rob": MarginObjective(processor, data_dir, "pope_adversarial", split, limit, batch_size),
            "util": MarginObjective(processor, data_dir, "scienceqa", split, limit, batch_size)}
