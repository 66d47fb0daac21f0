"""Is there a robustness/utility trade-off for a preference to steer? Random allocations at one sparsity.

Scores ``--plans`` random allocations (Dirichlet(1) layer ratios pinned to each ``--sparsity`` as
``benchmarks/ablations.py`` pins: one factor, water-filled under ``r_max``, rounded to
``--round-to``) on the whole test split of ``--data`` (``ablations.test_environment``: POPE-adversarial
balanced accuracy and ScienceQA accuracy, rows by the shared row score), once per ``--reconstruct``
setting, the same plans in each. Per (sparsity, setting) it prints the mean ± std of both accuracies
over the plans, their Pearson correlation, and what choosing by one metric costs on the other: the
ScienceQA accuracy of the best-POPE plan below the best ScienceQA, and the POPE of the best-ScienceQA
plan below the best POPE. A high correlation and costs near zero mean one allocation is best for
both, so a robustness/utility preference has nothing to steer there. A diagnostic (the best plans are
picked on the rows they are scored on), never a selection rule; writes ``tradeoff.json``.

    OMP_NUM_THREADS=1 python benchmarks/tradeoff.py --data out/compare-v2/world --out out/tradeoff \\
        --sparsity 0.28,0.47 --plans 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablations import pinned_widths, test_environment, write_records

from hipp_torchprune.compare import pearson
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS


def _settings(text: str) -> list[str]:
    """``none,lstsq`` -> the refit settings, each one of :data:`RECONSTRUCTIONS`."""
    settings = text.split(",")
    if not settings or any(s not in RECONSTRUCTIONS for s in settings):
        raise argparse.ArgumentTypeError(f"{text!r}: give settings among {', '.join(RECONSTRUCTIONS)}")
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="world whose test split scores the plans")
    p.add_argument("--out", required=True, help="writes tradeoff.json and the calibration cache here")
    p.add_argument("--sparsity", type=lambda s: [float(x) for x in s.split(",")], default=[0.28, 0.47])
    p.add_argument("--plans", type=int, default=40, help="random allocations per sparsity")
    p.add_argument("--reconstruct", type=_settings, default=["none", "lstsq"], help="refit settings, comma-separated")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--r-max", type=float, default=0.95)
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def summary(pope: list[float], sqa: list[float]) -> dict[str, float]:
    """Mean and std of both accuracies, their correlation, and the cost of choosing by either one.

    Example: ``pope = [90, 92]``, ``sqa = [88, 85]``: the best-POPE plan costs 3 ScienceQA points,
    the best-ScienceQA plan 2 POPE points, and the correlation is -1."""
    best_pope, best_sqa = max(range(len(pope)), key=pope.__getitem__), max(range(len(sqa)), key=sqa.__getitem__)
    return {"pope_mean": statistics.fmean(pope), "pope_std": statistics.stdev(pope),
            "sqa_mean": statistics.fmean(sqa), "sqa_std": statistics.stdev(sqa), "r": pearson(pope, sqa),
            "sqa_cost_of_best_pope": sqa[best_sqa] - sqa[best_pope],
            "pope_cost_of_best_sqa": pope[best_pope] - pope[best_sqa]}


def random_ratios(plans: int, layers: int, seed: int) -> torch.Tensor:
    """``(plans, layers)`` Dirichlet(1) draws (normalized exponentials), the same for one seed."""
    draws = -torch.rand(plans, layers, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).log()
    return draws / draws.sum(1, keepdim=True)


def score_plans(args: argparse.Namespace, reconstruct: str) -> list[dict[str, Any]]:
    """``--plans`` random allocations at every sparsity, scored with ``reconstruct`` (the same
    plans for every setting: they depend on ``--seed`` alone)."""
    env = test_environment(args.model, args.data, args.calib_n, Path(args.out) / "test-calibration",
                           round_to=args.round_to, r_max=args.r_max, budget=(0.0, max(args.sparsity)),
                           reconstruct=reconstruct)
    try:
        ratios = random_ratios(args.plans, len(env.widths), args.seed)
        widths = [pinned_widths(env, tuple(r.tolist()), s) for s in args.sparsity for r in ratios]
        outcome = env.score_widths(widths)
    finally:
        env.close()
    return [{"reconstruct": reconstruct, "sparsity": float(outcome.realized[i]), "target": s, "widths": list(w),
             "pope_adv": float(outcome.raw[i, 0]), "sqa": float(outcome.raw[i, 1])}
            for i, (s, w) in enumerate(zip([s for s in args.sparsity for _ in ratios], widths))]


def render(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: one row per (sparsity, setting)."""
    header = ("| target sparsity % | refit | plans | POPE-adv BalAcc | ScienceQA acc | r(POPE, SQA) | "
              "SQA cost of best-POPE | POPE cost of best-SQA |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for s in args.sparsity:
        for setting in args.reconstruct:
            cell = [r for r in records if r["target"] == s and r["reconstruct"] == setting]
            m = summary([r["pope_adv"] for r in cell], [r["sqa"] for r in cell])
            lines.append(f"| {100 * s:.1f} | {setting} | {len(cell)} | {m['pope_mean']:.1f} ± {m['pope_std']:.1f} | "
                         f"{m['sqa_mean']:.1f} ± {m['sqa_std']:.1f} | {m['r']:+.2f} | "
                         f"{m['sqa_cost_of_best_pope']:.1f} | {m['pope_cost_of_best_sqa']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Score the random plans under every setting, print the table, write ``tradeoff.json``."""
    args = parse_args(argv)
    records = [r for setting in args.reconstruct for r in score_plans(args, setting)]
    print(render(records, args))
    write_records(Path(args.out, "tradeoff.json"), args, records, args.data)


if __name__ == "__main__":
    main()
