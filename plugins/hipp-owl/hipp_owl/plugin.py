"""OWL: layers with a larger share of Wanda outliers are pruned less (Yin et al., 2023).

Reference: luuyin/OWL, ``lib/prune_all.py`` (``prune_wanda_outlier``, ``check_outlier_mean``).

* Outlier ratio ``D_l``: the fraction of layer ``l``'s element-wise Wanda scores ``|W_ij| * ||X_j||``
  above ``M`` times their mean, the mean and the count taken over all of the layer's scored
  projections together (here the MLP's gate, up and down: what is pruned; the reference scores
  every linear of the block).
* Ratios: ``a_l = 2 lam (D_l - min D) / (max D - min D)``, then ``r_l = S - (a_l - mean(a))``, so more
  outliers mean a lower ratio and the (parameter-weighted) mean is ``S``; when a ratio would leave
  ``[0, r_max]`` they are clipped and water-filled back to ``S``.

Defaults ``lam = 0.08``, ``M = 5`` (the reference's README commands). The ``owl`` method of
``hipp-baselines`` chooses both on the calibration split. Needs calibration statistics: pass
``stats=`` as an allocation option (``make_plan`` adds ``model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from hipp_torchprune.hookspecs import hookimpl
from hipp_torchprune.pruning.allocators import AllocationRequest, calibrated_inputs
from hipp_torchprune.pruning.plan import waterfill

#: The reference's README defaults.
DEFAULT_LAM, DEFAULT_M = 0.08, 5.0


def _wanda_elements(weight: torch.Tensor, in_sq: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs() * in_sq.float().sqrt().unsqueeze(0)


def layer_outlier_ratio(projections: Sequence[tuple[torch.Tensor, torch.Tensor]], m: float) -> float:
    """``D``: the fraction of the element-wise Wanda scores of all ``(weight, in_sq)`` projections
    above ``m`` times the mean over all of them. Example: scores ``[1, 1, 1, 9]`` and ``m = 2`` -> 0.25."""
    total = sum(float(_wanda_elements(w, x).sum()) for w, x in projections)
    count = sum(w.numel() for w, _ in projections)
    threshold = m * total / count
    return sum(int((_wanda_elements(w, x) > threshold).sum()) for w, x in projections) / count


def owl_ratios(outliers: Sequence[float], sparsity: float, lam: float,
               sizes: Sequence[float] | None = None) -> list[float]:
    """``r_l = S - (a_l - mean(a))``, ``a_l = 2 lam (D_l - min D) / (max D - min D)`` (mean weighted
    by ``sizes``, equal by default). Example: ``D = [0.1, 0.2, 0.3]``, ``S = 0.5``, ``lam = 0.1`` ->
    ``[0.6, 0.5, 0.4]``."""
    lo, hi = min(outliers), max(outliers)
    if hi - lo < 1e-12:
        return [sparsity] * len(outliers)
    sizes = list(sizes) if sizes is not None else [1.0] * len(outliers)
    a = [2 * lam * (d - lo) / (hi - lo) for d in outliers]
    mean = sum(x * s for x, s in zip(a, sizes)) / sum(sizes)
    return [sparsity - (x - mean) for x in a]


class OWLAllocator:
    """Outlier-weighted layerwise sparsity (options: ``model``, ``stats``, ``m``=5, ``lam``=0.08)."""

    name: ClassVar[str] = "owl"
    #: The CLI calibrates before planning and passes ``stats`` (``hipp prune --strategy owl``).
    needs_calibration: ClassVar[bool] = True

    def allocate(self, request: AllocationRequest) -> list[float]:
        """Ratios from each layer's Wanda outlier ratio, centred on the target sparsity."""
        from hipp_torchprune.api import get_adapter

        model, stats = calibrated_inputs(request, self.name)
        names = {m: n for n, m in model.named_modules()}
        m = float(request.options.get("m", DEFAULT_M))
        lam = float(request.options.get("lam", DEFAULT_LAM))
        outliers = [layer_outlier_ratio([(p.weight, stats.in_sq[names[p]]) for p in (mlp.gate, mlp.up, mlp.down)], m)
                    for mlp in get_adapter(model, request.registry).mlps()]
        sizes = [w * p for w, p in zip(request.widths, request.row_params)]
        raw = owl_ratios(outliers, request.sparsity, lam, sizes)
        if all(0.0 <= r <= request.r_max for r in raw):
            return raw
        return list(waterfill([max(r, 1e-6) for r in raw], sizes, request.sparsity, request.r_max))


@hookimpl
def hipp_allocators() -> list[type]:
    """The ``owl`` strategy."""
    return [OWLAllocator]
