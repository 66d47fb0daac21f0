"""The demo VLM: a tiny LLaVA trained from scratch on the proving-ground world.

Only path helpers live here (cheap to import); training is in :mod:`hipp_torchprune.demo.train`.
"""

from __future__ import annotations

from pathlib import Path

from hipp_torchprune.errors import CheckpointError

#: The shipped demo checkpoint (LLaVA format: config, safetensors weights, processor files).
DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "demo-model"

__all__ = ["DEMO_MODEL_DIR", "resolve_model_dir"]


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
