"""Pure plan arithmetic: validation, rounding of kept widths, water-filling, realized sparsity.

A *plan* is a per-layer vector of removal ratios ``r_l`` for the language model's MLPs.
Nothing here touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hipp_torchprune.errors import PlanError, RoundingError


@dataclass(frozen=True)
class Plan:
    """A realized plan: requested ratios, kept widths after rounding, and what it removes.

    ``widths_before``/``widths_after`` are intermediate widths per layer; ``ratios`` are the
    requested removal ratios; :attr:`realized_ratios` are what rounding made of them.
    """

    ratios: tuple[float, ...]
    widths_before: tuple[int, ...]
    widths_after: tuple[int, ...]
    row_params: tuple[int, ...]

    @property
    def realized_ratios(self) -> tuple[float, ...]:
        """Per-layer fraction of rows actually removed."""
        return tuple(1.0 - a / b for a, b in zip(self.widths_after, self.widths_before))

    @property
    def realized_sparsity(self) -> float:
        """Fraction of prunable MLP parameters removed."""
        return realized_sparsity(self.widths_before, self.widths_after, self.row_params)

    def to_dict(self) -> dict:
        """JSON-friendly form (the shape ``hipp prune --json`` prints, minus ``out``)."""
        return {
            "realized_sparsity": self.realized_sparsity,
            "layers": [
                {"index": i, "width_before": b, "width_after": a, "ratio": r}
                for i, (b, a, r) in enumerate(zip(self.widths_before, self.widths_after, self.realized_ratios))
            ],
            "requested_ratios": list(self.ratios),
        }


def validate_ratios(ratios: Sequence[float], num_layers: int, r_max: float) -> tuple[float, ...]:
    """Check a plan's length and range; return it as a tuple of floats.

    Raises :class:`PlanError` for a wrong length, NaN/inf, or a ratio outside ``[0, r_max]``.
    """
    if not 0.0 < r_max < 1.0 or math.isnan(r_max):
        raise PlanError(f"r_max must lie in (0, 1), got {r_max}")
    values = tuple(float(r) for r in ratios)
    if len(values) != num_layers:
        raise PlanError(f"plan has {len(values)} ratios but the model has {num_layers} prunable layers")
    for i, r in enumerate(values):
        if not math.isfinite(r):
            raise PlanError(f"plan ratio for layer {i} is {r}; ratios must be finite")
        if r < 0.0 or r > r_max + 1e-9:
            raise PlanError(f"plan ratio for layer {i} is {r:.4f}, outside [0, r_max={r_max}]")
    return values


def check_round_to(round_to: int, widths: Sequence[int]) -> None:
    """Raise :class:`RoundingError` unless ``round_to`` is a positive int no larger than every width."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise RoundingError(f"round_to must be a positive integer, got {round_to!r}")
    smallest = min(widths)
    if round_to > smallest:
        raise RoundingError(
            f"round_to={round_to} exceeds the smallest MLP width ({smallest}); no kept width could be a "
            f"multiple of it. Use a round_to that divides the widths, e.g. a power of two <= {smallest}."
        )


def kept_width(width: int, ratio: float, round_to: int, r_max: float) -> int:
    """Kept rows of one layer: ``width*(1-ratio)`` rounded to the nearest multiple of ``round_to``.

    Never 0, never above ``width``, and never removing more than ``r_max`` of the rows.
    A ratio of 0 keeps the layer dense even when ``width`` is not a multiple of ``round_to``.
    """
    if ratio <= 0.0:
        return width
    target = width * (1.0 - ratio)
    kept = round_to * int(math.floor(target / round_to + 0.5))
    floor_from_cap = round_to * math.ceil(width * (1.0 - r_max) / round_to - 1e-9)
    kept = max(kept, floor_from_cap, round_to)
    return min(kept, width)


def kept_widths(ratios: Sequence[float], widths: Sequence[int], round_to: int, r_max: float) -> tuple[int, ...]:
    """:func:`kept_width` for every layer, after validating the plan and ``round_to``."""
    values = validate_ratios(ratios, len(widths), r_max)
    check_round_to(round_to, widths)
    return tuple(kept_width(w, r, round_to, r_max) for w, r in zip(widths, values))


def realized_sparsity(widths_before: Sequence[int], widths_after: Sequence[int], row_params: Sequence[int]) -> float:
    """Fraction of prunable MLP parameters removed; ``row_params[l]`` is the parameter count of
    one intermediate channel of layer ``l`` (gate row + up row + down column, biases included)."""
    total = sum(b * p for b, p in zip(widths_before, row_params))
    removed = sum((b - a) * p for b, a, p in zip(widths_before, widths_after, row_params))
    return removed / total if total else 0.0


def waterfill(weights: Sequence[float], sizes: Sequence[float], target: float, cap: float) -> tuple[float, ...]:
    """Ratios ``r_l = min(cap, c * weights_l)`` whose size-weighted mean equals ``target``.

    This is the plan map with overflow redistribution: a plan ``r_l = rho*L*alpha_l`` clipped at
    ``cap`` loses sparsity; scaling ``c`` up until ``sum r_l*sizes_l / sum sizes_l == target``
    hands the clipped overflow to the unclipped layers. Raises :class:`PlanError` when the target
    is unreachable (``target > cap``) or the weights are unusable.
    """
    if not 0.0 <= target <= cap:
        raise PlanError(f"target sparsity {target} is not reachable with r_max={cap}")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise PlanError("allocation weights must be finite, non-negative and not all zero")
    if target == 0.0:
        return tuple(0.0 for _ in weights)
    total = float(sum(sizes))

    def mean_ratio(c: float) -> float:
        return sum(min(cap, c * w) * s for w, s in zip(weights, sizes)) / total

    positive = [w for w in weights if w > 0]
    reachable = sum(s for w, s in zip(weights, sizes) if w > 0) * cap / total
    if target > reachable + 1e-12:
        raise PlanError(f"target {target} is unreachable: only layers with positive weight can be pruned")
    lo, hi = 0.0, cap / min(positive)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_ratio(mid) < target else (lo, mid)
    return tuple(min(cap, hi * w) for w in weights)


def torch_pruning_ratio(width: int, kept: int) -> float:
    """The ratio that makes Torch-Pruning keep exactly ``kept`` of ``width`` channels.

    Torch-Pruning keeps ``int(width * (1 - r))``; ``r = (width - kept - 0.5) / width`` guards that
    floor against floating-point error (``width*(1-r) = kept + 0.5``). A dense layer maps to 0.
    """
    return 0.0 if kept >= width else (width - kept - 0.5) / width


def budget_matched_widths(ratios: Sequence[float], widths: Sequence[int], round_to: int, r_max: float,
                          row_params: Sequence[int]) -> tuple[int, ...]:
    """Rounded kept widths whose total removal is as close as rounding allows to the plan's.

    Starts from :func:`kept_widths` (nearest rounding per layer), then moves single layers by one
    ``round_to`` step, the layer whose rounding error is largest first, while that brings the
    removed parameter count closer to ``sum_l r_l * width_l * row_params_l``. Per-layer shape is
    kept; only rounding directions change. Caps (``r_max``, width >= ``round_to``) still hold.
    """
    kept = list(kept_widths(ratios, widths, round_to, r_max))
    target = sum(r * w * p for r, w, p in zip(ratios, widths, row_params))
    floor_cap = [max(round_to, round_to * math.ceil(w * (1.0 - r_max) / round_to - 1e-9)) for w in widths]

    def removed() -> float:
        return sum((w - k) * p for w, k, p in zip(widths, kept, row_params))

    for _ in range(4 * len(widths)):
        gap = target - removed()  # > 0: remove more
        step = -round_to if gap > 0 else round_to
        candidates = [
            (abs(k + step - w * (1.0 - r)), i)
            for i, (w, k, r) in enumerate(zip(widths, kept, ratios))
            if r > 0 and floor_cap[i] <= k + step <= w and (k + step) % round_to == 0
        ]
        if not candidates:
            break
        _, best = min(candidates)
        if abs(gap + step * row_params[best]) >= abs(gap):
            break
        kept[best] += step
    return tuple(kept)
