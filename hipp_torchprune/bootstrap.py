"""Paired bootstrap intervals for "method A minus method B" on the same test rows (pure numpy).

Both methods answered the same rows (pooled over seeds, row ``i`` of seed ``s`` is one unit);
``correct`` marks each unit's answer right or wrong. The statistic is a stratified accuracy: the
mean over strata of each stratum's mean correctness (one stratum: accuracy; POPE's gold yes / no
as strata: balanced accuracy). Each resample draws the units of every stratum with replacement
inside that stratum, the same draw for both methods, so the interval is for the paired difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hipp_torchprune.errors import HippError


class BootstrapError(HippError, ValueError):
    """The two methods' rows (or the strata) do not line up."""


@dataclass(frozen=True)
class PairedInterval:
    """A paired difference and its percentile bootstrap interval (in the statistic's units)."""

    #: Statistic of A minus statistic of B on all units.
    difference: float
    #: Lower end of the interval.
    low: float
    #: Upper end of the interval.
    high: float
    #: Units (rows x seeds) the difference is over.
    units: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0."""
        return self.low > 0 or self.high < 0


def stratified_accuracy(correct: np.ndarray, strata: np.ndarray) -> float:
    """Mean over strata of each stratum's mean of ``correct`` (``(N,)`` 0/1 and ``(N,)`` labels)."""
    return float(np.mean([correct[strata == s].mean() for s in np.unique(strata)]))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, strata: np.ndarray | None = None, *, resamples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> PairedInterval:
    """:class:`PairedInterval` of ``stratified_accuracy(a) - stratified_accuracy(b)`` over units
    answered by both (``a``, ``b``: ``(N,)`` 0/1 correctness of the same units; ``strata``: ``(N,)``
    labels, default one stratum). Seeded: the same inputs give the same interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    strata = np.zeros(len(a), dtype=np.int64) if strata is None else np.asarray(strata)
    if a.shape != b.shape or a.shape != strata.shape or a.ndim != 1 or len(a) == 0:
        raise BootstrapError(f"paired_bootstrap needs two equal, non-empty 1-d row vectors and strata ({a.shape}, "
                         f"{b.shape}, {strata.shape})")
    rng = np.random.default_rng(seed)
    per_stratum = []
    for s in np.unique(strata):
        d = (a - b)[strata == s]  # (n_s,)
        draws = rng.integers(0, len(d), size=(resamples, len(d)))  # (R, n_s)
        per_stratum.append(d[draws].mean(1))  # (R,)
    diffs = np.mean(per_stratum, axis=0)  # (R,)
    tail = 100 * (1 - level) / 2
    return PairedInterval(stratified_accuracy(a, strata) - stratified_accuracy(b, strata),
                          float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail)), len(a))
