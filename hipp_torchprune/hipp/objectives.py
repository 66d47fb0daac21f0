"""Robustness and utility objectives for policy search, taken from the registered reward tasks.

``rob`` is the ``pope`` reward task (POPE-adversarial) and ``util`` the ``scienceqa`` one, each
returning one statistic of the gold margins (:mod:`hipp_torchprune.rewards`); both share
documents, prompts and margins with ``hipp eval`` and the lmms-eval tasks. The default
statistics, :data:`DEFAULT_STATISTICS`, are the ones that rank pruned models as test accuracy
does on the proving ground (``benchmarks/reward_ranking.py``, ``docs/method.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hipp_torchprune.errors import DataError
from hipp_torchprune.registry import Registry, default_registry
from hipp_torchprune.rewards import STATISTICS, RewardStatistic

#: (robustness, utility) statistics: the gold log-likelihood for both (``docs/method.md``, "Reward statistic").
DEFAULT_STATISTICS: tuple[RewardStatistic, RewardStatistic] = ("loglik", "loglik")


def statistic_pair(statistic: str | tuple[str, str]) -> tuple[str, str]:
    """``(rob, util)`` statistics from one name (both objectives), ``"ROB,UTIL"`` or a pair; each
    must be in :data:`~hipp_torchprune.rewards.STATISTICS`, else :class:`DataError`.

    Example: ``statistic_pair("margin") == statistic_pair("margin,margin") == ("margin", "margin")``.
    """
    names = tuple(statistic.split(",")) if isinstance(statistic, str) else tuple(statistic)
    pair = names * 2 if len(names) == 1 else names
    if len(pair) != 2 or any(n not in STATISTICS for n in pair):
        raise DataError(f"reward statistics must be one of {', '.join(STATISTICS)} or a ROB,UTIL pair of them, "
                        f"got {statistic!r}")
    return pair  # type: ignore[return-value]


def default_objectives(processor: Any, data_dir: str | Path, split: str = "calibration", limit: int | None = 128,
                       batch_size: int = 64, registry: Registry | None = None,
                       statistic: str | tuple[str, str] = DEFAULT_STATISTICS) -> dict[str, Any]:
    """``{"rob": pope reward, "util": scienceqa reward}``, returning ``statistic`` (one name for
    both, or a ``(rob, util)`` pair), prepared once; empty tasks are refused."""
    registry = registry or default_registry()
    objectives = {key: registry.get("reward task", name)(processor, data_dir, split, limit, batch_size,
                                                         statistic=stat)
                  for (key, name), stat in zip((("rob", "pope"), ("util", "scienceqa")), statistic_pair(statistic))}
    for objective in objectives.values():
        if objective.size == 0:
            raise DataError(f"no {objective.task_name()} examples in the {split!r} split of {data_dir}; "
                            "build a larger world or choose another split")
    return objectives
