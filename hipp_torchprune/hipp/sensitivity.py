"""Visual sensitivity (eqs. 5-6): how much each decoder layer's language tokens attend to vision.

``A_l(t) = mean_h sum_{v in V} attn_{l,h}[t, v]`` for each language token ``t``;
``s_l = max_{t in T} A_l(t)``, averaged over the calibration batch. Attention probabilities
are captured by switching the model to eager attention for this pass only; SDPA/flash users get
their implementation back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning.compute import float32_linears


def attention_mass_to_vision(attn: torch.Tensor, vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Per-sample ``max_{t in T} mean_h sum_{v in V} attn[t, v]``.

    ``attn`` is ``(B, H, T, T)`` softmax attention, ``vision`` and ``text`` are ``(B, T)`` boolean
    masks of vision and language positions. Returns ``(B,)``; a sample without language tokens
    gives 0.
    """
    mass = (attn.float() * vision[:, None, None, :].float()).sum(-1).mean(1)  # (B, T)
    mass = mass.masked_fill(~text, float("-inf")).max(-1).values  # (B,)
    return torch.where(torch.isfinite(mass), mass, torch.zeros_like(mass))


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Temporarily switch ``model`` to eager attention (so attention probabilities exist)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextmanager
def _reduce_attention_per_layer(layers: list[nn.Module], masks: dict[str, torch.Tensor],
                                sums: list[torch.Tensor | None]) -> Iterator[None]:
    """Forward hooks that reduce each layer's attention probabilities to ``(B,)`` on the fly.

    Each hook adds ``attention_mass_to_vision`` of its layer's attention (the second output of
    the attention module under eager attention) to ``sums[l]``; the attention itself is dropped
    with the layer's output, so at most one layer's ``(B, H, T, T)`` maps are ever alive.
    """

    def hook_for(index: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            attn = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if attn is None:
                raise CalibrationError(f"decoder layer {index} returned no attention probabilities")
            mass = attention_mass_to_vision(attn, masks["vision"], masks["text"])
            sums[index] = mass if sums[index] is None else sums[index] + mass
        return hook

    handles = [layer.self_attn.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def attention_to_vision(model: nn.Module, adapter: ModelAdapter, batch: dict[str, torch.Tensor]) -> Iterator[list[float]]:
    """Within the block, the model's forward passes over ``batch`` (on the model's device) also
    measure every decoder layer's attention mass to vision: on exit, the yielded list holds each
    layer's sum over the batch's samples (``(L,)``), so another pass (e.g. the calibration
    statistics') measures visual sensitivity on the way. Eager attention in the block."""
    device = next(model.parameters()).device
    layers = list(adapter.decoder_layers())
    input_ids = batch["input_ids"].to(device)
    vision = adapter.vision_positions(input_ids)
    real = batch.get("attention_mask", torch.ones_like(input_ids)).to(device).bool()
    # language = real tokens that are neither vision placeholders nor their markers (<|vision_end|>)
    masks = {"vision": vision, "text": real & ~adapter.non_text_positions(input_ids)}
    sums: list[torch.Tensor | None] = [None] * len(layers)
    out: list[float] = []
    with eager_attention(model), _reduce_attention_per_layer(layers, masks, sums):
        yield out
    if any(s is None for s in sums):
        raise CalibrationError("visual sensitivity: some decoder layers never ran")
    out.extend(float(s.sum()) for s in sums)  # float32 sums, as the per-layer masses


@torch.no_grad()
def visual_sensitivity(model: nn.Module, adapter: ModelAdapter,
                       batches: Iterable[dict[str, torch.Tensor]]) -> list[float]:
    """``s_l`` for every decoder layer, averaged over the samples in ``batches``.

    Each layer's attention is reduced as soon as it is computed (never all layers' maps at
    once: 2 photos at 1280x960 cost +7.3 GB on Qwen2.5-VL-3B when they were kept).
    """
    device = next(model.parameters()).device
    total = torch.zeros(len(adapter.decoder_layers()), dtype=torch.float32)
    count = 0
    with float32_linears(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with attention_to_vision(model, adapter, batch) as sums:
                model(**batch, use_cache=False)
            total += torch.tensor(sums, dtype=torch.float32)
            count += batch["input_ids"].shape[0]
    if count == 0:
        raise CalibrationError("visual sensitivity needs at least one calibration batch")
    return (total / count).tolist()
