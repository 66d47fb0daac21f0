"""Every registered allocation strategy: budget kept, caps respected, seeds reproducible."""

from __future__ import annotations

import pytest

from hipp_torchprune.pruning.allocators import AllocationRequest
from hipp_torchprune.registry import Registry

REQUEST = AllocationRequest(widths=(256, 256, 512, 128), row_params=(192, 192, 192, 384), sparsity=0.35,
                            r_max=0.8, seed=3)


def _weighted_mean(ratios: list[float]) -> float:
    sizes = [w * p for w, p in zip(REQUEST.widths, REQUEST.row_params)]
    return sum(r * s for r, s in zip(ratios, sizes)) / sum(sizes)


@pytest.mark.parametrize("name", ["uniform", "random"])
def test_strategy_keeps_budget_and_cap(registry: Registry, name: str) -> None:
    ratios = registry.get("strategy", name)().allocate(REQUEST)
    assert len(ratios) == 4 and all(0 <= r <= 0.8 + 1e-12 for r in ratios)
    assert _weighted_mean(ratios) == pytest.approx(0.35, abs=1e-9)


def test_random_is_seeded_and_spread(registry: Registry) -> None:
    cls = registry.get("strategy", "random")
    a, b = cls().allocate(REQUEST), cls().allocate(REQUEST)
    c = cls().allocate(AllocationRequest(**{**REQUEST.__dict__, "seed": 4}))
    assert a == b and a != c
    assert max(a) - min(a) > 0.05
