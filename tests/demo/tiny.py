"""The tiny demo-model architecture the demo tests train in seconds (one definition for all)."""

from __future__ import annotations

from hipp_torchprune.demo.config import DemoModelConfig


def tiny_demo_config(text_layers: int = 2) -> DemoModelConfig:
    """A demo LLaVA of width 32 (one CLIP layer) with ``text_layers`` decoder layers."""
    return DemoModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
                           text_hidden=32, text_layers=text_layers, text_heads=2, text_intermediate=64)


#: Two decoder layers: the most common tiny shape.
TINY = tiny_demo_config()
