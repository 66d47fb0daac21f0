"""The main job (``make demo`` / ``hipp demo``): one policy, three preferences, against the baselines.

Builds a fresh proving-ground world, loads the shipped demo model and the policy trained on it,
queries a POPE-heavy, a ScienceQA-heavy and a balanced preference, prunes the model for each
(checkpoints saved), and evaluates each plan, before recovery, against the uniform allocation
and the baselines (:data:`DEMO_BASELINES`) at the same realized sparsity, with the same
calibration samples. HiPP and uniform choose the rows inside a layer by the shared default row
score (:data:`~hipp_torchprune.methods.DEFAULT_ROW_SCORE`), so they differ only in their widths.
At each preference the best baseline is the one the query's own trade-off ranks first
(:func:`preference_score`). Prints the table and writes a robustness-utility PNG with each
preference's Pareto front marked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hipp_torchprune import api
from hipp_torchprune.atomic import write_text_atomic
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.checkpoint import save_pruned
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import evaluate, prepare_eval
from hipp_torchprune.hipp.policy_io import load_policy
from hipp_torchprune.loading import load_model, parse_dtype
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, MethodError, prune_with_method
from hipp_torchprune.registry import Registry, default_registry

#: The HiPP policy trained on the demo model, shipped beside it.
DEMO_POLICY_DIR: Path = Path(__file__).resolve().parent / "assets" / "demo-policy"
#: The three queried preferences (w_rob, w_util, w_comp).
PREFERENCES: dict[str, tuple[float, float, float]] = {
    "pope-heavy": (0.7, 0.2, 0.1), "scienceqa-heavy": (0.2, 0.7, 0.1), "balanced": (1 / 3, 1 / 3, 1 / 3)}
TASKS = "pope_adversarial,pope_random,scienceqa"
#: The baselines ``hipp demo`` prunes to each HiPP plan's realized sparsity (``--baselines``):
#: those of ``hipp compare`` that take seconds on the demo model. ECoFLaP's zeroth-order search
#: (about 40 s a plan here) and the random and Wanda-uniform references stay in ``hipp compare``.
DEMO_BASELINES: tuple[str, ...] = ("flap", "owl", "slicegpt", "llm-pruner")


def preference_score(row: dict[str, Any], preference: Sequence[float]) -> float:
    """A row's value under a query's own trade-off: ``w_rob`` x POPE-adversarial balanced accuracy
    plus ``w_util`` x ScienceQA accuracy, over ``w_rob + w_util`` (sparsity is matched, so
    ``w_comp`` does not rank rows)."""
    w_rob, w_util = preference[0], preference[1]
    return (w_rob * row["pope_adv_bal_acc"] + w_util * row["sqa_acc"]) / (w_rob + w_util)


def best_row(rows: Sequence[dict[str, Any]], preference: Sequence[float]) -> dict[str, Any]:
    """The row :func:`preference_score` ranks first (the earlier one on a tie)."""
    return max(rows, key=lambda r: preference_score(r, preference))


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
             limit: int | None = None, calib_n: int = 64, dtype: str | None = None,
             baselines: Sequence[str] = DEMO_BASELINES, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Run the job; returns the table rows (also written to ``out_dir/demo.json``). ``dtype``:
    see :func:`~hipp_torchprune.loading.parse_dtype` (default: the checkpoint's own);
    ``baselines``: registered method names (``registry``: default, the installed plugins)."""
    parse_dtype(dtype)  # a bad name fails before anything is written
    registry = registry or default_registry()
    _check_baselines(baselines, registry)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(model_spec, dtype=dtype)
    policy = load_policy(policy_dir)
    samples = calibration_samples(str(world_dir), calib_n)
    stats = api.calibrate(model, processor, samples, with_grads=True, registry=registry)  # as hipp compare's
    context = MethodContext(processor, samples, stats, round_to=policy.round_to, r_max=policy.policy.config.r_max,
                            registry=registry)
    prepared = prepare_eval(processor, world_dir, TASKS, limit=limit)
    scorer = api.importance(DEFAULT_ROW_SCORE, model, stats)
    rows = [{"method": "dense", "preference": None, "sparsity": 0.0, **_scores(model, processor, prepared)}]
    for name, pref in PREFERENCES.items():
        plan = api.make_plan(model, "hipp", round_to=context.round_to, r_max=context.r_max, policy=policy,
                             preference=pref)
        rows += _preference_rows(model, processor, prepared, context, scorer, plan, name, pref, baselines)
        _save_plan(model, processor, context, plan, out_dir / f"pruned-{name}")
    write_text_atomic(out_dir / "demo.json", json.dumps(rows, indent=1))
    plot_operating_points(rows, out_dir / "robustness_utility.png")
    return rows


def _check_baselines(baselines: Sequence[str], registry: Registry) -> None:
    """Refuse unknown or repeated baseline names, and HiPP itself, before anything is computed."""
    known = registry.names("method")
    unknown = [m for m in baselines if m not in known or m == "hipp"]
    if unknown or len(set(baselines)) != len(baselines):
        raise MethodError(f"baselines {', '.join(baselines)}: each once, from the registered {', '.join(known)} "
                          "other than hipp (install plugins/hipp-baselines and plugins/hipp-owl for the defaults)")


def _preference_rows(model: Any, processor: Any, prepared: Any, context: MethodContext, scorer: Any, plan: Any,
                     name: str, pref: tuple[float, float, float], baselines: Sequence[str]) -> list[dict[str, Any]]:
    """HiPP's row at one preference (its ``plan``, rows by ``scorer``), then uniform's and each
    baseline's at the plan's realized sparsity; the baseline :func:`best_row` ranks first is
    flagged ``best_baseline``."""
    rows = [{"method": f"HiPP {name}", "preference": list(pref), "sparsity": plan.realized_sparsity,
             "widths": list(plan.widths_after),
             **_scores(model, processor, prepared, plan, scorer)}]
    uniform = api.make_plan(model, "uniform", plan.realized_sparsity, round_to=context.round_to, r_max=context.r_max)
    rows.append({"method": f"uniform @ {name}", "preference": list(pref), "sparsity": uniform.realized_sparsity,
                 "widths": list(uniform.widths_after), **_scores(model, processor, prepared, uniform, scorer)})
    for method in baselines:
        pruned = copy.deepcopy(model)
        report = prune_with_method(pruned, method, plan.realized_sparsity, context)
        rows.append({"method": f"{method} @ {name}", "preference": list(pref), "sparsity": report.realized_sparsity,
                     "widths": list(report.widths), **_scores(pruned, processor, prepared)})
    best = best_row(rows[1:], pref)
    for r in rows:
        r["best_baseline"] = r is best
    return rows


def _save_plan(model: Any, processor: Any, context: MethodContext, plan: Any, path: Path) -> None:
    """Save a physically pruned copy of ``model`` under ``plan`` (the dense model stays whole)."""
    pruned = copy.deepcopy(model)
    api.prune_model(pruned, plan, api.importance(DEFAULT_ROW_SCORE, pruned, context.stats))
    save_pruned(pruned, path, processor, plan=plan.to_dict())


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The printed table (``*``: the preference's best baseline), then HiPP minus that baseline."""
    lines = [f"{'method':<30} {'sparsity':>8} {'POPE-adv':>9} {'POPE-rand':>9} {'SQA':>6} {'yes%':>6}"]
    for r in rows:
        name = r["method"] + (" *" if r.get("best_baseline") else "")
        lines.append(f"{name:<30} {r['sparsity']:>8.3f} {100 * r['pope_adv_bal_acc']:>9.1f} "
                     f"{100 * r['pope_rand_bal_acc']:>9.1f} {100 * r['sqa_acc']:>6.1f} {100 * r['pope_yes_ratio']:>6.1f}")
    for hipp_row, best in _hipp_and_best(rows):
        lines.append(f"{hipp_row['method']} ({hipp_row['sparsity']:.3f}) minus the best baseline "
                     f"({best['method'].split(' @ ')[0]}, {best['sparsity']:.3f}): POPE-adv "
                     f"{100 * (hipp_row['pope_adv_bal_acc'] - best['pope_adv_bal_acc']):+.1f}, ScienceQA "
                     f"{100 * (hipp_row['sqa_acc'] - best['sqa_acc']):+.1f}")
    return "\n".join(lines)


def _hipp_and_best(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(HiPP row, its best baseline's row) for each preference that has baselines."""
    best = {tuple(r["preference"]): r for r in rows if r.get("best_baseline")}
    return [(r, best[tuple(r["preference"])]) for r in rows
            if r["method"].startswith("HiPP") and tuple(r["preference"]) in best]


#: Marker and colour of each kind of row in the plot (baselines: grey, one marker each).
_STYLES: dict[str, tuple[str, str]] = {"dense": ("k", "*"), "HiPP": ("tab:red", "o"), "uniform": ("tab:blue", "s")}
_BASELINE_MARKERS: str = "^v<>DPXh"


def plot_operating_points(rows: list[dict[str, Any]], path: Path) -> None:
    """POPE-adversarial balanced accuracy against ScienceQA accuracy, one panel per preference
    (its matched rows and dense), each panel's Pareto front ringed and joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hipp_torchprune.compare import pareto_front

    dense = [r for r in rows if r["preference"] is None]
    groups = list(dict.fromkeys(tuple(r["preference"]) for r in rows if r["preference"] is not None))
    others = sorted({r["method"].split(" @ ")[0] for r in rows if " @ " in r["method"]} - {"uniform"})
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 4.2), squeeze=False)
    for ax, pref in zip(axes[0], groups, strict=False):
        group = [r for r in rows if r["preference"] is not None and tuple(r["preference"]) == pref]
        for r in dense + group:
            kind = r["method"].split(" @ ")[0].split()[0]  # "dense", "HiPP", "uniform" or the baseline
            colour, marker = _STYLES.get(kind) or ("0.45", _BASELINE_MARKERS[others.index(kind) % len(_BASELINE_MARKERS)])
            ax.scatter(100 * r["sqa_acc"], 100 * r["pope_adv_bal_acc"], color=colour, marker=marker, s=55,
                       label=kind)
        front = [group[i] for i in pareto_front([(r["sqa_acc"], r["pope_adv_bal_acc"]) for r in group])]
        ax.plot([100 * r["sqa_acc"] for r in front], [100 * r["pope_adv_bal_acc"] for r in front], color="tab:red",
                alpha=0.35, lw=1)
        ax.scatter([100 * r["sqa_acc"] for r in front], [100 * r["pope_adv_bal_acc"] for r in front],
                   facecolors="none", edgecolors="tab:red", s=160, lw=1)
        ax.set_title(f"{group[0]['method'].removeprefix('HiPP ')} ({group[0]['sparsity']:.2f})", fontsize=9)
        ax.set_xlabel("ScienceQA-style accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("POPE-adversarial balanced accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][0].legend(dict(zip(labels, handles, strict=True)).values(), dict(zip(labels, handles, strict=True)),
                      fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
