"""ECoFLaP (Sung et al., 2024): zeroth-order layer scores set the layer ratios by the reference's
floor-plus-proportional rule; a local score (Wanda) prunes inside each layer.

Reference: ylsung/ECoFLaP, ``LAVIS/lavis/compression/pruners/layer_single_base_pruner.py``.

* **Score** (``compute_importance_scores_mezo``, ``score_method="MEZO-GradOnly_sum"`` as in
  ``LAVIS/scripts/blip2/ecoflap_zeroth.py``): for every parameter tensor ``P`` of a layer and every
  calibration batch, one Gaussian direction ``z`` and the two-sided zeroth-order estimate
  ``g = (L(P + eps z) - L(P - eps z)) / (2 eps)``; the tensor's score is ``sum_batches |g|`` and
  the layer's score is the sum over its tensors (``_sum``: not divided by the parameter count).
  ``eps = 1e-3`` (``noise_eps``), one direction per batch (``num_noise = 1``). Here the tensors are
  the layer's MLP projections (gate, up, down: what is pruned) and ``L`` is the calibration loss
  of :mod:`hipp_torchprune.pruning.answers` (the gold answers' loss; the reference's loss is its
  model's task loss on the caption/answer text). Forward passes only, ``2 * 3 * L * batches``.
* **Rule** (``compute_the_sparsity_per_group``; :func:`ecoflap_keep_ratios`): every layer keeps at
  least ``1 - cap`` of its parameters, ``cap = target + 0.1`` (``max_sparsity_per_layer`` is
  ``1 - keep_ratio + 0.1`` in the reference's scripts); the rest of the keep budget goes to the
  layers in proportion to their scores, a layer that fills up handing its share on.

Options: ``eps`` (default 1e-3), ``n_noise`` (1); ``model``, ``processor``, ``samples`` come from
``make_plan`` and the method. The ``ecoflap`` method chooses ``eps`` on the calibration split
(:mod:`hipp_baselines.selection`) from the reference's sweep ``(1e-1, 1e-2, 1e-3, 1e-4)``
(``LAVIS/scripts/blip2/ecoflap_zeroth_eps.py``) and caps every plan at ``target + 0.1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hipp_torchprune.errors import CalibrationError, PlanError
from hipp_torchprune.pruning.allocators import AllocationRequest

#: The reference's per-layer cap above the target (``max_sparsity_per_layer = target + 0.1``).
CAP_MARGIN = 0.1
#: The reference's zeroth-order step and its sweep.
DEFAULT_EPS, EPS_GRID = 1e-3, (1e-1, 1e-2, 1e-3, 1e-4)


def ecoflap_keep_ratios(scores: Sequence[float], sizes: Sequence[float], target: float, cap: float) -> list[float]:
    """Removal ratios by the reference's rule: keep ``(1 - target) * sum(sizes)`` in all, each layer
    at least ``(1 - cap) * size``, the rest in proportion to ``scores`` (saturated layers drop out).

    Example: sizes ``[1, 1]``, scores ``[1, 3]``, target 0.5, cap 0.6: floors keep 0.4 each, the
    remaining 0.2 splits 1:3, keeps ``[0.45, 0.55]``, ratios ``[0.55, 0.45]``. No positive score
    left: the rest goes in proportion to the layers' room (the reference would loop forever).
    """
    if not 0.0 <= target <= cap <= 1.0:
        raise PlanError(f"need 0 <= target ({target}) <= cap ({cap}) <= 1")
    keep = [s * (1.0 - cap) for s in sizes]
    budget = (1.0 - target) * sum(sizes)
    weights = [max(float(x), 0.0) for x in scores]
    for _ in range(len(sizes) + 1):
        rest = budget - sum(keep)
        open_ = [i for i, (k, s) in enumerate(zip(keep, sizes)) if k < s - 1e-12]
        if rest <= 1e-12 * max(budget, 1.0) or not open_:
            break
        share = {i: weights[i] for i in open_} if any(weights[i] > 0 for i in open_) else \
            {i: sizes[i] - keep[i] for i in open_}
        norm = sum(share.values())
        for i, w in share.items():
            keep[i] = min(sizes[i], keep[i] + rest * w / norm)
    return [min(cap, max(0.0, 1.0 - k / s)) if s > 0 else 0.0 for k, s in zip(keep, sizes)]


def _perturbed(weight: torch.Tensor, z: torch.Tensor, step: float) -> torch.Tensor:
    """``weight + step * z`` computed in float32, in ``weight``'s dtype (a new tensor)."""
    return (weight.float() + step * z).to(weight.dtype)


def zeroth_order_scores(model: nn.Module, processor: Any, samples: Sequence[Sequence[Any]], *,
                        eps: float = DEFAULT_EPS, n_noise: int = 1, seed: int = 0,
                        registry: Any = None) -> list[float]:
    """Every layer's ``sum_P sum_batches |g|`` (module docstring); the model is left bit-identical."""
    from hipp_torchprune.api import get_adapter
    from hipp_torchprune.pruning.answers import loss_batches, mean_calibration_loss

    if not samples:
        raise CalibrationError("strategy 'ecoflap' needs calibration samples")
    adapter = get_adapter(model, registry)
    batches = loss_batches(adapter, processor, samples)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # z drawn where it is used
    scores = []
    try:
        for mlp in adapter.mlps():
            total = 0.0
            for param in (mlp.gate.weight, mlp.up.weight, mlp.down.weight):
                original = param.data
                for batch in batches:
                    for _ in range(n_noise):
                        z = torch.randn(param.shape, generator=gen, device=gen.device).to(param.device)
                        try:
                            param.data = _perturbed(original, z, eps)
                            plus = mean_calibration_loss(model, adapter, [batch])
                            param.data = _perturbed(original, z, -eps)
                            minus = mean_calibration_loss(model, adapter, [batch])
                        finally:
                            param.data = original
                        total += abs(plus - minus) / (2 * eps)
            scores.append(total)
    finally:
        model.train(was_training)
    return scores


class EcoFLaPAllocator:
    """The reference's floor-plus-proportional ratios from zeroth-order layer scores."""

    name: ClassVar[str] = "ecoflap"
    #: The CLI calibrates before planning and passes ``processor`` / ``samples`` / ``stats``.
    needs_calibration: ClassVar[bool] = True

    def allocate(self, request: AllocationRequest) -> list[float]:
        """:func:`ecoflap_keep_ratios` at ``cap = min(r_max, target + 0.1)``."""
        opts = request.options
        model, processor, samples = opts.get("model"), opts.get("processor"), opts.get("samples")
        if model is None or processor is None or not samples:
            raise CalibrationError("strategy 'ecoflap' needs calibration: pass processor= and samples= options")
        scores = zeroth_order_scores(model, processor, samples, eps=float(opts.get("eps", DEFAULT_EPS)),
                                     n_noise=int(opts.get("n_noise", 1)), seed=request.seed,
                                     registry=request.registry)
        sizes = [w * p for w, p in zip(request.widths, request.row_params)]
        return ecoflap_keep_ratios(scores, sizes, request.sparsity, min(request.r_max, request.sparsity + CAP_MARGIN))
