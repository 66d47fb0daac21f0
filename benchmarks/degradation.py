"""Does the proving ground tell plans apart? Sparsity sweep of uniform vs random allocation.

For each sparsity, prunes the model's MLP rows in mask mode with Wanda row scores (calibrated
on the world's calibration split) under (a) uniform allocation, (b) random allocation with
``--seeds`` seeds and, with ``--sensitivity PROFILE.json`` (from ``layer_sensitivity.py
--split calibration --out``), (c) an allocation derived from the single-layer POPE-adversarial
drops (least harmful layers pruned most), then evaluates POPE (random, adversarial) and
ScienceQA on the test split. Besides each metric, the table shows the hallucination gap
(POPE-random minus POPE-adversarial) and the false-"yes" rate on each split's absent objects.
Prints a markdown table, writes JSON and a PNG plot.

    python benchmarks/degradation.py --model demo --data WORLD_DIR --out docs/figures/degradation
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import hipp_torchprune as hipp
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import evaluate, prepare_eval

TASKS = "pope_random,pope_adversarial,scienceqa"
METRIC = {"pope_random": "balanced_accuracy", "pope_adversarial": "balanced_accuracy", "scienceqa": "accuracy"}


def headline(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{task: headline metric}`` plus ``{pope task}_fpr``: the false-"yes" rate on absent objects.

    POPE's balanced accuracy is (TPR + TNR) / 2, so FPR = 1 - TNR = 1 - (2 * balanced - recall).
    """
    out = {t: r[METRIC[t]] for t, r in result.items()}
    for t, r in result.items():
        if t.startswith("pope"):
            out[f"{t}_fpr"] = 1.0 - (2 * r["balanced_accuracy"] - r["recall"])
    return out


def run_plan(model, plan, scorer, processor, prepared) -> dict[str, float]:
    """Evaluate ``plan`` in mask mode; returns :func:`headline` of the result."""
    masks = hipp.prune_model(model, plan, scorer, mode="mask").masks
    try:
        result = evaluate(model, processor, prepared)
    finally:
        masks.remove()
    return headline(result)


def sensitivity_plan(model, profile: dict, sparsity: float, round_to: int, r_max: float):
    """The plan whose ratios come from the single-layer POPE-adversarial drops in ``profile``."""
    from hipp_torchprune.pruning.allocators import sensitivity_ratios

    ratio = sorted(profile["ratios"])[0]
    drops = profile["ratios"][ratio]["drops"]["pope_adversarial"]
    adapter = hipp.get_adapter(model)
    sizes = [w * p for w, p in zip(adapter.intermediate_widths(), hipp.api.row_params(adapter))]
    ratios = sensitivity_ratios(drops, sizes, sparsity, r_max)
    return hipp.api.plan_from_ratios(model, ratios, round_to=round_to, r_max=r_max)


def sweep(args: argparse.Namespace) -> list[dict]:
    """All rows of the sweep (one per sparsity and method)."""
    model, processor = hipp.load_model(args.model)
    stats = hipp.calibrate(model, processor, calibration_samples(args.data, args.calib_n))
    scorer = hipp.importance("wanda", model, stats)
    prepared = prepare_eval(processor, args.data, TASKS, limit=args.limit or None)
    rows = [{"sparsity": 0.0, "method": "dense", "realized": 0.0,
             **{t: [v] for t, v in headline(evaluate(model, processor, prepared)).items()}}]
    profile = json.loads(Path(args.sensitivity).read_text()) if args.sensitivity else None
    for s in args.sparsities:
        uniform = hipp.make_plan(model, "uniform", s, round_to=args.round_to, r_max=args.r_max)
        rows.append({"sparsity": s, "method": "uniform", "realized": uniform.realized_sparsity,
                     **{t: [v] for t, v in run_plan(model, uniform, scorer, processor, prepared).items()}})
        if profile is not None:
            plan = sensitivity_plan(model, profile, uniform.realized_sparsity, args.round_to, args.r_max)
            rows.append({"sparsity": s, "method": "sensitivity", "realized": plan.realized_sparsity,
                         **{t: [v] for t, v in run_plan(model, plan, scorer, processor, prepared).items()}})
        per_seed = []
        for seed in range(args.seeds):
            plan = hipp.make_plan(model, "random", s, round_to=args.round_to, seed=seed, r_max=args.r_max)
            per_seed.append((plan.realized_sparsity, run_plan(model, plan, scorer, processor, prepared)))
        rows.append({"sparsity": s, "method": "random", "realized": statistics.mean(p for p, _ in per_seed),
                     **{t: [r[t] for _, r in per_seed] for t in per_seed[0][1]}})
        print(f"sparsity {s}: " + ", ".join(f"{r['method']} {r['pope_adversarial']}" for r in rows
                                            if r["sparsity"] == s), flush=True)
    return rows


def fmt(values: list[float]) -> str:
    """``mean ± std`` in percent (just the mean for one value)."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(rows: list[dict]) -> str:
    """Markdown table of the sweep."""
    lines = ["| Sparsity | Method | Realized | POPE-random BalAcc | POPE-adv BalAcc | Gap (rand - adv) | "
             "False yes: random / adv | ScienceQA Acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = [a - b for a, b in zip(r["pope_random"], r["pope_adversarial"])]
        lines.append(f"| {r['sparsity']:.2f} | {r['method']} | {r['realized']:.3f} | {fmt(r['pope_random'])} | "
                     f"{fmt(r['pope_adversarial'])} | {fmt(gap)} | {fmt(r['pope_random_fpr'])} / "
                     f"{fmt(r['pope_adversarial_fpr'])} | {fmt(r['scienceqa'])} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Sparsity against POPE-adversarial and ScienceQA, uniform vs random (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    dense = rows[0]
    for ax, task in zip(axes, ("pope_adversarial", "scienceqa")):
        for method, color in (("uniform", "tab:blue"), ("random", "tab:orange"), ("sensitivity", "tab:green")):
            pts = [dense] + [r for r in rows if r["method"] == method]
            if len(pts) == 1:
                continue
            xs = [r["sparsity"] for r in pts]
            means = [100 * statistics.mean(r[task]) for r in pts]
            stds = [100 * statistics.stdev(r[task]) if len(r[task]) > 1 else 0 for r in pts]
            ax.errorbar(xs, means, yerr=stds, label=method, color=color, marker="o", capsize=3)
        ax.set_xlabel("MLP sparsity")
        ax.set_ylabel(f"{task} ({METRIC[task]}, %)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Parse arguments, run the sweep, write table/JSON/PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--round-to", type=int, default=8,
                        help="kept widths are multiples of this (default 8: 1/16 of the v2 demo model's 128-row MLPs)")
    parser.add_argument("--r-max", type=float, default=0.95)
    parser.add_argument("--limit", type=int, default=300, help="test rows per task (0 = the whole test split)")
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--sensitivity", default=None,
                        help="layer_sensitivity.py --out JSON (measured on the calibration split)")
    parser.add_argument("--out", default="docs/figures/degradation")
    args = parser.parse_args()
    rows = sweep(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
