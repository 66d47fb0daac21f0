"""``hipp world build``: render a proving-ground world."""

from __future__ import annotations

import argparse
import json
from typing import Any

#: The rendering options of ``world build`` (each a :class:`SceneConfig` field, default 0): flag, type, help.
_WORLD_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("jitter", float, ("per-instance appearance variation in [0, 1]: tint, size and position of each "
                      "icon (default 0: one icon per category and size)")),
    ("faint", float, ("probability in [0, 1] that an object is drawn faint, 70 %% blended into the "
                     "background (default 0)")),
    ("noise", float, "std of Gaussian pixel noise in 0-255 units, at most 64 (default 0)"),
    ("variants", int, ("extra looks per category, 0-3: each instance is drawn in its category's own "
                      "shape and colour or one of these (default 0)")),
    ("lore", int, ("version 2 only: ask the knowledge questions about this many made-up things "
                  "with random properties, the same in every world (default 0: about the categories)")),
    ("aliases", int, ("version 2 only: give each category this many made-up aliases (at most 200) and "
                     "name every POPE question's object by one of them (default 0: by its name)")),
    ("companion", float, ("version 2 only: probability in [0, 1] that a new object is the companion of one "
                         "already in the scene, the co-occurrence a language prior learns (default 0: 0.5)")),
    ("occluder", float, ("version 2 only: probability in [0, 1] that a scene has an occluder, which may hide "
                        "a companion that training counts as present (default 0: 0.4)")),
    ("family", float, ("version 2 only: blend each icon's colour this far, in [0, 1], toward the hue of "
                      "the scene types that favour its category, so co-occurring objects look alike (default 0)")),
)


def _world_kind(args: argparse.Namespace) -> tuple[int, Any]:
    """The generator version and :class:`SceneConfig` to build: the flags', or with ``--like`` the
    world the model was trained on (``ConfigError`` when both are given)."""
    from hipp_torchprune.world.scenes import SceneConfig

    given = [f"--{flag}" for flag, _, _ in _WORLD_OPTIONS if getattr(args, flag) is not None]
    if args.like is None:
        return args.version or 1, SceneConfig(**{f: getattr(args, f) or kind(0) for f, kind, _ in _WORLD_OPTIONS})
    from hipp_torchprune.config import ConfigError
    from hipp_torchprune.demo import resolve_model_dir, training_world

    if given or args.version is not None:
        raise ConfigError(f"--like {args.like} sets the version and rendering options; drop "
                          f"{', '.join(given + (['--version'] if args.version is not None else []))}")
    return training_world(resolve_model_dir(args.like))


def _build(args: argparse.Namespace) -> int:
    from hipp_torchprune.world.build import build_world

    version, config = _world_kind(args)
    manifest = build_world(args.out, seed=args.seed, n_images=args.images, version=version, config=config)
    summary: dict[str, Any] = {
        "out": str(args.out), "seed": manifest["seed"], "version": manifest["version"], "content_hash": manifest["content_hash"],
        "splits": {s: {"images": v["images"], "pope": sum(v["pope"].values()), "scienceqa": v["scienceqa"]}
                   for s, v in manifest["splits"].items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``world`` command (sub-command ``build``)."""
    world = subparsers.add_parser("world", help="build the synthetic POPE/ScienceQA proving ground")
    sub = world.add_subparsers(dest="world_command", required=True)
    build = sub.add_parser("build", help="render scenes and write train/calibration/test splits")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--seed", type=int, required=True, help="world seed (same seed => same bytes)")
    build.add_argument("--images", type=int, default=6000, help="number of images (default 6000)")
    build.add_argument("--version", type=int, choices=(1, 2), default=None,
                       help="world generator: 1 (default) or 2 (proving ground v2: companions, occluders "
                            "hiding objects, world-knowledge questions)")
    build.add_argument("--like", default=None, metavar="MODEL",
                       help="build a world like the one MODEL ('demo' or a demo-format model directory) was "
                            "trained on: its version and rendering options, from its train_summary.json "
                            "(not with --version or the rendering flags)")
    for flag, kind, text in _WORLD_OPTIONS:
        build.add_argument(f"--{flag}", type=kind, default=None, help=text)
    build.set_defaults(func=_build)
