"""The main job (``make demo`` / ``hipp demo``): one policy, three preferences, against a uniform plan.

Builds a fresh proving-ground world, loads the shipped demo model and the policy trained on it,
queries a POPE-heavy, a ScienceQA-heavy and a balanced preference, prunes the model for each
(checkpoints saved), and evaluates each plan against the uniform allocation at the same realized
sparsity. Both choose the rows inside a layer by the shared default row score
(:data:`~hipp_torchprune.methods.DEFAULT_ROW_SCORE`), so the rows differ only in their widths.
Prints the table and writes a robustness-utility PNG.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.checkpoint import save_pruned
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import evaluate, prepare_eval
from hipp_torchprune.hipp.policy_io import load_policy
from hipp_torchprune.loading import load_model, parse_dtype
from hipp_torchprune.methods import DEFAULT_ROW_SCORE

#: The HiPP policy trained on the demo model, shipped beside it.
DEMO_POLICY_DIR: Path = Path(__file__).resolve().parent / "assets" / "demo-policy"
#: The three queried preferences (w_rob, w_util, w_comp).
PREFERENCES: dict[str, tuple[float, float, float]] = {
    "pope-heavy": (0.7, 0.2, 0.1), "scienceqa-heavy": (0.2, 0.7, 0.1), "balanced": (1 / 3, 1 / 3, 1 / 3)}
TASKS = "pope_adversarial,pope_random,scienceqa"


def _scores(model: Any, processor: Any, prepared: Any, plan: Any = None, scorer: Any = None) -> dict[str, float]:
    masks = api.prune_model(model, plan, scorer, mode="mask").masks if plan is not None else None
    try:
        result = evaluate(model, processor, prepared)
    finally:
        if masks is not None:
            masks.remove()
    return {"pope_adv_bal_acc": result["pope_adversarial"]["balanced_accuracy"],
            "pope_rand_bal_acc": result["pope_random"]["balanced_accuracy"],
            "sqa_acc": result["scienceqa"]["accuracy"], "pope_yes_ratio": result["pope_adversarial"]["yes_ratio"]}


def demo_world(model_spec: str, world_dir: str | Path, seed: int, n_images: int) -> Path:
    """Build the held-out world ``hipp demo`` evaluates on, like the one the model was trained on
    (:func:`~hipp_torchprune.demo.training_world`: generator version and rendering options), unless
    ``world_dir`` already holds one. An existing world of another kind is a :class:`DataError`: the
    model would be measured on images unlike its own, and the world is not ours to overwrite."""
    from hipp_torchprune.data import world_render, world_version
    from hipp_torchprune.demo import resolve_model_dir, training_world
    from hipp_torchprune.world import build_world

    local = model_spec == "demo" or Path(model_spec).is_dir()  # a hub id has no training record
    version, render = training_world(resolve_model_dir(model_spec) if local else None)
    world = Path(world_dir)
    if not (world / "manifest.json").exists():
        build_world(world, seed=seed, n_images=n_images, config=render, version=version)  # type: ignore[arg-type]
    elif (world_version(world), world_render(world)) != (version, render):
        raise DataError(f"{world} is a version-{world_version(world)} world rendered with {world_render(world)}, but "
                        f"{model_spec} was trained on version {version} rendered with {render}; remove it or pass "
                        "another --world")
    return world


def run_demo(model_spec: str, policy_dir: str | Path, world_dir: str | Path, out_dir: str | Path, *,
             limit: int | None = None, calib_n: int = 64, dtype: str | None = None) -> list[dict[str, Any]]:
    """Run the job; returns the table rows (also written to ``out_dir/demo.json``). ``dtype``:
    see :func:`~hipp_torchprune.loading.parse_dtype` (default: the checkpoint's own)."""
    parse_dtype(dtype)  # a bad name fails before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(model_spec, dtype=dtype)
    policy = load_policy(policy_dir)
    stats = api.calibrate(model, processor, calibration_samples(str(world_dir), calib_n))
    scorer = api.importance(DEFAULT_ROW_SCORE, model, stats)
    prepared = prepare_eval(processor, world_dir, TASKS, limit=limit)
    rows = [{"method": "dense", "preference": None, "sparsity": 0.0, **_scores(model, processor, prepared)}]
    r_max = policy.policy.config.r_max
    for name, pref in PREFERENCES.items():
        plan = api.make_plan(model, "hipp", round_to=policy.round_to, r_max=r_max, policy=policy, preference=pref)
        rows.append({"method": f"HiPP {name}", "preference": list(pref), "sparsity": plan.realized_sparsity,
                     "widths": list(plan.widths_after), **_scores(model, processor, prepared, plan, scorer)})
        uniform = api.make_plan(model, "uniform", plan.realized_sparsity, round_to=policy.round_to, r_max=r_max)
        rows.append({"method": f"uniform @ {name}", "preference": None, "sparsity": uniform.realized_sparsity,
                     "widths": list(uniform.widths_after), **_scores(model, processor, prepared, uniform, scorer)})
        pruned = copy.deepcopy(model)
        api.prune_model(pruned, api.plan_from_ratios(pruned, plan.ratios, round_to=policy.round_to, r_max=r_max),
                        api.importance(DEFAULT_ROW_SCORE, pruned, stats))
        save_pruned(pruned, out_dir / f"pruned-{name}", processor, plan=plan.to_dict())
    (out_dir / "demo.json").write_text(json.dumps(rows, indent=1))
    plot_operating_points(rows, out_dir / "robustness_utility.png")
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The printed table."""
    lines = [f"{'method':<30} {'sparsity':>8} {'POPE-adv':>9} {'POPE-rand':>9} {'SQA':>6} {'yes%':>6}"]
    for r in rows:
        lines.append(f"{r['method']:<30} {r['sparsity']:>8.3f} {100 * r['pope_adv_bal_acc']:>9.1f} "
                     f"{100 * r['pope_rand_bal_acc']:>9.1f} {100 * r['sqa_acc']:>6.1f} {100 * r['pope_yes_ratio']:>6.1f}")
    return "\n".join(lines)


def plot_operating_points(rows: list[dict[str, Any]], path: Path) -> None:
    """POPE-adversarial balanced accuracy against ScienceQA accuracy for every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        kind = r["method"].split()[0]
        style = {"dense": ("k", "*"), "HiPP": ("tab:red", "o"), "uniform": ("tab:blue", "s")}[kind]
        ax.scatter(100 * r["sqa_acc"], 100 * r["pope_adv_bal_acc"], color=style[0], marker=style[1], s=60)
        ax.annotate(f"{r['method']} ({r['sparsity']:.2f})", (100 * r["sqa_acc"], 100 * r["pope_adv_bal_acc"]),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("ScienceQA-style accuracy (%)")
    ax.set_ylabel("POPE-adversarial balanced accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
