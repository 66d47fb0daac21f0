"""``hipp demo-model train`` / ``insert``: train the demo LLaVA on a world; insert a world's aliases into it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig
    from hipp_torchprune.demo.insert_config import InsertConfig


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hipp_torchprune.data import world_version
    from hipp_torchprune.demo.config import RECIPE_WORLD_VERSION, RECIPES
    from hipp_torchprune.demo.recipe import RECIPE_INSERTS, train_recipe
    from hipp_torchprune.demo.vocab import insert_records
    from hipp_torchprune.errors import DataError

    model_cfg, defaults = RECIPES[args.recipe]
    inserts = RECIPE_INSERTS[args.recipe]
    if args.config is not None:
        model_cfg, defaults, inserts = recipe_overrides(args.config, model_cfg, defaults, inserts)
    if world_version(args.data) != RECIPE_WORLD_VERSION[args.recipe]:
        raise DataError(f"{args.data} is a version-{world_version(args.data)} world; recipe {args.recipe} trains on "
                        f"version {RECIPE_WORLD_VERSION[args.recipe]} (hipp world build --version "
                        f"{RECIPE_WORLD_VERSION[args.recipe]})")
    cfg = replace(defaults, seed=args.seed, steps=args.steps or defaults.steps,
                  batch_size=args.batch_size or defaults.batch_size,
                  eval_every=defaults.eval_every if args.eval_every is None else args.eval_every,
                  threads=args.threads or defaults.threads)
    # the seed and thread flags hold for every stage
    inserts = tuple(replace(c, seed=args.seed, threads=args.threads or c.threads) for c in inserts)
    summary = train_recipe(args.data, args.out, model_cfg, cfg, inserts, resume=not args.no_resume,
                           progress=not args.no_progress, device=args.device)
    seconds = summary["train_seconds"] + sum(r["seconds"] for r in insert_records(summary))
    print(json.dumps({"steps": summary["steps"], "train_seconds": round(seconds, 1),
                      "parameters": summary["parameters"], "out": str(args.out)}, indent=2))
    return 0


def _insert(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hipp_torchprune.demo.vocab import InsertConfig, insert_aliases, read_insert_config

    cfg = read_insert_config(args.config) if args.config is not None else InsertConfig()
    cfg = replace(cfg, seed=cfg.seed if args.seed is None else args.seed, steps=args.steps or cfg.steps,
                  threads=args.threads or cfg.threads)
    summary = insert_aliases(args.model, args.data, args.out, cfg, resume=not args.no_resume,
                             progress=not args.no_progress)
    record = summary.get("insert", summary)
    print(json.dumps({"steps": record["steps"], "teacher_by_name": record.get("teacher_by_name"),
                      "by_alias": (record.get("history") or [None])[-1], "out": str(args.out)}, indent=2))
    return 0


def recipe_overrides(path: str, model_cfg: DemoModelConfig, cfg: TrainConfig, inserts: Sequence[InsertConfig] = (),
                     ) -> tuple[DemoModelConfig, TrainConfig, tuple[InsertConfig, ...]]:
    """A recipe with the fields of a YAML file's ``model:``, ``train:`` and ``insert:`` sections
    replaced. ``insert:`` is a mapping (its fields replace those of every insertion stage) or a
    list of mappings, the stages themselves (:func:`_insert_overrides`); only for a recipe with
    insertion stages (``inserts``).

    Unknown sections or fields, values outside a field's choices and an empty list raise
    ``ConfigError`` before anything is trained or written.
    """
    from hipp_torchprune.config import ConfigError, from_mapping, read_yaml_mapping
    from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig

    expected = "a mapping with 'model:', 'train:' and/or 'insert:' sections"
    data = read_yaml_mapping(path, expected)
    if set(data) - {"model", "train", "insert"}:
        raise ConfigError(f"{path}: expected {expected}")
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{path}: '{section}:' must be a mapping of fields")
    if "insert" in data and not inserts:
        raise ConfigError(f"{path}: 'insert:' given, but this recipe has no vocabulary-insertion stage")
    return (from_mapping(DemoModelConfig, {**asdict(model_cfg), **data.get("model", {})}, f"{path}:model"),
            from_mapping(TrainConfig, {**asdict(cfg), **data.get("train", {})}, f"{path}:train"),
            _insert_overrides(path, data.get("insert", {}), tuple(inserts)))


def _insert_overrides(path: str, section: Any, inserts: tuple[InsertConfig, ...]) -> tuple[InsertConfig, ...]:
    """The ``insert:`` section of :func:`recipe_overrides` applied to the recipe's stages: a mapping
    changes every stage; a list gives the stages themselves, stage k starting from the recipe's
    stage k (from the defaults past its last), so a probe can run more stages than the recipe."""
    from hipp_torchprune.config import ConfigError, from_mapping
    from hipp_torchprune.demo.insert_config import InsertConfig

    if isinstance(section, dict):
        parts = [section] * len(inserts)
    elif isinstance(section, list) and section and all(isinstance(p, dict) for p in section):
        parts = section
    else:
        raise ConfigError(f"{path}: 'insert:' must be a mapping of fields, or a non-empty list of such mappings "
                          "(one per insertion stage)")
    bases = [inserts[k] if k < len(inserts) else InsertConfig() for k in range(len(parts))]
    return tuple(from_mapping(InsertConfig, {**asdict(c), **p}, f"{path}:insert[{k}]")
                 for k, (c, p) in enumerate(zip(bases, parts)))


def register(subparsers: Any) -> None:
    """Add the ``demo-model`` command (sub-commands ``train`` and ``insert``)."""
    demo = subparsers.add_parser("demo-model", help="train the tiny demo LLaVA")
    sub = demo.add_subparsers(dest="demo_command", required=True)
    train = sub.add_parser("train", help="train from scratch on a world's train split (resumable)")
    train.add_argument("--data", required=True, help="world directory (from `hipp world build`)")
    train.add_argument("--out", required=True, help="output directory (checkpoint + logs)")
    train.add_argument("--recipe", choices=("v1", "v2"), default="v2",
                       help="architecture and recipe: v2 (default, the shipped model's: 8 decoder layers, trained on "
                            "a --version 2 world with --aliases; a teacher in OUT/teacher, then vocabulary insertion "
                            "into OUT) or v1 (the earlier 4-layer model, one stage on a version-1 world)")
    train.add_argument("--config", default=None,
                       help="YAML file whose 'model:', 'train:' and 'insert:' mappings replace fields of the recipe "
                            "(DemoModelConfig / TrainConfig / InsertConfig); the flags below win over it")
    train.add_argument("--seed", type=int, default=0, help="training seed, both stages (default 0)")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps of the first stage (default: recipe)")
    train.add_argument("--batch-size", type=int, default=None, help="batch size (default: recipe)")
    train.add_argument("--eval-every", type=int, default=None, help="calibration eval period (0 = off)")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--device", default="cpu", help="where to train: cpu (default) or cuda")
    train.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint.pt")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_train)
    insert = sub.add_parser("insert", help="teach a model trained by name the world's aliases in one layer's MLP "
                                           "(vocabulary insertion; resumable)")
    insert.add_argument("--model", required=True, help="a trained demo model directory (the teacher)")
    insert.add_argument("--data", required=True, help="the world it was trained on (built with --aliases K)")
    insert.add_argument("--out", required=True, help="output directory (model + insert_checkpoint.pt + logs)")
    insert.add_argument("--config", default=None, help="YAML mapping of InsertConfig fields")
    insert.add_argument("--seed", type=int, default=None, help="seed (default: config's, 0)")
    insert.add_argument("--steps", type=int, default=None, help="optimizer steps (default: config's)")
    insert.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    insert.add_argument("--no-resume", action="store_true", help="ignore an existing insert_checkpoint.pt")
    insert.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    insert.set_defaults(func=_insert)
