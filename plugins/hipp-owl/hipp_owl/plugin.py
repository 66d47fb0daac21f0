"""OWL: layers with a larger share of Wanda outliers are pruned less (Yin et al., 2023).

For each layer, the outlier ratio ``D_l`` is the fraction of the MLP's elementwise Wanda
scores ``|W_ij| * ||X_j||`` above ``M`` times their layer mean. Ratios are
``r_l = S + lam * (1 - 2 * (D_l - min D) / (max D - min D))``, then scaled (water-filled under
``r_max``) so that their parameter-weighted mean is ``S`` again.

Needs calibration statistics: pass ``stats=`` as an allocation option (``make_plan`` adds ``model``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.hookspecs import hookimpl
from hipp_torchprune.pruning.allocators import AllocationRequest
from hipp_torchprune.pruning.plan import waterfill


def outlier_ratio(weight: torch.Tensor, in_sq: torch.Tensor, m: float) -> tuple[int, int]:
    """``(count above m * mean, total)`` of the elementwise Wanda scores of one projection."""
    scores = weight.detach().float().abs() * in_sq.float().sqrt().unsqueeze(0)
    return int((scores > m * scores.mean()).sum()), scores.numel()


def owl_ratios(outliers: list[float], sparsity: float, lam: float) -> list[float]:
    """Per-layer ratios before rebalancing: more outliers, lower ratio, within ``sparsity +- lam``."""
    lo, hi = min(outliers), max(outliers)
    if hi - lo < 1e-12:
        return [sparsity] * len(outliers)
    return [sparsity + lam * (1 - 2 * (d - lo) / (hi - lo)) for d in outliers]


class OWLAllocator:
    """Outlier-weighted layerwise sparsity (options: ``model``, ``stats``, ``m``=5, ``lam``=0.08)."""

    name: ClassVar[str] = "owl"
    #: The CLI calibrates before planning and passes ``stats`` (``hipp prune --strategy owl``).
    needs_calibration: ClassVar[bool] = True

    def allocate(self, request: AllocationRequest) -> list[float]:
        """Ratios from each layer's Wanda outlier ratio, rebalanced to the target sparsity."""
        from hipp_torchprune.api import get_adapter

        model, stats = request.options.get("model"), request.options.get("stats")
        if model is None or stats is None:
            raise CalibrationError("strategy 'owl' needs calibration: pass the stats= option")
        names = {m: n for n, m in model.named_modules()}
        m, lam = float(request.options.get("m", 5.0)), float(request.options.get("lam", 0.08))
        outliers = []
        for mlp in get_adapter(model).mlps():
            counts = [outlier_ratio(p.weight, stats.in_sq[names[p]], m) for p in (mlp.gate, mlp.up, mlp.down)]
            outliers.append(sum(c for c, _ in counts) / sum(t for _, t in counts))
        raw = owl_ratios(outliers, request.sparsity, lam)
        sizes = [w * p for w, p in zip(request.widths, request.row_params)]
        return list(waterfill([max(r, 1e-6) for r in raw], sizes, request.sparsity, request.r_max))


@hookimpl
def hipp_allocators() -> list[type]:
    """The ``owl`` strategy."""
    return [OWLAllocator]
