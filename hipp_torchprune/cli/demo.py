"""``hipp demo``: the main job (see :mod:`hipp_torchprune.demo_job`)."""

from __future__ import annotations

import argparse
from typing import Any

from hipp_torchprune.loading import add_dtype_argument


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser("demo", help="the main job: query a trained policy at three preferences")
    p.add_argument("--model", default="demo", help="model (default: the shipped demo model)")
    p.add_argument("--policy", default=None, help="policy dir (default: the shipped demo policy)")
    p.add_argument("--world", default="out/demo/world", help="where to build the proving-ground world (like the model's training world: its version and rendering options)")
    p.add_argument("--seed", type=int, default=7, help="world seed (differs from the training world's)")
    p.add_argument("--images", type=int, default=1000, help="images in the world")
    p.add_argument("--limit", type=int, default=None, help="examples per task")
    p.add_argument("--out", default="out/demo", help="table, plot and pruned checkpoints go here")
    p.add_argument("--baselines", default=None,
                   help="comma-separated registered methods pruned to each HiPP plan's sparsity, or 'none' "
                        "(default: flap,owl,slicegpt,llm-pruner)")
    add_dtype_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp demo``."""
    from hipp_torchprune.demo_job import DEMO_BASELINES, DEMO_POLICY_DIR, demo_world, format_rows, run_demo
    from hipp_torchprune.loading import parse_dtype

    parse_dtype(args.dtype)  # a bad name fails before a world is built
    baselines = DEMO_BASELINES if args.baselines is None else \
        tuple(m for m in args.baselines.split(",") if m and args.baselines != "none")
    world = demo_world(args.model, args.world, args.seed, args.images)
    rows = run_demo(args.model, args.policy or DEMO_POLICY_DIR, world, args.out, limit=args.limit, dtype=args.dtype,
                    baselines=baselines)
    print(format_rows(rows))
    print(f"wrote {args.out}/demo.json and {args.out}/robustness_utility.png")
    return 0
