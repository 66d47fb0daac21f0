"""Pure plan arithmetic, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from hipp_torchprune.errors import PlanError, RoundingError
from hipp_torchprune.pruning.plan import (
    budget_matched_widths,
    kept_width,
    kept_widths,
    realized_sparsity,
    torch_pruning_ratio,
    validate_ratios,
    waterfill,
)


@pytest.mark.parametrize(
    ("width", "ratio", "round_to", "r_max", "expected"),
    [
        (11008, 0.225, 64, 0.8, 8512),  # 8531.2 -> nearest multiple of 64 is 8512
        (11008, 0.225, 32, 0.8, 8544),  # -> 8544 (the fast width measured on the H100)
        (256, 0.0, 64, 0.8, 256),       # ratio 0 keeps the layer dense
        (250, 0.0, 64, 0.8, 250),       # ... even when the width is not a multiple
        (256, 0.8, 64, 0.8, 64),        # 51.2 rounds to 64, never to 0
        (256, 0.99, 64, 0.99, 64),      # width never 0
        (512, 0.7, 64, 0.7, 192),       # 153.6 -> 128 would break r_max=0.7 (needs >= 153.6) -> 192
        (100, 0.01, 64, 0.8, 100),      # 99 -> 128 > width -> capped at width
    ],
)
def test_kept_width(width: int, ratio: float, round_to: int, r_max: float, expected: int) -> None:
    assert kept_width(width, ratio, round_to, r_max) == expected


@pytest.mark.parametrize(
    ("ratios", "message"),
    [([0.1, 0.2], "3 prunable layers"), ([0.1, float("nan"), 0.1], "finite"), ([0.1, -0.1, 0.1], "outside"),
     ([0.1, 0.9, 0.1], "outside")],
)
def test_validate_ratios_rejects(ratios: list[float], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        validate_ratios(ratios, 3, 0.8)


@pytest.mark.parametrize("round_to", [0, -8, 3.5, 512, True])
def test_round_to_rejects(round_to: object) -> None:
    with pytest.raises(RoundingError):
        kept_widths([0.2, 0.2], [256, 256], round_to, 0.8)  # type: ignore[arg-type]


def test_realized_sparsity_weights_by_row_params() -> None:
    # layer 0 removes 64 of 256 rows of 10 params, layer 1 removes 0 of 128 rows of 30 params
    assert realized_sparsity([256, 128], [192, 128], [10, 30]) == pytest.approx(640 / (2560 + 3840))


def test_waterfill_redistributes_overflow() -> None:
    # unclipped plan rho*L*alpha = [1.2, 0.3, 0.3] (mean 0.6); capped at 0.8 the overflow 0.4 goes
    # to the other two layers equally: [0.8, 0.5, 0.5]
    ratios = waterfill([0.6, 0.15, 0.15], [1, 1, 1], target=0.6, cap=0.8)
    assert ratios == pytest.approx([0.8, 0.5, 0.5], abs=1e-9)


@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [5, 1, 0.1, 0.01], [0, 1, 2, 3]])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5])
def test_waterfill_hits_target_under_cap(weights: list[float], target: float) -> None:
    sizes = [100, 200, 300, 400]
    ratios = waterfill(weights, sizes, target, cap=0.8)
    assert max(ratios) <= 0.8 + 1e-12
    assert sum(r * s for r, s in zip(ratios, sizes)) / sum(sizes) == pytest.approx(target, abs=1e-9)


def test_waterfill_rejects_unreachable() -> None:
    with pytest.raises(PlanError):
        waterfill([1, 1], [1, 1], target=0.9, cap=0.8)
    with pytest.raises(PlanError):
        waterfill([1, 0], [1, 1], target=0.5, cap=0.8)  # only half the params can move


def test_budget_matching_beats_independent_rounding() -> None:
    widths, params = [256] * 4, [10] * 4
    ratios = [0.3] * 4  # 179.2 -> 192 each: 25% instead of 30%
    naive = kept_widths(ratios, widths, 64, 0.8)
    matched = budget_matched_widths(ratios, widths, 64, 0.8, params)
    assert realized_sparsity(widths, naive, params) == pytest.approx(0.25)
    assert abs(realized_sparsity(widths, matched, params) - 0.3) < abs(0.25 - 0.3)
    assert all(k % 64 == 0 for k in matched)


@pytest.mark.parametrize(("width", "kept"), [(11008, 8512), (256, 192), (4864, 3776), (256, 256)])
def test_torch_pruning_ratio_reproduces_width(width: int, kept: int) -> None:
    r = torch_pruning_ratio(width, kept)
    assert int(width * (1 - r)) == kept  # Torch-Pruning's own formula
    assert math.isclose(r, 0.0) if kept == width else r > 0
