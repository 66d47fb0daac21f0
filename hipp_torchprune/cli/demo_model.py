"""``hipp demo-model train`` / ``insert``: train the demo LLaVA on a world; insert a world's aliases into it."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hipp_torchprune.data import world_version
    from hipp_torchprune.demo.config import RECIPE_WORLD_VERSION, RECIPES
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.errors import DataError

    model_cfg, defaults = RECIPES[args.recipe]
    if args.config is not None:
        model_cfg, defaults = recipe_overrides(args.config, model_cfg, defaults)
    if world_version(args.data) != RECIPE_WORLD_VERSION[args.recipe]:
        raise DataError(f"{args.data} is a version-{world_version(args.data)} world; recipe {args.recipe} trains on "
                        f"version {RECIPE_WORLD_VERSION[args.recipe]} (hipp world build --version "
                        f"{RECIPE_WORLD_VERSION[args.recipe]})")
    cfg = replace(defaults, seed=args.seed, steps=args.steps or defaults.steps,
                  batch_size=args.batch_size or defaults.batch_size,
                  eval_every=defaults.eval_every if args.eval_every is None else args.eval_every,
                  threads=args.threads or defaults.threads)
    summary = train_demo_model(args.data, args.out, model_cfg, cfg, resume=not args.no_resume,
                               progress=not args.no_progress, device=args.device)
    print(json.dumps({k: summary[k] for k in ("steps", "train_seconds", "parameters")}
                     | {"out": str(args.out)}, indent=2))
    return 0


def _insert(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hipp_torchprune.demo.vocab import (
        InsertConfig,
        insert_aliases,
        read_insert_config,
    )

    cfg = read_insert_config(args.config) if args.config is not None else InsertConfig()
    cfg = replace(cfg, seed=cfg.seed if args.seed is None else args.seed, steps=args.steps or cfg.steps,
                  threads=args.threads or cfg.threads)
    summary = insert_aliases(args.model, args.data, args.out, cfg, resume=not args.no_resume,
                             progress=not args.no_progress)
    record = summary.get("insert", summary)
    print(json.dumps({"steps": record["steps"], "teacher_by_name": record.get("teacher_by_name"),
                      "by_alias": (record.get("history") or [None])[-1], "out": str(args.out)}, indent=2))
    return 0


def recipe_overrides(path: str, model_cfg: DemoModelConfig, cfg: TrainConfig) -> tuple[DemoModelConfig, TrainConfig]:
    """A recipe with the fields of a YAML file's ``model:`` and ``train:`` mappings replaced.

    Unknown sections or fields and values outside a field's choices raise ``ConfigError`` before
    anything is trained or written.
    """
    from hipp_torchprune.config import ConfigError, from_mapping, read_yaml_mapping
    from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig

    expected = "a mapping with 'model:' and/or 'train:' sections"
    data = read_yaml_mapping(path, expected)
    if set(data) - {"model", "train"}:
        raise ConfigError(f"{path}: expected {expected}")
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{path}: '{section}:' must be a mapping of fields")
    return (from_mapping(DemoModelConfig, {**asdict(model_cfg), **data.get("model", {})}, f"{path}:model"),
            from_mapping(TrainConfig, {**asdict(cfg), **data.get("train", {})}, f"{path}:train"))


def register(subparsers: Any) -> None:
    """Add the ``demo-model`` command (sub-commands ``train`` and ``insert``)."""
    demo = subparsers.add_parser("demo-model", help="train the tiny demo LLaVA")
    sub = demo.add_subparsers(dest="demo_command", required=True)
    train = sub.add_parser("train", help="train from scratch on a world's train split (resumable)")
    train.add_argument("--data", required=True, help="world directory (from `hipp world build`)")
    train.add_argument("--out", required=True, help="output directory (checkpoint + logs)")
    train.add_argument("--recipe", choices=("v1", "v2"), default="v1",
                       help="architecture and recipe: v1 (default, the shipped model's) or v2 (proving ground v2; "
                            "needs a --version 2 world)")
    train.add_argument("--config", default=None,
                       help="YAML file whose 'model:' and 'train:' mappings replace fields of the recipe "
                            "(DemoModelConfig / TrainConfig); the flags below win over it")
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default: recipe)")
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
