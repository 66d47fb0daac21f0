"""Paired bootstrap (``hipp_torchprune.bootstrap``): hand-checked statistic, interval behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from hipp_torchprune.bootstrap import BootstrapError, paired_bootstrap, stratified_accuracy


def test_stratified_accuracy_by_hand() -> None:
    correct = np.array([1, 1, 0, 1, 0, 0])
    gold = np.array([1, 1, 1, 1, 0, 0])  # yes rows: 3 of 4 right; no rows: 0 of 2
    assert stratified_accuracy(correct, gold) == pytest.approx((0.75 + 0.0) / 2)
    assert stratified_accuracy(correct, np.zeros(6)) == pytest.approx(0.5)  # one stratum: accuracy


def test_identical_methods_give_a_zero_interval_and_a_clear_lead_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.9).astype(int)
    same = paired_bootstrap(a, a.copy())
    assert (same.difference, same.low, same.high, same.units) == (0.0, 0.0, 0.0, 2000) and not same.excludes_zero
    b = a.copy()
    b[rng.choice(2000, 100, replace=False)] = 0  # B loses up to 100 rows A gets right
    lead = paired_bootstrap(a, b, resamples=500)
    assert 0 < lead.low < lead.difference < lead.high and lead.excludes_zero
    assert lead.difference == pytest.approx((a.sum() - b.sum()) / 2000)


def test_pairing_narrows_the_interval_when_the_methods_err_on_the_same_rows() -> None:
    rng = np.random.default_rng(1)
    hard = rng.random(1000) < 0.3  # rows both methods tend to miss
    a = (~hard | (rng.random(1000) < 0.2)).astype(int)
    b = a.copy()
    b[np.flatnonzero(a)[:10]] = 0  # B: A's answers, ten right ones turned wrong
    paired = paired_bootstrap(a, b, resamples=500)
    unpaired_se = np.sqrt(a.var() / 1000 + b.var() / 1000)
    assert paired.high - paired.low < 2 * 1.96 * unpaired_se / 3  # the shared hard rows cancel


def test_strata_are_resampled_apart_and_the_seed_repeats() -> None:
    a = np.array([1] * 50 + [0] * 50)
    b = np.array([0] * 50 + [0] * 50)
    gold = np.array([1] * 50 + [0] * 50)
    res = paired_bootstrap(a, b, gold, resamples=200, seed=3)
    # inside each stratum every unit is the same, so every resample gives the same difference
    assert res.difference == res.low == res.high == pytest.approx(0.5)
    assert paired_bootstrap(a, b, gold, resamples=200, seed=3) == res


@pytest.mark.parametrize(("a", "b", "strata"), [([1, 0], [1], None), ([], [], None), ([1, 0], [0, 1], [1])])
def test_mismatched_or_empty_inputs_are_refused(a: list, b: list, strata: list | None) -> None:
    with pytest.raises(BootstrapError, match="paired_bootstrap"):
        paired_bootstrap(np.array(a), np.array(b), None if strata is None else np.array(strata))
