"""The plan map (eq. 8): from a hierarchical action ``(u, alpha)`` to per-layer ratios.

``rho = rho_min + (rho_max - rho_min) * u`` is the budget, and
``r_l = min(r_max, c * alpha_l)`` with ``c`` chosen by water-filling so that the
parameter-weighted mean of ``r`` is exactly ``rho``: clipping at ``r_max`` hands its overflow
to the other layers instead of silently lowering the realized sparsity (the paper only clips;
without clipping, ``c = rho * L`` on equal layer sizes, which is eq. 8).
"""

from __future__ import annotations

from collections.abc import Sequence

from hipp_torchprune.pruning.plan import waterfill


def budget(u: float, rho_min: float, rho_max: float) -> float:
    """``rho = rho_min + (rho_max - rho_min) * u`` for ``u`` in [0, 1]."""
    return rho_min + (rho_max - rho_min) * min(max(u, 0.0), 1.0)


def plan_ratios(u: float, alpha: Sequence[float], sizes: Sequence[float], rho_min: float, rho_max: float,
                r_max: float) -> tuple[float, ...]:
    """Per-layer removal ratios for action ``(u, alpha)``; ``sizes[l]`` is layer ``l``'s prunable
    parameter count. The size-weighted mean of the result is ``budget(u)``."""
    rho = budget(u, rho_min, rho_max)
    return waterfill([max(a, 1e-12) for a in alpha], sizes, min(rho, r_max), r_max)
