"""Fixtures for the lmms-eval plugin tests: a small world, task YAMLs and checkpoints.

The CLI comparison prefers the shipped demo model (``hipp_torchprune/assets/demo-model``) and
falls back to a dense tiny LLaVA saved with ``save_pruned``; the wrapper test uses a pruned
tiny LLaVA. Everything is built offline, once per session (per xdist worker).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def world(make_world) -> Path:
    """A 40-image proving-ground world (seed 1)."""
    return make_world(1, 40)


@pytest.fixture(scope="session")
def tasks_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Task YAMLs written by ``hipp lmms-tasks`` for :func:`world`."""
    from hipp_torchprune.cli import main

    out = tmp_path_factory.mktemp("lmms") / "tasks"
    assert main(["lmms-tasks", "--data", str(world), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint when shipped, else a dense tiny LLaVA checkpoint."""
    from hipp_torchprune.demo import DEMO_MODEL_DIR

    if (DEMO_MODEL_DIR / "config.json").is_file():
        return DEMO_MODEL_DIR
    from hipp_torchprune.checkpoint import save_pruned
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava", seed=3)
    return save_pruned(model, tmp_path_factory.mktemp("lmms") / "dense", processor)


@pytest.fixture(scope="session")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA pruned 30% with ``hipp prune`` (per-layer widths)."""
    from hipp_torchprune.cli import main

    out = tmp_path_factory.mktemp("lmms") / "pruned"
    assert main(["prune", "--model", "tiny-llava", "--round-to", "16", "--sparsity", "0.3", "--out", str(out)]) == 0
    return out
