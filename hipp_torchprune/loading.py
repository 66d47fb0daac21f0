"""Resolve a ``--model`` argument to ``(model, processor)``: tiny random configs, the shipped
demo model, or a checkpoint directory (dense HF or pruned), in the dtype asked for.

The default dtype is the checkpoint's own (``auto``): a bf16 checkpoint stays bf16 end to end, on
CPU too. Every CLI command that loads a model takes ``--dtype`` through :func:`add_dtype_argument`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipp_torchprune.errors import CheckpointError, DtypeError

#: Values of ``--dtype``: ``auto`` keeps the checkpoint's own dtype (tiny random models: float32).
DTYPE_CHOICES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32", "float64")


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``None``/``"auto"`` -> ``None`` (keep the checkpoint's dtype); a name in :data:`DTYPE_CHOICES`
    or a floating ``torch.dtype`` -> that dtype. Anything else raises :class:`DtypeError`."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str) and value in DTYPE_CHOICES:
        return getattr(torch, value)
    raise DtypeError(f"unknown dtype {value!r}; valid: {', '.join(DTYPE_CHOICES)}")


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dtype`` (default ``auto``: the checkpoint's own dtype) to a command that loads a model.

    The value is checked by :func:`parse_dtype` when the model is loaded, so a bad one is a
    :class:`DtypeError` (``hipp CMD: error: ...``, exit status 2).
    """
    parser.add_argument("--dtype", default="auto", metavar="{" + ",".join(DTYPE_CHOICES) + "}",
                        help="dtype to load the model in (default auto: the checkpoint's own, e.g. bf16 stays bf16)")


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert ``model``'s floating parameters and saved buffers to ``dtype``, in place.

    Unlike ``model.to(dtype)`` this leaves buffers that are computed at construction and not saved
    (rotary ``inv_freq``) in their own precision, as ``from_pretrained(dtype=...)`` does; rounding
    them changes a bf16 model's logits.
    """
    saved = model.state_dict(keep_vars=True)
    for tensor in {id(t): t for t in saved.values()}.values():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
    if getattr(model, "config", None) is not None:
        model.config.dtype = dtype
    return model


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


def load_model(spec: str | Path, seed: int = 0, dtype: str | torch.dtype | None = None,
               device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """Load ``spec`` as ``(model, processor)`` in eval mode.

    ``spec`` is ``tiny-llava`` / ``tiny-qwen2_5_vl`` (random, built offline with ``seed``),
    ``demo``, or a checkpoint directory (dense or pruned). ``dtype`` (see :func:`parse_dtype`)
    defaults to the checkpoint's own dtype, on every device; ``device`` defaults to CPU.
    """
    from hipp_torchprune.checkpoint import load_pruned
    from hipp_torchprune.models.tiny import TINY_MODELS, build_tiny

    want = parse_dtype(dtype)
    if str(spec) in TINY_MODELS:
        model, processor = build_tiny(str(spec), seed=seed)
        if want is not None:
            cast_model(model, want)
    else:
        directory = resolve_model_dir(spec)
        model, processor = load_pruned(directory, dtype=want), load_processor(directory)
    return model.to(torch.device(device) if device is not None else torch.device("cpu")).eval(), processor
