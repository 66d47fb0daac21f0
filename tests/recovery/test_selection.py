"""recovery/selection.py: row weights, the paired gain and the replacement rule, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hipp_torchprune.evaluation import mc_metrics, pope_metrics
from hipp_torchprune.recovery.selection import guard_keeps, paired_gain, replaces, row_weights, task_weights


def test_pope_weights_give_balanced_accuracy() -> None:
    gold = [0, 1, 1, 1]  # one yes row, three no rows
    w = task_weights("pope", gold)
    assert w.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    correct = np.array([1, 1, 0, 0])
    margins = [1.0, -1.0, 1.0, 1.0]  # yes right, one no right, two no wrong
    assert float(w @ correct) == pytest.approx(pope_metrics(margins, [g == 0 for g in gold])["balanced_accuracy"])


def test_pope_weights_with_one_class_missing_match_pope_metrics() -> None:
    w = task_weights("pope", [1, 1])
    assert w.tolist() == [0.25, 0.25]  # the empty yes class contributes 0, as its TPR does
    assert float(w @ np.array([1, 1])) == pope_metrics([-1.0, -1.0], [False, False])["balanced_accuracy"]


def test_mc_weights_give_accuracy_and_tasks_average() -> None:
    assert task_weights("mc", [2, 0, 1, 3]).tolist() == [0.25] * 4
    assert task_weights("mc", []).size == 0
    w = row_weights([("pope", [0, 1]), ("mc", [0, 0, 0, 0])])
    assert w.tolist() == pytest.approx([0.25, 0.25, 0.125, 0.125, 0.125, 0.125])
    correct = np.array([1, 0, 1, 1, 1, 0])  # POPE balanced 0.5, MC accuracy 0.75
    assert float(w @ correct) == pytest.approx((0.5 + mc_metrics([[0, -1], [0, -1], [0, -1], [-1, 0]],
                                                                 [0, 0, 0, 0])["accuracy"]) / 2)
    with pytest.raises(ValueError, match="at least one task"):
        row_weights([])


def test_paired_gain_by_hand() -> None:
    w = np.array([0.5, 0.5])
    assert paired_gain([1, 1], [0, 1], w) == pytest.approx((0.5, 0.5))
    w4 = np.full(4, 0.25)
    gain, se = paired_gain([1, 1, 1, 0], [0, 0, 1, 1], w4)  # d = +1, +1, 0, -1
    assert gain == pytest.approx(0.25) and se == pytest.approx(0.25 * np.sqrt(3))
    assert paired_gain([1, 0], [1, 0], w) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        paired_gain([1, 0, 1], [1, 0, 1], w)


@pytest.mark.parametrize(("gain", "se", "z", "expected"), [
    (0.02, 0.01, 1.0, True), (0.02, 0.01, 2.0, False), (0.02, 0.01, 0.0, True),
    (0.0, 0.0, 0.0, False), (1e-15, 0.0, 0.0, False), (-0.01, 0.0, 0.0, False), (0.01, 0.0, 3.0, True), (0.01, 0.01, 1.0, False)])
def test_replaces_needs_a_strict_gain_beyond_z_standard_errors(gain: float, se: float, z: float,
                                                                expected: bool) -> None:
    assert replaces(gain, se, z) is expected


@pytest.mark.parametrize(("gain", "se", "z", "expected"), [
    (-0.02, 0.01, 1.0, False), (-0.01, 0.01, 1.0, True), (-0.02, 0.01, 2.0, True), (0.0, 0.0, 1.0, True),
    (-1e-15, 0.0, 0.0, True), (-0.01, 0.0, 0.0, False), (0.05, 0.01, 3.0, True)])
def test_guard_keeps_the_last_state_unless_it_lost_beyond_z_standard_errors(gain: float, se: float, z: float,
                                                                            expected: bool) -> None:
    assert guard_keeps(gain, se, z) is expected
