"""The shared row score, measured: every MLP-row method that takes it, with each candidate score,
before recovery, on a world's calibration split (the choice) and its test split (information).

Methods: the uniform allocation (the ``uniform`` strategy, rows by the candidate: the Wanda pair),
``random``, ``owl``, ``ecoflap`` at each ``--sparsity``, and ``hipp`` (the shipped demo policy at
``--preference``; the preference, not the sparsity, sets its compression, so it runs once).
Candidates: ``wanda`` (gate/up rows against the MLP input), ``wanda-sp`` (down_proj's input,
Wanda-sp's) and ``wanda-mix`` (both, each rescaled to mean 1 per layer, summed). One calibration
set serves every run, as in ``hipp compare``; each run prunes a copy of the dense model. The
realized sparsity of a (method, sparsity) must agree across the candidates within ``--tolerance``
(OWL's and ECoFLaP's calibration-split selection sees the row score, so their plans may differ);
rows that do not are marked and the script exits 1.

Selection rule (declared before the first run): for each candidate, the mean over every
(method, sparsity) cell of ``(POPE-adversarial balanced accuracy + ScienceQA accuracy) / 2`` on the
calibration split, in percent. The candidate with the highest mean wins; it replaces the current
default (``--current``: ``DEFAULT_ROW_SCORE``, which was ``wanda`` for the measured run) only when
its mean exceeds the current default's by at least ``--margin`` (0.5) points, else the current
default stays (a tie). The test split is reported for
information and plays no part in the choice.

    python -m hipp_torchprune.cli world build --out WORLD --seed 23 --images 1000
    OMP_NUM_THREADS=1 python benchmarks/row_score.py --data WORLD --sparsity 0.5,0.625 --limit 300
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_methods import headline

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import prepare_eval
from hipp_torchprune.loading import load_model
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, pair_method, prune_with_method
from hipp_torchprune.registry import default_registry

#: The candidate row scores (importance scorer names).
CANDIDATES: tuple[str, ...] = ("wanda", "wanda-sp", "wanda-mix")
#: The demo policy shipped with the package.
DEMO_POLICY = Path(__file__).resolve().parents[1] / "hipp_torchprune" / "assets" / "demo-policy"
TASKS = "pope_adversarial,scienceqa"


def prune_cell(base: Any, method: str, score: str, sparsity: float, context: MethodContext) -> tuple[Any, Any]:
    """A pruned copy of ``base`` and the report: ``uniform`` is the (uniform, ``score``) pair; any other
    method takes ``score`` as the shared row score."""
    model = copy.deepcopy(base)
    if method == "uniform":
        report = prune_with_method(model, pair_method("uniform", score), sparsity, context)
    else:
        report = prune_with_method(model, method, sparsity, replace(context, row_score=score))
    if report.details.get("importance") != score:
        raise RuntimeError(f"{method} chose rows by {report.details.get('importance')!r}, not {score!r}")
    return model, report


def select(rows: Sequence[dict[str, Any]], current: str, margin: float) -> tuple[str, dict[str, float]]:
    """The declared rule: ``(chosen score, calibration-split mean per score)``."""
    means = {}
    for score in dict.fromkeys(r["score"] for r in rows):
        values = [(r["calibration"][0] + r["calibration"][1]) / 2 for r in rows if r["score"] == score]
        means[score] = sum(values) / len(values)
    best = max(means, key=lambda s: (means[s], s == current))
    return (best if means[best] >= means[current] + margin else current), means


def render(rows: Sequence[dict[str, Any]], tolerance: float) -> str:
    """Markdown: one line per (method, sparsity), per score calibration and test POPE-adv / SQA."""
    cells = list(dict.fromkeys((r["method"], r["sparsity"]) for r in rows))
    scores = list(dict.fromkeys(r["score"] for r in rows))
    head = "| method | target | realized | " + " | ".join(f"{s} calib. | {s} test" for s in scores) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(scores))]
    for method, sparsity in cells:
        group = {r["score"]: r for r in rows if (r["method"], r["sparsity"]) == (method, sparsity)}
        realized = [r["realized"] for r in group.values()]
        spread = max(realized) - min(realized)
        mark = "" if spread <= tolerance + 1e-12 else " UNMATCHED"
        parts = [f"{group[s]['calibration'][0]:.1f} / {group[s]['calibration'][1]:.1f} | "
                 f"{group[s]['test'][0]:.1f} / {group[s]['test'][1]:.1f}" for s in scores]
        target = "policy" if sparsity is None else f"{100 * sparsity:.1f}"
        lines.append(f"| {method} | {target} | {100 * min(realized):.1f}–{100 * max(realized):.1f}{mark} | "
                     + " | ".join(parts) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="proving-ground world")
    p.add_argument("--sparsity", default="0.5,0.625", help="comma-separated MLP sparsities")
    p.add_argument("--methods", default="uniform,random,owl,ecoflap,hipp")
    p.add_argument("--scores", default=",".join(CANDIDATES))
    p.add_argument("--policy", default=str(DEMO_POLICY), help="HiPP policy (method hipp)")
    p.add_argument("--preference", default="0.6,0.3,0.1", help="HiPP preference (hipp compare's default)")
    p.add_argument("--limit", type=int, default=300, help="rows per task and split")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--round-to", type=int, default=32)
    p.add_argument("--r-max", type=float, default=0.95)
    p.add_argument("--current", default=DEFAULT_ROW_SCORE, help="the current default row score")
    p.add_argument("--margin", type=float, default=0.5, help="points a challenger must win by")
    p.add_argument("--tolerance", type=float, default=0.005, help="allowed realized-sparsity spread")
    return p.parse_args()


def cells(args: argparse.Namespace) -> list[tuple[str, float | None]]:
    """(method, sparsity) pairs; ``hipp`` once, with sparsity None."""
    sparsities = [float(s) for s in args.sparsity.split(",")]
    methods = args.methods.split(",")
    return [(m, s) for s in sparsities for m in methods if m != "hipp"] + [("hipp", None)] * ("hipp" in methods)


def dense_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, list, Any, dict[str, Any], Any]:
    """``(registry, model, processor, samples, stats, splits, policy)`` shared by every run: one
    calibration set (with gradients), both splits prepared; prints the dense model's JSON line."""
    from hipp_torchprune.hipp.policy_io import load_policy

    registry = default_registry()
    base, processor = load_model(args.model)
    samples = calibration_samples(args.data, args.calib_n)
    stats = api.calibrate(base, processor, samples, with_grads=True, registry=registry)
    splits = {s: prepare_eval(processor, args.data, TASKS, limit=args.limit, split=s) for s in ("calibration", "test")}
    print(json.dumps({"method": "dense", **{s: headline(base, processor, p) for s, p in splits.items()}}), flush=True)
    return registry, base, processor, samples, stats, splits, load_policy(args.policy)


def main() -> int:
    """Run every (cell, score), print one JSON line per run, then the table and the decision."""
    from hipp_torchprune.hipp.preferences import parse_preference

    args = parse_args()
    registry, base, processor, samples, stats, splits, policy = dense_setup(args)
    hipp_options = {"policy": policy, "preference": parse_preference(args.preference)}
    rows = []
    for method, sparsity in cells(args):
        for score in args.scores.split(","):
            start = time.time()
            hipp = method == "hipp"  # the policy's own rounding and cap
            context = MethodContext(processor, samples, stats, round_to=policy.round_to if hipp else args.round_to,
                                    r_max=policy.policy.config.r_max if hipp else args.r_max, registry=registry,
                                    options=hipp_options if hipp else {})
            model, report = prune_cell(base, method, score, 0.0 if sparsity is None else sparsity, context)
            row = {"method": method, "sparsity": sparsity, "score": score, "realized": report.realized_sparsity,
                   "widths": list(report.widths), "selected": report.details.get("selected"),
                   **{s: headline(model, processor, p) for s, p in splits.items()},
                   "seconds": round(time.time() - start)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    chosen, means = select(rows, args.current, args.margin)
    print(render(rows, args.tolerance))
    print(json.dumps({"calibration_means": means, "chosen": chosen, "current": args.current, "margin": args.margin}))
    return 1 if "UNMATCHED" in render(rows, args.tolerance) else 0


if __name__ == "__main__":
    sys.exit(main())
