"""Choosing which recovery state to hand back, from per-row correctness on held-out rows.

Pure functions, no model. The selection score of a state is the mean over the scored tasks of POPE
balanced accuracy and multiple-choice accuracy, which is linear in per-row correctness: each row has
a weight (:func:`row_weights`) and the score is ``sum(w * correct)``. Two states scored on the same
rows differ by ``sum(w * d)`` with ``d = correct_new - correct_old`` in {-1, 0, 1}; under the null of
no difference the rows' signs are exchangeable, so ``sqrt(sum((w * d) ** 2))`` is that gain's
standard error (:func:`paired_gain`, a sign-flip z statistic). A state replaces the one held only
when its gain clears ``z`` standard errors (:func:`replaces`), so recovery stops trading a real
model for noise in a few hundred selection rows. The guard rule (:func:`guard_keeps`) is the other
way round: the last state is handed back unless it is worse than the unrecovered model by more than
``z`` standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def task_weights(family: str, gold: Sequence[int]) -> np.ndarray:
    """Per-row weights whose dot product with correctness is the task's metric.

    POPE (``family == "pope"``, gold 0 = yes): balanced accuracy, ``0.5 / n_yes`` per yes row and
    ``0.5 / n_no`` per no row (a class with no rows adds 0, as :func:`~hipp_torchprune.evaluation.
    pope_metrics` counts it). Otherwise accuracy, ``1 / n`` per row.
    Example: ``task_weights("pope", [0, 1, 1])`` -> ``[0.5, 0.25, 0.25]``.
    """
    g = np.asarray(gold, dtype=np.int64)
    if g.size == 0:
        return np.zeros(0)
    if family != "pope":
        return np.full(g.size, 1.0 / g.size)
    yes, no = int((g == 0).sum()), int((g != 0).sum())
    return np.where(g == 0, 0.5 / max(yes, 1), 0.5 / max(no, 1))


def row_weights(tasks: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """Concatenated weights of several ``(family, gold)`` tasks, each task counting ``1 / len(tasks)``:
    ``row_weights(...) @ correct`` is the mean of the tasks' metrics (the recovery selection score)."""
    if not tasks:
        raise ValueError("row_weights needs at least one task")
    return np.concatenate([task_weights(f, g) / len(tasks) for f, g in tasks])


def paired_gain(new: Sequence[int], old: Sequence[int], weights: np.ndarray) -> tuple[float, float]:
    """``(gain, standard error)`` of the ``new`` state's score over ``old``'s on the same rows.

    Example: weights ``[0.5, 0.5]``, new ``[1, 1]``, old ``[0, 1]`` -> ``(0.5, 0.5)``.
    """
    d = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
    if d.shape != weights.shape:
        raise ValueError(f"correctness and weights differ in shape: {d.shape} vs {weights.shape}")
    wd = weights * d
    return float(wd.sum()), float(math.sqrt(float((wd * wd).sum())))


#: Gains this small are rounding in the weighted sum, not a row: equal scores keep the held state.
TIE = 1e-12


def replaces(gain: float, se: float, z: float) -> bool:
    """Whether a state ``gain`` above the held one (standard error ``se``) replaces it: ``gain > z * se``
    and ``gain > 0`` beyond rounding (``z = 0``: any strict improvement, the plain best-score rule)."""
    return gain > TIE and gain > z * se


def guard_keeps(gain: float, se: float, z: float) -> bool:
    """Whether the guard hands back the last state, ``gain`` above the unrecovered one (standard
    error ``se``): unless it lost more than ``z`` standard errors (``gain < -z * se``) and more than
    rounding. Example: ``guard_keeps(-0.02, 0.01, 1.0)`` -> False; ``guard_keeps(-0.01, 0.01, 1.0)`` -> True."""
    return not (gain < -TIE and gain < -z * se)
