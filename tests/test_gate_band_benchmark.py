"""``benchmarks/gate_band.py``: the replay tells a band that weighs plans by sparsity from one that does not."""

from __future__ import annotations

import torch

from tests.benchmark_scripts import load_benchmark


def test_replay_shows_the_pooled_band_weighing_by_sparsity() -> None:
    gate_band = load_benchmark("gate_band")
    gen = torch.Generator().manual_seed(0)
    realized = torch.rand(600, generator=gen, dtype=torch.float64) * 0.2 + 0.2  # budgets 0.2-0.4
    phi = -10 * realized + 0.05 * torch.randn(600, generator=gen, dtype=torch.float64)  # healthy: flow falls with sparsity
    pooled = gate_band.replay(phi, realized, "pooled", "both", (0.05, 0.95))
    binned = gate_band.replay(phi, realized, "budget", "lower", (0.05, 0.95))
    light, middle, sparse = pooled["mean_weight_by_sparsity_tercile"]
    assert light < middle and sparse < middle and middle == 1.0  # the extremes of the budget pay
    assert min(binned["mean_weight_by_sparsity_tercile"]) > 0.99  # only noise below each bin's band
    assert abs(binned["spearman_weight_vs_sparsity"]) < 0.1 and binned["downweighted_share"] < 0.02
