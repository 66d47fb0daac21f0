"""``hipp compare``: every method at matched sparsity, calibration and recovery; Tables 1/3/4 + figure."""

from __future__ import annotations

import argparse
from typing import Any

from hipp_torchprune.loading import add_dtype_argument


def _prefs(text: str) -> tuple[tuple[float, float, float], ...]:
    from hipp_torchprune.hipp.preferences import parse_preference

    return tuple(parse_preference(p) for p in text.split(";") if p.strip())


def register(subparsers: Any) -> None:
    """Add the ``compare`` subcommand."""
    from hipp_torchprune.compare import BASELINES
    from hipp_torchprune.methods import DEFAULT_ROW_SCORE, ROW_SCORES
    from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS
    from hipp_torchprune.recovery.config import (  # light: dataclass only
        GUARD_SELECTION,
        RecoveryConfig,
        add_selection_arguments,
        lora_layers,
    )

    p = subparsers.add_parser("compare", help="matched comparison of HiPP against the baselines (Tables 1, 3, 4)")
    p.add_argument("--model", default="demo", help="model spec (default: demo)")
    p.add_argument("--data", required=True, help="proving-ground world directory")
    p.add_argument("--policy", required=True, help="HiPP policy directory (Tables 1 and 3)")
    p.add_argument("--out", required=True, help="results directory (results.json, tables.md, PNG, TensorBoard)")
    p.add_argument("--methods", default=",".join(BASELINES), help="comma-separated baseline methods")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--preference", default="0.6,0.3,0.1", help="HiPP preference of Table 1")
    p.add_argument("--table3", default=None, help="Table-3 preferences 'a,b,c;a,b,c;...'")
    p.add_argument("--table4", default=None, help="Table-4 preferences 'a,b,c;...'")
    p.add_argument("--sampler-policy", action="append", default=[], metavar="NAME=DIR",
                   help="policy trained with sampler NAME (Table 4); repeat for mixed, anchors, dirichlet")
    p.add_argument("--ablation-policy", action="append", default=[], metavar="NAME=DIR",
                   help="policy trained with one part removed (Table 5), e.g. no-gate=DIR; repeatable")
    p.add_argument("--steps", type=int, default=100, help="recovery steps (same for every method)")
    p.add_argument("--batch-size", type=int, default=8, help="recovery batch size")
    p.add_argument("--lr", type=float, default=RecoveryConfig.lr,
                   help=f"recovery learning rate (default {RecoveryConfig.lr:g})")
    p.add_argument("--select-every", type=int, default=None,
                   help="score each method's recovery on the calibration split (before the first step and "
                        "then, in --select-mode best, every N steps) and hand back the state the mode picks "
                        "(default steps // 4; 0: the last step, unguarded)")
    add_selection_arguments(p, RecoveryConfig(**GUARD_SELECTION))
    p.add_argument("--lora-layers", type=lora_layers, default=None, metavar="all|K",
                   help="recovery LoRA on every decoder layer (default: all) or on the last K (0: none)")
    p.add_argument("--calib-n", type=int, default=64, help="calibration samples (shared by all methods)")
    p.add_argument("--row-score", choices=ROW_SCORES, default=DEFAULT_ROW_SCORE,
                   help="the shared row score of HiPP, random, owl and ecoflap (the rows removed inside a layer; "
                        f"default: {DEFAULT_ROW_SCORE}, chosen on the calibration split, docs/baselines.md)")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="none",
                   help="refit each pruned down_proj on the calibration samples, for every MLP-row method "
                        "(lstsq: kept columns and a bias by least squares; default: none)")
    p.add_argument("--limit", type=int, default=None, help="test rows per task (default: all)")
    p.add_argument("--tolerance", type=float, default=0.005, help="allowed realized-sparsity gap")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing results.json")
    p.add_argument("--baselines-from", default=None, metavar="DIR",
                   help="another comparison's --out with the same settings but the policy and queries: "
                        "baseline cells pruned to the same target sparsity by the same code are copied from it, not rerun")
    p.add_argument("--dense-recovery", action="store_true",
                   help="also recover the unpruned model with the same recovery, once per seed: Table 1's "
                        "'dense + recovery' row, the ceiling of every pruned cell (adds cells; resumable)")
    p.add_argument("--no-progress", action="store_true")
    add_dtype_argument(p)
    p.set_defaults(func=run)


def _named_policies(items: list[str], flag: str) -> tuple[tuple[str, str], ...]:
    """``NAME=DIR`` arguments as ``(name, dir)`` pairs."""
    from hipp_torchprune.compare import CompareError

    out = []
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise CompareError(f"{flag} takes NAME=DIR, got {item!r}")
        out.append((name, directory))
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp compare``."""
    from hipp_torchprune.compare import TABLE3_PREFERENCES, TABLE4_PREFERENCES, CompareConfig, CompareError, run_compare
    from hipp_torchprune.hipp.preferences import parse_preference
    from hipp_torchprune.recovery import RecoveryConfig
    from hipp_torchprune.recovery.config import selection_kwargs

    samplers = _named_policies(args.sampler_policy, "--sampler-policy")
    ablations = _named_policies(args.ablation_policy, "--ablation-policy")
    names = [n for n, _ in samplers + ablations]
    if len(set(names)) != len(names) or "main" in names:
        raise CompareError(f"policy names must be distinct and not 'main', got {names}")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError as exc:
        raise CompareError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from exc
    quarter = max(1, args.steps // 4)  # checkpoint and (by default) held-out selection cadence
    config = CompareConfig(
        model=args.model, data=args.data, policy=args.policy,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), seeds=seeds,
        preference=parse_preference(args.preference),
        table3=_prefs(args.table3) if args.table3 else TABLE3_PREFERENCES,
        table4=_prefs(args.table4) if args.table4 else TABLE4_PREFERENCES, samplers=samplers, ablations=ablations,
        recovery=RecoveryConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                lora_layers=args.lora_layers, save_every=quarter,
                                select_every=quarter if args.select_every is None else args.select_every,
                                **selection_kwargs(args)),
        calib_n=args.calib_n, limit=args.limit, tolerance=args.tolerance,
        device=args.device, dtype=args.dtype, row_score=args.row_score,
        reconstruct=args.reconstruct, dense_recovery=args.dense_recovery)
    run_compare(config, args.out, progress=not args.no_progress, fresh=args.fresh,
                baselines_from=args.baselines_from)
    from pathlib import Path

    print((Path(args.out) / "tables.md").read_text())
    print(f"results in {args.out}/results.json, figure {args.out}/operating_points.png")
    return 0
