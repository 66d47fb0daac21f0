"""``hipp prune``: prune with a registered method (``--method``) or an (allocation strategy,
importance) pair, save the checkpoint, print the table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from hipp_torchprune.loading import add_dtype_argument
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, ROW_SCORES
from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS
from hipp_torchprune.pruning.plan import Plan
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS

#: The method report's details that ``plan.json`` records beside the layers.
RECORDED_DETAILS: tuple[str, ...] = ("strategy", "importance", "reconstruct")
#: ``--strategy`` / ``--importance`` defaults (``--method`` replaces both).
DEFAULT_STRATEGY, DEFAULT_IMPORTANCE = "uniform", "wanda"


def register(subparsers: Any) -> None:
    """Add the ``prune`` subcommand."""
    p = subparsers.add_parser("prune", help="prune a VLM's language model with a method or a strategy/importance pair")
    p.add_argument("--model", required=True, help="checkpoint dir, 'demo', 'tiny-llava' or 'tiny-qwen2_5_vl'")
    p.add_argument("--method", default=None,
                   help="a registered pruning method (random, wanda, llm-pruner, owl, ecoflap, flap, slicegpt, hipp); "
                        "replaces --strategy/--importance")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, help="layer allocation strategy (default: uniform)")
    p.add_argument("--importance", default=DEFAULT_IMPORTANCE, help="row importance scorer (default: wanda)")
    p.add_argument("--row-score", choices=ROW_SCORES, default=DEFAULT_ROW_SCORE,
                   help="the shared row score of --method random, owl, ecoflap and hipp (the rows removed inside a "
                        f"layer; default: {DEFAULT_ROW_SCORE}, chosen on the calibration split, docs/baselines.md)")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="none",
                   help="refit each pruned down_proj on the calibration samples (lstsq: kept columns and a bias "
                        "by least squares; MLP-row methods only; default: none)")
    p.add_argument("--sparsity", type=float, default=0.225,
                   help="target fraction of MLP parameters removed (slicegpt: the same parameter count; hipp: "
                        "set by --preference instead)")
    p.add_argument("--round-to", type=int, default=64, help="kept widths round to this multiple (default 64)")
    p.add_argument("--r-max", type=float, default=0.8, help="cap on any layer's removal ratio (default 0.8)")
    p.add_argument("--calib", default=None, help="calibration data dir; 'random' (tiny models only)")
    p.add_argument("--calib-n", type=int, default=32, help="calibration samples (default 32)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="cap on each calibration image's pixel count (Qwen2.5-VL resizes to fit; default 1280*28*28)")
    p.add_argument("--seed", type=int, default=0, help="seed for random strategies and tiny models")
    p.add_argument("--out", default=None, help="write the pruned checkpoint (and plan.json) here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--policy", default=None, help="HiPP policy directory (with --method hipp or --strategy hipp)")
    p.add_argument("--preference", default=None, help="w_rob,w_util,w_comp (with --method hipp or --strategy hipp)")
    p.add_argument("--config", default=None, help="YAML file of PruneConfig fields; command-line flags win")
    add_dtype_argument(p)
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


def format_report(report: Any) -> str:
    """The table of an MLP-row method; a one-line summary of a method of another kind."""
    if report.plan is not None:
        return format_table(report.plan)
    facts = ", ".join(f"{k}={v}" for k, v in report.details.items() if isinstance(v, int | float | str))
    return f"{report.method} ({report.kind}): {facts}\nparameter-matched MLP sparsity: {report.realized_sparsity:.4f}"


def _calibration_spec(args: argparse.Namespace, tiny: bool, needs: bool, what: str) -> str | None:
    from hipp_torchprune.errors import CalibrationError

    if not needs:
        return None
    if args.calib is None:
        if tiny:
            return "random"
        raise CalibrationError(f"{what} needs calibration data: pass --calib DATA_DIR")
    if args.calib == "random" and not tiny:
        raise CalibrationError("--calib random is only allowed for the tiny random models")
    return args.calib


def _strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for HiPP (``--method hipp`` / ``--strategy hipp``): the loaded policy and the parsed preference."""
    if args.policy is None and args.preference is None:
        return {}
    from hipp_torchprune.hipp.policy_io import load_policy, trained_refit
    from hipp_torchprune.hipp.preferences import parse_preference

    if args.policy is None or args.preference is None:
        from hipp_torchprune.errors import HippError

        raise HippError("--policy and --preference go together (with --method hipp or --strategy hipp)")
    policy, given = load_policy(args.policy), getattr(args, "argv_flags", ())
    if args.round_to == 64 and policy.round_to != 64 and "--round-to" not in given:
        args.round_to = policy.round_to  # the rounding the policy was trained with
    trained = trained_refit(policy)
    if trained != "none" and args.reconstruct == "none" and "--reconstruct" not in given:
        args.reconstruct = trained  # the refit the policy's rewards were scored with
        print(f"the policy was trained with the {trained} refit in its reward: pruning with --reconstruct {trained} "
              "(--reconstruct none turns it off)", file=sys.stderr)
    return {"policy": policy, "preference": parse_preference(args.preference)}


def _resolve_method(args: argparse.Namespace, registry: Any) -> tuple[Any, str]:
    """The method instance and how to name it in messages: ``--method`` or the strategy/importance pair."""
    from hipp_torchprune.methods import MethodError, pair_method

    if args.method is None:
        method = pair_method(args.strategy, args.importance)
        method.needs(registry)  # unknown strategy / importance names fail here, before loading anything
        return method, f"--strategy {args.strategy} --importance {args.importance}"
    flags = {"--strategy", "--importance"} & set(getattr(args, "argv_flags", ()))
    if flags or (args.strategy, args.importance) != (DEFAULT_STRATEGY, DEFAULT_IMPORTANCE):
        raise MethodError(f"--method {args.method} names a whole method; it does not go with --strategy or "
                          "--importance (give one or the other)")
    return registry.get("method", args.method)(), f"--method {args.method}"


def _check_row_score(args: argparse.Namespace, method: Any, what: str, registry: Any) -> None:
    """Refuse ``--row-score`` for a method that chooses its rows by its own score (or a pair, whose
    ``--importance`` is the row score)."""
    from hipp_torchprune.methods import MethodError

    given = "--row-score" in getattr(args, "argv_flags", ()) or args.row_score != DEFAULT_ROW_SCORE
    if given and not getattr(method, "shared_row_score", False):
        takers = sorted(n for n in registry.names("method")
                        if getattr(registry.get("method", n), "shared_row_score", False))
        hint = "; give --importance instead" if args.method is None else ""
        raise MethodError(f"--row-score applies to the methods that take the shared row score "
                          f"({', '.join(takers)}), not {what}{hint}")


def _check_reconstruct(args: argparse.Namespace, method: Any, what: str) -> None:
    """Refuse ``--reconstruct`` for a method that does not remove MLP rows (SliceGPT refits by its rotation)."""
    from hipp_torchprune.methods import MethodError

    kind = getattr(method, "kind", "mlp-rows")
    if args.reconstruct != "none" and kind != "mlp-rows":
        raise MethodError(f"--reconstruct refits pruned MLP rows: {what} is a {kind} method")


def _layers(widths_before: Sequence[int], report: Any) -> dict[str, Any]:
    """``plan.to_dict()`` of an MLP-row method; unchanged widths (ratio 0) for other kinds."""
    if report.plan is not None:
        return report.plan.to_dict()
    rows = [{"index": i, "width_before": b, "width_after": a, "ratio": 1.0 - a / b}
            for i, (b, a) in enumerate(zip(widths_before, report.widths))]
    return {"realized_sparsity": report.realized_sparsity, "layers": rows}


def _method_options(args: argparse.Namespace, method: Any, what: str) -> dict[str, Any]:
    """:func:`_strategy_options`: required by HiPP, refused for any other method (before loading the model)."""
    from hipp_torchprune.methods import MethodError

    options, hipp = _strategy_options(args), getattr(method, "strategy", None) == "hipp"
    if options and not hipp:
        raise MethodError(f"--policy and --preference go with --method hipp or --strategy hipp, not {what}")
    if hipp and not options:
        raise MethodError(f"{what} needs a trained policy and a preference (--policy DIR --preference "
                          "w_rob,w_util,w_comp)")
    return options


def _context(args: argparse.Namespace, method: Any, what: str, model: Any, processor: Any, registry: Any,
             options: dict[str, Any]) -> Any:
    """The method's context: the calibration it needs (and only that), the rounding and the options."""
    from hipp_torchprune import api
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.methods import MethodContext, method_needs
    from hipp_torchprune.models.tiny import TINY_MODELS

    needs = method_needs(method, registry)
    refit = args.reconstruct != "none"
    spec = _calibration_spec(args, args.model in TINY_MODELS, needs.samples or needs.stats or refit, what)
    samples = calibration_samples(spec, args.calib_n, seed=args.seed) if spec is not None else []
    stats = (api.calibrate(model, processor, samples, with_grads=needs.grads, registry=registry)
             if spec is not None and needs.stats else None)
    return MethodContext(processor, samples, stats, round_to=args.round_to, r_max=args.r_max, seed=args.seed,
                         registry=registry, options=options, row_score=args.row_score, reconstruct=args.reconstruct)


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp prune``."""
    from hipp_torchprune import api
    from hipp_torchprune.checkpoint import save_pruned
    from hipp_torchprune.loading import load_model
    from hipp_torchprune.methods import check_method, prune_with_method
    from hipp_torchprune.models.processors import cap_pixels
    from hipp_torchprune.registry import default_registry

    if args.config:
        _apply_config(args, set(getattr(args, "argv_flags", ())))
    registry = default_registry()
    method, what = _resolve_method(args, registry)
    _check_row_score(args, method, what, registry)
    _check_reconstruct(args, method, what)
    options = _method_options(args, method, what)
    model, processor = load_model(args.model, seed=args.seed, dtype=args.dtype)
    check_method(method, model)  # e.g. slicegpt refuses Qwen2.5-VL before any calibration
    widths_before = api.get_adapter(model, registry).intermediate_widths()
    capped = cap_pixels(processor, args.max_pixels)  # calibration only: the checkpoint keeps its own
    context = _context(args, method, what, model, capped, registry, options)
    report = prune_with_method(model, method, args.sparsity, context)
    record = {**_layers(widths_before, report), **{k: report.details[k] for k in RECORDED_DETAILS
                                                   if k in report.details},
              "target_sparsity": args.sparsity, "round_to": args.round_to}
    if args.method is not None:
        record.update(method=report.method, kind=report.kind, details=report.details)
    if args.out:
        save_pruned(model, args.out, processor, plan=record, registry=registry,
                    extra_files={"plan.json": json.dumps(record, indent=2)})
    if args.json:
        keys = ("realized_sparsity", "layers") + (("method", "kind", "details") if args.method else ())
        print(json.dumps({**{k: record[k] for k in keys}, "out": args.out}))
    else:
        print(format_report(report))
        if args.out:
            print(f"saved to {args.out}")
    return 0
