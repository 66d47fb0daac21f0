"""The demo VLM: a tiny LLaVA trained from scratch on the proving-ground world.

Only path helpers live here (cheap to import); training is in :mod:`hipp_torchprune.demo.train`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hipp_torchprune.errors import CheckpointError

#: The shipped demo checkpoint (LLaVA format: config, safetensors weights, processor files).
DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "demo-model"

__all__ = ["DEMO_MODEL_DIR", "resolve_model_dir", "training_world"]


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Map "demo" to :data:`DEMO_MODEL_DIR`; any other value must be an existing directory."""
    if str(name_or_path) == "demo":
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the demo checkpoint is missing from {DEMO_MODEL_DIR}")
        return DEMO_MODEL_DIR
    path = Path(name_or_path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {str(path)!r} does not exist (or use 'demo')")
    return path


def training_world(model_dir: str | Path | None) -> tuple[int, Any]:
    """The generator version and :class:`~hipp_torchprune.world.scenes.SceneConfig` of the world a
    demo-format model was trained on, from its ``train_summary.json`` (``world``), so a held-out
    world like it can be built. Models without that record (trained before it existed, or not by
    :func:`~hipp_torchprune.demo.train.train_demo_model`), and ``None``, get version 1 with no
    rendering options, the world every such model was trained on."""
    from hipp_torchprune.world.scenes import SceneConfig

    path = Path(model_dir or ".") / "train_summary.json"
    try:
        record = json.loads(path.read_text()).get("world") if model_dir is not None and path.is_file() else None
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a training summary ({exc})") from exc
    if not record:
        return 1, SceneConfig()
    return int(record["version"]), SceneConfig.from_manifest(record)
