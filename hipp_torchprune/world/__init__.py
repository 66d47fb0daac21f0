"""The proving ground: a procedurally rendered world with POPE and ScienceQA-style splits.

Import :func:`build_world` from :mod:`hipp_torchprune.world.build`; this package module itself
imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from hipp_torchprune.world.scenes import SceneConfig

__all__ = ["build_world"]


def build_world(out: str | Path, seed: int, n_images: int = 6000, version: int | None = None,
                config: SceneConfig | None = None) -> dict[str, Any]:
    """Build a world into ``out`` (see :func:`hipp_torchprune.world.build.build_world`);
    ``version=None`` is the default generator version, ``config=None`` no rendering options."""
    from hipp_torchprune.world.build import DEFAULT_WORLD_VERSION
    from hipp_torchprune.world.build import build_world as _build
    from hipp_torchprune.world.scenes import SceneConfig

    return _build(out, seed, n_images, config=config or SceneConfig(),
                  version=DEFAULT_WORLD_VERSION if version is None else version)  # type: ignore[arg-type]
