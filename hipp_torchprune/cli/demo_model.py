"""``hipp demo-model train``: train the demo LLaVA on a world."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _train(args: argparse.Namespace) -> int:
    from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig
    from hipp_torchprune.demo.train import train_demo_model

    defaults = TrainConfig()
    cfg = TrainConfig(seed=args.seed, steps=args.steps or defaults.steps,
                      batch_size=args.batch_size or defaults.batch_size,
                      eval_every=defaults.eval_every if args.eval_every is None else args.eval_every,
                      threads=args.threads or defaults.threads)
    summary = train_demo_model(args.data, args.out, DemoModelConfig(), cfg, resume=not args.no_resume,
                               progress=not args.no_progress, device=args.device)
    print(json.dumps({k: summary[k] for k in ("steps", "train_seconds", "parameters")}
                     | {"out": str(args.out)}, indent=2))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``demo-model`` command (sub-command ``train``)."""
    demo = subparsers.add_parser("demo-model", help="train the tiny demo LLaVA")
    sub = demo.add_subparsers(dest="demo_command", required=True)
    train = sub.add_parser("train", help="train from scratch on a world's train split (resumable)")
    train.add_argument("--data", required=True, help="world directory (from `hipp world build`)")
    train.add_argument("--out", required=True, help="output directory (checkpoint + logs)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default: recipe)")
    train.add_argument("--batch-size", type=int, default=None, help="batch size (default: recipe)")
    train.add_argument("--eval-every", type=int, default=None, help="calibration eval period (0 = off)")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--device", default="cpu", help="where to train: cpu (default) or cuda")
    train.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint.pt")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_train)
