"""``hipp recover``: recover a pruned checkpoint on a data directory's train split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hipp_torchprune.loading import add_dtype_argument


def register(subparsers: Any) -> None:
    """Add the ``recover`` subcommand."""
    from hipp_torchprune.recovery.config import RecoveryConfig, add_selection_arguments, lora_layers  # light

    p = subparsers.add_parser("recover", help="recover a pruned checkpoint (mask fixed; head, projector, LoRA train)")
    p.add_argument("--model", required=True, help="pruned checkpoint dir (or 'demo' / a tiny model name)")
    p.add_argument("--data", required=True, help="proving-ground world or split dir (its train split is used)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--out", required=True, help="write the recovered checkpoint here (same widths)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=RecoveryConfig.lr,
                   help=f"recovery learning rate (default {RecoveryConfig.lr:g})")
    p.add_argument("--select-every", type=int, default=0,
                   help="score on the data's calibration split every N steps (and before the first) and "
                        "save the best state, the unrecovered model included (default 0: the last step)")
    add_selection_arguments(p)
    p.add_argument("--lora-layers", type=lora_layers, default=None, metavar="all|K",
                   help="LoRA on every decoder layer's projections (default: all) or on the last K (0: none)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--data-mix", choices=("mix", "pope", "scienceqa"), default="mix")
    p.add_argument("--preference", default=None, help="w_rob,w_util,w_comp: biases the mix toward POPE by w_rob")
    p.add_argument("--limit", type=int, default=None, help="train rows per task (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50, help="resumable checkpoint interval (steps)")
    p.add_argument("--work-dir", default=None, help="resume state + TensorBoard logs (default OUT.recovery)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final losses as one JSON object")
    add_dtype_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp recover``."""
    from hipp_torchprune.recovery import RecoveryConfig, recover_checkpoint
    from hipp_torchprune.recovery.config import selection_kwargs

    w_rob = None
    if args.preference is not None:
        from hipp_torchprune.hipp.preferences import parse_preference

        w_rob = parse_preference(args.preference)[0]
    config = RecoveryConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lora_layers=args.lora_layers,
                            lora_rank=args.lora_rank, data=args.data_mix, w_rob=w_rob, limit=args.limit,
                            seed=args.seed, save_every=args.save_every, select_every=args.select_every,
                            **selection_kwargs(args))
    result = recover_checkpoint(args.model, args.data, args.out, config, work_dir=args.work_dir,
                                progress=not args.no_progress, dtype=args.dtype)
    last = result.history[-1] if result.history else {}
    if args.json:
        print(json.dumps({"out": args.out, "steps": config.steps, "resumed_from": result.resumed_from,
                          "kept_step": result.best_step, **last}))
    else:
        print(f"recovered {config.steps} steps (resumed from {result.resumed_from}; kept step "
              f"{result.best_step}); last losses: "
              + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "step"))
        print(f"saved to {args.out}")
    return 0
