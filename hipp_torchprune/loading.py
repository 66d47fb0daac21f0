"""Resolve a ``--model`` argument to ``(model, processor)``: tiny random configs, the shipped
demo model, or a checkpoint directory (dense HF or pruned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipp_torchprune.checkpoint import load_pruned
from hipp_torchprune.errors import CheckpointError


def load_processor(directory: str | Path) -> Any:
    """The processor saved in ``directory``.

    Qwen2.5-VL's own processor needs torchvision (for its video half); where that is missing,
    the image-only :class:`~hipp_torchprune.models.qwen_processor.QwenImageProcessor` is used.
    """
    from transformers import AutoConfig, AutoProcessor

    try:
        return AutoProcessor.from_pretrained(directory)
    except (ImportError, AttributeError, TypeError, ValueError):
        if AutoConfig.from_pretrained(directory).model_type != "qwen2_5_vl":
            raise
        from hipp_torchprune.models.qwen_processor import QwenImageProcessor

        return QwenImageProcessor.from_pretrained(directory)


def resolve_model_dir(spec: str | Path) -> Path:
    """``"demo"`` -> the shipped demo checkpoint; anything else -> that path, which must exist."""
    if str(spec) == "demo":
        from hipp_torchprune.demo import resolve_model_dir as demo_dir

        return Path(demo_dir("demo"))
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"model path {str(path)!r} does not exist (give a checkpoint directory, 'demo', "
                              "'tiny-llava' or 'tiny-qwen2_5_vl')")
    return path


def load_model(spec: str | Path, seed: int = 0, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """Load ``spec`` as ``(model, processor)`` in eval mode.

    ``spec`` is ``tiny-llava`` / ``tiny-qwen2_5_vl`` (random, built offline with ``seed``),
    ``demo``, or a checkpoint directory (dense or pruned). ``dtype`` defaults to float32 on CPU
    (a checkpoint shipped in bf16 is upcast) and to the checkpoint's own dtype elsewhere.
    """
    from hipp_torchprune.models.tiny import TINY_MODELS, build_tiny

    if str(spec) in TINY_MODELS:
        model, processor = build_tiny(str(spec), seed=seed)
    else:
        directory = resolve_model_dir(spec)
        model, processor = load_pruned(directory), load_processor(directory)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None and device.type == "cpu":
        dtype = torch.float32
    return model.to(device=device, dtype=dtype).eval(), processor
