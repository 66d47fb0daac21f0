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


def test_sensitivity_ratios_prune_harmless_layers_most_and_meet_the_budget() -> None:
    from hipp_torchprune.pruning.allocators import sensitivity_ratios

    # drops 0.09 / 0.0 / -0.02 / 0.01 with floor 0.01 -> weights 10, 100, 100, 50
    ratios = sensitivity_ratios([0.09, 0.0, -0.02, 0.01], [1, 1, 1, 1], 0.4, 0.9)
    assert abs(sum(ratios) / 4 - 0.4) < 1e-9
    assert ratios[1] == ratios[2] and ratios[1] > ratios[3] > ratios[0]
    assert abs(ratios[1] / ratios[0] - 10.0) < 1e-6 and abs(ratios[1] / ratios[3] - 2.0) < 1e-6
    # a tight cap hands the overflow to the sensitive layer
    capped = sensitivity_ratios([0.09, 0.0, -0.02, 0.01], [1, 1, 1, 1], 0.6, 0.7)
    assert capped[1] == capped[2] == 0.7 and abs(sum(capped) / 4 - 0.6) < 1e-9
