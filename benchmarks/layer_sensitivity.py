"""Which decoder layers' MLPs matter? Prune one layer at a time, the others dense.

For each ratio and layer, removes that share of the layer's MLP rows (Wanda row scores,
calibrated on the world's calibration split) in mask mode and evaluates POPE (random,
adversarial) and ScienceQA on ``--split``. Prints one JSON line per cell, then per ratio the
drop profiles' Spearman correlation over layers (POPE-adversarial vs ScienceQA), each profile's
most critical layer, and the paper's visual sensitivity (attention mass on vision tokens) beside
the POPE drop profile with their Spearman correlation, and the state feature proposed in its place
(``hipp.grounding.single_layer_drops``: per layer, the POPE-adversarial and ScienceQA reward,
mean gold log-margin on ``--feature-limit`` calibration rows, lost when that layer alone is
pruned) with its Spearman correlation against each profile. ``--out`` writes everything as JSON
(the input of ``degradation.py --sensitivity``).

    python benchmarks/layer_sensitivity.py --model demo --data WORLD_DIR [--ratios 0.75] [--split calibration]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from degradation import METRIC, TASKS, run_plan
from scipy.stats import spearmanr

import hipp_torchprune as hipp
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import evaluate, prepare_eval
from hipp_torchprune.hipp.grounding import single_layer_plans
from hipp_torchprune.hipp.sensitivity import visual_sensitivity


def profiles(model, processor, scorer, prepared, ratio: float, round_to: int) -> dict[str, list[float]]:
    """Per task, the metric lost (dense minus pruned) when each layer alone loses ``ratio`` of its rows."""
    dense = {t: r[METRIC[t]] for t, r in evaluate(model, processor, prepared).items()}
    n_layers = len(hipp.get_adapter(model).intermediate_widths())
    drops: dict[str, list[float]] = {t: [] for t in dense}
    for layer, ratios in enumerate(single_layer_plans(n_layers, ratio)[:-1]):
        plan = hipp.api.plan_from_ratios(model, ratios, round_to=round_to, r_max=max(ratio, 0.8))
        scores = run_plan(model, plan, scorer, processor, prepared)
        for t in dense:
            drops[t].append(dense[t] - scores[t])
        print(json.dumps({"ratio": ratio, "layer": layer, **{k: round(v, 4) for k, v in scores.items()
                                                             if k in METRIC}}), flush=True)
    return drops


def margin_feature(model, processor, scorer, data: str, ratio: float, round_to: int, limit: int) -> list[list[float]]:
    """The proposed HiPP state feature: per layer, the POPE-adversarial and ScienceQA reward
    (mean gold log-margin on ``limit`` calibration rows) lost when that layer alone loses ``ratio``."""
    from hipp_torchprune.hipp.env import PlanEnvironment
    from hipp_torchprune.hipp.grounding import single_layer_drops
    from hipp_torchprune.hipp.objectives import default_objectives

    adapter = hipp.get_adapter(model)
    scores = hipp.api.layer_scores(adapter, scorer)
    env = PlanEnvironment(model, adapter, scores, default_objectives(processor, data, "calibration", limit,
                                                                      statistic="margin"),
                          round_to=round_to, r_max=max(ratio, 0.8), compression_range=(0.2, 0.5),
                          row_params=hipp.api.row_params(adapter))
    try:
        return single_layer_drops(env, ratio).tolist()  # (L, 2)
    finally:
        env.close()


def summary(drops: dict[str, list[float]], sensitivity: list[float],
            feature: list[list[float]] | None = None) -> dict[str, object]:
    """Spearman correlations and most critical layers of one ratio's profiles."""
    pope, sqa = drops["pope_adversarial"], drops["scienceqa"]
    out = {"spearman_pope_adv_vs_sqa": float(spearmanr(pope, sqa).statistic),
           "most_critical_pope_adv": max(range(len(pope)), key=pope.__getitem__),
           "most_critical_sqa": max(range(len(sqa)), key=sqa.__getitem__),
           "spearman_visual_sensitivity_vs_pope_adv": float(spearmanr(sensitivity, pope).statistic)}
    if feature is not None:
        out["spearman_margin_feature_vs_pope_adv"] = float(spearmanr([f[0] for f in feature], pope).statistic)
        out["spearman_margin_feature_vs_sqa"] = float(spearmanr([f[1] for f in feature], sqa).statistic)
        out["most_critical_margin_feature_pope_adv"] = max(range(len(feature)), key=lambda i: feature[i][0])
        out["most_critical_margin_feature_sqa"] = max(range(len(feature)), key=lambda i: feature[i][1])
    return out


def main() -> None:
    """Parse arguments, print the per-layer cells and the per-ratio summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.75])
    parser.add_argument("--split", default="test", help="split the drops are measured on (calibration or test)")
    parser.add_argument("--limit", type=int, default=None, help="rows per task (default: all)")
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--round-to", type=int, default=8,
                        help="kept widths are multiples of this (default 8: 1/16 of the v2 demo model's 128-row MLPs)")
    parser.add_argument("--out", default=None, help="write the profiles and summaries as JSON here")
    parser.add_argument("--feature-limit", type=int, default=128,
                        help="calibration rows per task for the proposed margin-drop feature (0 = skip it)")
    args = parser.parse_args()
    model, processor = hipp.load_model(args.model)
    samples = calibration_samples(args.data, args.calib_n)
    scorer = hipp.importance("wanda", model, hipp.calibrate(model, processor, samples))
    adapter = hipp.get_adapter(model)
    sensitivity = visual_sensitivity(model, adapter, hipp.api.calibration_batches(adapter, processor, samples, 8))
    prepared = prepare_eval(processor, args.data, TASKS, limit=args.limit, split=args.split)
    result = {"split": args.split, "visual_sensitivity": sensitivity, "ratios": {}}
    for ratio in args.ratios:
        drops = profiles(model, processor, scorer, prepared, ratio, args.round_to)
        feature = margin_feature(model, processor, scorer, args.data, ratio, args.round_to, args.feature_limit) \
            if args.feature_limit else None
        result["ratios"][str(ratio)] = {"drops": drops, "margin_feature": feature, **summary(drops, sensitivity, feature)}
        print(json.dumps({"ratio": ratio, **summary(drops, sensitivity, feature)}), flush=True)
    print(json.dumps({"visual_sensitivity": [round(v, 4) for v in sensitivity]}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
