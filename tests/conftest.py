"""Shared fixtures: tiny models for every supported family and a fresh plugin registry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HIPP_DISABLE_PLUGIN_AUTOLOAD", "1")

from hipp_torchprune.models.tiny import TINY_MODELS, build_tiny  # noqa: E402
from hipp_torchprune.registry import Registry, make_plugin_manager  # noqa: E402

PROMPTS = ["Is there a red object in the image?", "How many objects are in the image?", "What colour"]


@pytest.fixture(scope="session")
def make_world(tmp_path_factory: pytest.TempPathFactory):
    """``make_world(seed, n_images, version=None) -> Path``: a proving-ground world (the default
    generator version unless given), built once per session.

    Tests must not write into it; copy what they want to break.
    """
    from hipp_torchprune.world import build_world

    built: dict[tuple[int, int, int | None], Path] = {}

    def make(seed: int, n_images: int, version: int | None = None) -> Path:
        if (seed, n_images, version) not in built:
            out = tmp_path_factory.mktemp(f"world-s{seed}-n{n_images}-v{version}") / "world"
            build_world(out, seed=seed, n_images=n_images, version=version)
            built[(seed, n_images, version)] = out
        return built[(seed, n_images, version)]

    return make


@pytest.fixture
def registry() -> Registry:
    """A fresh registry with entry-point autoload off."""
    return Registry(make_plugin_manager(autoload=False))


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny(request: pytest.FixtureRequest):
    """``(name, model, processor)`` for each tiny model family."""
    model, processor = build_tiny(request.param, seed=0)
    return request.param, model, processor


def images(n: int, seed: int = 0, size: int = 40) -> list[Image.Image]:
    """``n`` deterministic random RGB images."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def samples(n: int, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``n`` (image, prompt) calibration samples."""
    return list(zip(images(n, seed), [PROMPTS[i % len(PROMPTS)] for i in range(n)]))


def baselines_registry() -> Registry:
    """A fresh registry (autoload off) with the ``hipp-owl`` and ``hipp-baselines`` plugins registered.

    Callers ``pytest.importorskip`` both plugins first.
    """
    import hipp_baselines.plugin
    import hipp_owl.plugin

    reg = Registry(make_plugin_manager(autoload=False))
    reg.pm.register(hipp_owl.plugin)
    reg.pm.register(hipp_baselines.plugin)
    return reg
