"""Adapter for transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5)."""

from __future__ import annotations

from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5: CLIP tower, MLP projector, Llama language model."""

    name = "llava"
    model_class_names = ("LlavaForConditionalGeneration",)

    def vision_module(self) -> nn.Module:
        """The CLIP vision tower."""
        return self.model.model.vision_tower

    def projector_module(self) -> nn.Module | None:
        """The two-layer MLP projector."""
        return self.model.model.multi_modal_projector
