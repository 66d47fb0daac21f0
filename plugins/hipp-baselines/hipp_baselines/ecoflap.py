"""ECoFLaP-style allocation: zeroth-order (forward-only) layer importance, ratios inverse to it.

ECoFLaP (Sung et al., 2024) estimates a *global* importance with zeroth-order gradients and
uses it only to set layer-wise sparsity, pruning inside each layer with a local score (Wanda).
Here the global importance of layer ``l``'s MLP is a finite-difference, forward-only estimate
of its loss sensitivity to structured removal:

``I_l = mean_k [ L(model with a random fraction p of layer l's MLP channels masked, mask k) - L(model) ]``

with ``L`` the next-token loss on the calibration samples' text tokens and ``n_masks`` random
masks per layer (no backward pass, so it costs ``L * n_masks`` forward passes and no gradient
memory). Ratios follow :func:`ecoflap_weights`, water-filled under ``r_max`` to the target.

Options: ``model`` (given by ``make_plan``), ``processor`` and ``samples`` (calibration),
``n_masks`` = 4, ``probe_ratio`` = p = 0.5, ``eps`` = 0.5 (see :func:`ecoflap_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning.allocators import AllocationRequest
from hipp_torchprune.pruning.plan import waterfill


def ecoflap_weights(importances: Sequence[float], eps: float = 0.5) -> list[float]:
    """Allocation weights ``w_l = 1 / (max(I_l, 0) + delta)`` with ``delta = eps * mean_l max(I_l, 0)``.

    More important layers get smaller weights (lower ratios); ``delta`` tempers the inverse so a
    near-zero importance cannot take the whole budget. No positive importance -> uniform weights.
    Example: ``I = [1, 3]``, ``eps = 0.5`` -> ``delta = 1``, ``w = [1/2, 1/4]``.
    """
    clipped = [max(float(i), 0.0) for i in importances]
    mean = sum(clipped) / len(clipped) if clipped else 0.0
    if mean <= 0.0:
        return [1.0] * len(clipped)
    delta = eps * mean
    return [1.0 / (i + delta) for i in clipped]


def text_loss(model: nn.Module, batch: dict[str, torch.Tensor], image_token_id: int) -> float:
    """Mean next-token loss over real text tokens (padding and image placeholders excluded)."""
    labels = batch["input_ids"].clone()
    labels[labels == image_token_id] = -100
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return float(model(**batch, labels=labels, use_cache=False).loss)


def zeroth_order_importance(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, str]], *,
                            n_masks: int = 4, probe_ratio: float = 0.5, seed: int = 0,
                            registry: Any = None) -> list[float]:
    """``I_l`` for every layer (see the module docstring); the model is left untouched."""
    from hipp_torchprune.api import calibration_batches, get_adapter
    from hipp_torchprune.pruning.operator import PlanMasks

    if not samples:
        raise CalibrationError("strategy 'ecoflap' needs calibration samples")
    adapter = get_adapter(model, registry)
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in calibration_batches(adapter, processor, samples)]
    image_id = adapter.image_token_id()
    widths = adapter.intermediate_widths()
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    masks = PlanMasks(adapter)
    try:
        with torch.no_grad():
            def loss() -> float:
                return sum(text_loss(model, b, image_id) for b in batches) / len(batches)

            base = loss()
            full = [torch.arange(w) for w in widths]
            out = []
            for layer, width in enumerate(widths):
                kept = max(1, round(width * (1.0 - probe_ratio)))
                deltas = []
                for _ in range(n_masks):
                    keep = list(full)
                    keep[layer] = torch.randperm(width, generator=gen)[:kept].sort().values
                    masks.set_keep(keep)
                    deltas.append(loss() - base)
                out.append(sum(deltas) / len(deltas))
    finally:
        masks.remove()
        model.train(was_training)
    return out


class EcoFLaPAllocator:
    """Layer ratios inverse to zeroth-order layer importance (see the module docstring)."""

    name: ClassVar[str] = "ecoflap"
    #: The CLI calibrates before planning and passes ``processor`` / ``samples`` / ``stats``.
    needs_calibration: ClassVar[bool] = True

    def allocate(self, request: AllocationRequest) -> list[float]:
        """Water-filled ratios ``r_l = min(r_max, c * w_l)`` at the target sparsity."""
        opts = request.options
        model, processor, samples = opts.get("model"), opts.get("processor"), opts.get("samples")
        if model is None or processor is None or not samples:
            raise CalibrationError("strategy 'ecoflap' needs calibration: pass processor= and samples= options")
        importances = zeroth_order_importance(
            model, processor, samples, n_masks=int(opts.get("n_masks", 4)),
            probe_ratio=float(opts.get("probe_ratio", 0.5)), seed=request.seed)
        weights = ecoflap_weights(importances, float(opts.get("eps", 0.5)))
        sizes = [w * p for w, p in zip(request.widths, request.row_params)]
        return list(waterfill(weights, sizes, request.sparsity, request.r_max))
