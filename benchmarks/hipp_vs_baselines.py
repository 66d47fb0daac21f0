"""HiPP before recovery against uniform Wanda and random allocation, at matched realized sparsity.

For each seed: train a policy on the world's calibration split in chunks (resuming between
chunks); after each chunk, query the POPE-heavy / ScienceQA-heavy / balanced preferences and
evaluate on the test split in mask mode, next to uniform Wanda and random allocation (Wanda rows)
at each plan's realized sparsity. Reports mean ± std over seeds, the wall time at which HiPP
first beats the best baseline on POPE-adversarial, and the preference-metric correlations.

    python benchmarks/hipp_vs_baselines.py --model demo --world out/bench/world --out out/bench/hipp
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import evaluate, prepare_eval
from hipp_torchprune.hipp.policy import PolicyConfig
from hipp_torchprune.hipp.policy_io import load_policy
from hipp_torchprune.hipp.run import train_from_data
from hipp_torchprune.hipp.trainer import TrainConfig
from hipp_torchprune.loading import load_model

PREFS = {"pope-heavy": (0.7, 0.2, 0.1), "scienceqa-heavy": (0.2, 0.7, 0.1), "balanced": (1 / 3, 1 / 3, 1 / 3)}
TASKS = "pope_adversarial,scienceqa"


def metrics(model: Any, processor: Any, prepared: Any, plan: Any, scorer: Any) -> dict[str, float]:
    """POPE-adversarial balanced accuracy and ScienceQA accuracy of ``plan`` in mask mode."""
    masks = api.prune_model(model, plan, scorer, mode="mask").masks
    try:
        r = evaluate(model, processor, prepared)
    finally:
        masks.remove()
    return {"pope": r["pope_adversarial"]["balanced_accuracy"], "sqa": r["scienceqa"]["accuracy"]}


def compare_once(model: Any, processor: Any, prepared: Any, scorer: Any, policy_dir: Path, round_to: int,
                 seed: int, r_max: float) -> dict[str, dict[str, Any]]:
    """HiPP at the three preferences, uniform and random at each plan's realized sparsity."""
    policy = load_policy(policy_dir)
    out: dict[str, dict[str, Any]] = {}
    for name, pref in PREFS.items():
        plan = api.make_plan(model, "hipp", round_to=round_to, r_max=r_max, policy=policy, preference=pref)
        s = plan.realized_sparsity
        uniform = api.make_plan(model, "uniform", s, round_to=round_to, r_max=r_max)
        rand = api.make_plan(model, "random", s, round_to=round_to, r_max=r_max, seed=1000 + seed)
        out[name] = {"sparsity": {"hipp": s, "uniform": uniform.realized_sparsity, "random": rand.realized_sparsity},
                     "hipp": metrics(model, processor, prepared, plan, scorer),
                     "uniform": metrics(model, processor, prepared, uniform, scorer),
                     "random": metrics(model, processor, prepared, rand, scorer)}
    return out


def correlations(model: Any, processor: Any, prepared: Any, scorer: Any, policy_dir: Path,
                 round_to: int, r_max: float) -> dict[str, float]:
    """Pearson r of w_rob with POPE and of w_util with ScienceQA over a sweep of preferences."""
    policy = load_policy(policy_dir)
    rows = []
    for w_rob in (0.0, 0.2, 0.4, 0.6, 0.8):
        pref = (w_rob, 0.8 - w_rob, 0.2)
        plan = api.make_plan(model, "hipp", round_to=round_to, r_max=r_max, policy=policy, preference=pref)
        rows.append((pref, metrics(model, processor, prepared, plan, scorer)))

    def pearson(x: list[float], y: list[float]) -> float:
        tx, ty = torch.tensor(x), torch.tensor(y)
        if tx.std() == 0 or ty.std() == 0:
            return float("nan")
        return float(torch.corrcoef(torch.stack([tx, ty]))[0, 1])

    return {"w_rob_vs_pope": pearson([p[0] for p, _ in rows], [m["pope"] for _, m in rows]),
            "w_util_vs_sqa": pearson([p[1] for p, _ in rows], [m["sqa"] for _, m in rows])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and compare for every seed; returns the JSON report."""
    out = Path(args.out)
    model, processor = load_model(args.model)
    stats = api.calibrate(model, processor, calibration_samples(args.world, args.calib_n))
    scorer = api.importance("wanda", model, stats)
    prepared = prepare_eval(processor, args.world, TASKS, limit=args.limit)
    report: dict[str, Any] = {"args": vars(args), "seeds": {}}
    for seed in range(args.seeds):
        policy_dir = out / f"policy-seed{seed}"
        trace, start = [], time.perf_counter()
        for chunk_end in range(args.chunk, args.steps + 1, args.chunk):
            config = TrainConfig(steps=chunk_end, group=args.group, prefs_per_step=args.prefs, seed=seed,
                                 checkpoint_every=args.chunk,
                                 policy=PolicyConfig(rho_min=args.budget[0], rho_max=args.budget[1],
                                                     r_max=args.r_max))
            train_from_data(args.model, args.world, policy_dir, config, round_to=args.round_to,
                            calib_n=args.calib_n, reward_limit=args.reward_limit, progress=False)
            train_s = time.perf_counter() - start
            cmp = compare_once(model, processor, prepared, scorer, policy_dir, args.round_to, seed, args.r_max)
            start = time.perf_counter() - train_s  # evaluation time is not training time
            beats = all(c["hipp"]["pope"] > max(c["uniform"]["pope"], c["random"]["pope"]) for c in cmp.values())
            trace.append({"step": chunk_end, "train_s": train_s, "beats_best_baseline_on_pope": beats, "compare": cmp})
            print(json.dumps({"seed": seed, "step": chunk_end, "train_s": round(train_s, 1), "beats": beats}), flush=True)
        report["seeds"][seed] = {"trace": trace, "final": trace[-1]["compare"],
                                 "correlations": correlations(model, processor, prepared, scorer, policy_dir,
                                                              args.round_to, args.r_max)}
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def summary(report: dict[str, Any]) -> str:
    """Markdown tables: mean ± std over seeds per preference and method, and the correlations."""
    seeds = list(report["seeds"].values())

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"

    lines = ["| Preference | Method | Realized sparsity | POPE-adv BalAcc | ScienceQA Acc |", "|---|---|---|---|---|"]
    for name in PREFS:
        for method in ("hipp", "uniform", "random"):
            sp = [s["final"][name]["sparsity"][method] for s in seeds]
            lines.append(f"| {name} | {method} | {statistics.mean(sp):.3f} | "
                         f"{ms([s['final'][name][method]['pope'] for s in seeds])} | "
                         f"{ms([s['final'][name][method]['sqa'] for s in seeds])} |")
    first_beat = [next((t["train_s"] for t in s["trace"] if t["beats_best_baseline_on_pope"]), None) for s in seeds]
    lines.append("")
    lines.append(f"Training time until HiPP first beats the best baseline on POPE-adversarial at all three "
                 f"preferences, per seed: {[None if t is None else round(t) for t in first_beat]} s")
    corr = [s["correlations"] for s in seeds]
    lines.append(f"Pearson r(w_rob, POPE) per seed: {[round(c['w_rob_vs_pope'], 3) for c in corr]}; "
                 f"r(w_util, ScienceQA): {[round(c['w_util_vs_sqa'], 3) for c in corr]}")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--world", required=True)
    parser.add_argument("--out", default="out/bench/hipp")
    parser.add_argument("--budget", type=lambda t: tuple(float(x) for x in t.split(",")), default=(0.6, 0.8))
    parser.add_argument("--r-max", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--group", type=int, default=6)
    parser.add_argument("--prefs", type=int, default=2)
    parser.add_argument("--round-to", type=int, default=32)
    parser.add_argument("--reward-limit", type=int, default=96)
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--limit", type=int, default=600)
    args = parser.parse_args()
    from hipp_torchprune.demo_job import demo_world

    demo_world(args.model, args.world, seed=23, n_images=2000)  # built like the model's world when missing
    report = run(args)
    text = summary(report)
    (Path(args.out) / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
