"""``hipp prune``: allocate a plan, score rows, physically prune, save, print the table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS
from hipp_torchprune.pruning.plan import Plan


def register(subparsers: Any) -> None:
    """Add the ``prune`` subcommand."""
    p = subparsers.add_parser("prune", help="prune a VLM's language-model MLP rows")
    p.add_argument("--model", required=True, help="checkpoint dir, 'demo', 'tiny-llava' or 'tiny-qwen2_5_vl'")
    p.add_argument("--strategy", default="uniform", help="layer allocation strategy (default: uniform)")
    p.add_argument("--importance", default="wanda", help="row importance scorer (default: wanda)")
    p.add_argument("--sparsity", type=float, default=0.225, help="target fraction of MLP parameters removed")
    p.add_argument("--round-to", type=int, default=64, help="kept widths round to this multiple (default 64)")
    p.add_argument("--r-max", type=float, default=0.8, help="cap on any layer's removal ratio (default 0.8)")
    p.add_argument("--calib", default=None, help="calibration data dir; 'random' (tiny models only)")
    p.add_argument("--calib-n", type=int, default=32, help="calibration samples (default 32)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="cap on each calibration image's pixel count (Qwen2.5-VL resizes to fit; default 1280*28*28)")
    p.add_argument("--seed", type=int, default=0, help="seed for random strategies and tiny models")
    p.add_argument("--out", default=None, help="write the pruned checkpoint (and plan.json) here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--policy", default=None, help="HiPP policy directory (with --strategy hipp)")
    p.add_argument("--preference", default=None, help="w_rob,w_util,w_comp for --strategy hipp")
    p.add_argument("--config", default=None, help="YAML file of PruneConfig fields; command-line flags win")
    p.set_defaults(func=run)


def _apply_config(args: argparse.Namespace, argv_flags: set[str]) -> None:
    """Fill options from ``--config`` unless they were given on the command line."""
    from hipp_torchprune.config import PruneConfig, load_yaml

    config = load_yaml(PruneConfig, args.config)
    for field, value in vars(config).items():
        if field != "mode" and f"--{field.replace('_', '-')}" not in argv_flags:
            setattr(args, field, value)


def format_table(plan: Plan) -> str:
    """The per-layer table: width before, after, and removal ratio."""
    lines = [f"{'layer':>5} {'before':>8} {'after':>8} {'ratio':>7}"]
    for row in plan.to_dict()["layers"]:
        lines.append(f"{row['index']:>5} {row['width_before']:>8} {row['width_after']:>8} {row['ratio']:>7.3f}")
    lines.append(f"realized MLP sparsity: {plan.realized_sparsity:.4f}")
    return "\n".join(lines)


def _calibration_spec(args: argparse.Namespace, tiny: bool, needs: bool) -> str | None:
    from hipp_torchprune.errors import CalibrationError

    if not needs:
        return None
    if args.calib is None:
        if tiny:
            return "random"
        raise CalibrationError(f"--importance {args.importance} needs calibration data: pass --calib DATA_DIR")
    if args.calib == "random" and not tiny:
        raise CalibrationError("--calib random is only allowed for the tiny random models")
    return args.calib


def _strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``--strategy hipp``: the loaded policy and the parsed preference."""
    if args.policy is None and args.preference is None:
        return {}
    from hipp_torchprune.hipp.policy_io import load_policy
    from hipp_torchprune.hipp.preferences import parse_preference

    if args.policy is None or args.preference is None:
        from hipp_torchprune.errors import HippError

        raise HippError("--policy and --preference go together (with --strategy hipp)")
    policy = load_policy(args.policy)
    if args.round_to == 64 and policy.round_to != 64 and "--round-to" not in getattr(args, "argv_flags", ()):
        args.round_to = policy.round_to  # the rounding the policy was trained with
    return {"policy": policy, "preference": parse_preference(args.preference)}


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp prune``."""
    from hipp_torchprune import api
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.checkpoint import save_pruned
    from hipp_torchprune.loading import load_model
    from hipp_torchprune.models.processors import cap_pixels
    from hipp_torchprune.models.tiny import TINY_MODELS
    from hipp_torchprune.registry import default_registry

    if args.config:
        _apply_config(args, set(getattr(args, "argv_flags", ())))
    registry = default_registry()
    scorer_cls = registry.get("importance", args.importance)
    strategy_cls = registry.get("strategy", args.strategy)
    strategy_calib = bool(getattr(strategy_cls, "needs_calibration", False))  # e.g. owl, ecoflap
    options = _strategy_options(args)
    model, processor = load_model(args.model, seed=args.seed)
    spec = _calibration_spec(args, args.model in TINY_MODELS, scorer_cls.needs_calibration or strategy_calib)
    stats = None
    if spec is not None:
        samples = calibration_samples(spec, args.calib_n, seed=args.seed)
        capped = cap_pixels(processor, args.max_pixels)  # calibration only: the checkpoint keeps its own
        stats = api.calibrate(model, capped, samples, with_grads=scorer_cls.needs_grads, registry=registry)
        if strategy_calib:
            options.update(stats=stats, processor=capped, samples=samples)
    plan = api.make_plan(model, args.strategy, args.sparsity, round_to=args.round_to, r_max=args.r_max,
                         seed=args.seed, registry=registry, **options)
    scorer = api.importance(args.importance, model, stats, registry=registry)
    api.prune_model(model, plan, scorer, registry=registry)
    report = {**plan.to_dict(), "strategy": args.strategy, "importance": args.importance,
              "target_sparsity": args.sparsity, "round_to": args.round_to}
    if args.out:
        save_pruned(model, args.out, processor, plan=report, registry=registry,
                    extra_files={"plan.json": json.dumps(report, indent=2)})
    if args.json:
        print(json.dumps({"realized_sparsity": plan.realized_sparsity, "layers": report["layers"], "out": args.out}))
    else:
        print(format_table(plan))
        if args.out:
            print(f"saved to {args.out}")
    return 0
