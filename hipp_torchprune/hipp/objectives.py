"""Robustness and utility objectives for policy search, taken from the registered reward tasks.

``rob`` is the ``pope`` reward task (POPE-adversarial) and ``util`` the ``scienceqa`` one, each
returning the chosen statistic of the gold margins (``"loglik"`` by default, ``"margin"`` the
paper's: :mod:`hipp_torchprune.rewards`); both share documents, prompts and margins with ``hipp eval`` and the
lmms-eval tasks (see :mod:`hipp_torchprune.rewards`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hipp_torchprune.errors import DataError
from hipp_torchprune.registry import Registry, default_registry
from hipp_torchprune.rewards import RewardStatistic


def default_objectives(processor: Any, data_dir: str | Path, split: str = "calibration", limit: int | None = 128,
                       batch_size: int = 64, registry: Registry | None = None,
                       statistic: RewardStatistic = "loglik") -> dict[str, Any]:
    """``{"rob": pope reward, "util": scienceqa reward}``, each returning ``statistic``, prepared
    once; empty tasks are refused."""
    registry = registry or default_registry()
    objectives = {key: registry.get("reward task", name)(processor, data_dir, split, limit, batch_size,
                                                         statistic=statistic)
                  for key, name in (("rob", "pope"), ("util", "scienceqa"))}
    for key, objective in objectives.items():
        if objective.size == 0:
            raise DataError(f"no {objective.task_name()} examples in the {split!r} split of {data_dir}; "
                            "build a larger world or choose another split")
    return objectives
