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


@torch.no_grad()
def visual_sensitivity(model: nn.Module, adapter: ModelAdapter,
                       batches: Iterable[dict[str, torch.Tensor]]) -> list[float]:
    """``s_l`` for every decoder layer, averaged over the samples in ``batches``."""
    device = next(model.parameters()).device
    total: torch.Tensor | None = None
    count = 0
    with eager_attention(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            vision = adapter.vision_positions(batch["input_ids"])
            real = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            out = model(**batch, output_attentions=True, use_cache=False)
            per_layer = torch.stack([attention_mass_to_vision(a, vision, real & ~vision)
                                     for a in out.attentions])  # (L, B)
            total = per_layer.sum(1) if total is None else total + per_layer.sum(1)
            count += per_layer.shape[1]
    if total is None:
        raise CalibrationError("visual sensitivity needs at least one calibration batch")
    return (total / count).tolist()
