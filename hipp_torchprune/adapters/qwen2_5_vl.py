"""Adapter for transformers' ``Qwen2_5_VLForConditionalGeneration`` (Qwen2.5-VL)."""

from __future__ import annotations

from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter


class Qwen25VLAdapter(ModelAdapter):
    """Qwen2.5-VL: windowed ViT with a patch merger, Qwen2 language model with M-RoPE.

    Only modules under ``model.model.language_model`` are pruned: the vision blocks have
    ``gate_proj``/``up_proj``/``down_proj`` too.
    """

    name = "qwen2_5_vl"
    model_class_names = ("Qwen2_5_VLForConditionalGeneration",)

    def vision_module(self) -> nn.Module:
        """The vision transformer, merger included."""
        return self.model.model.visual

    def projector_module(self) -> nn.Module | None:
        """None: the patch merger lives inside ``visual``."""
        return None
