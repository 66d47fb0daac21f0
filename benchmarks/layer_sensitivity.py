"""Which decoder layers' MLPs matter? Prune one layer at a time, the others dense.

For each ratio and layer, removes that share of the layer's MLP rows (Wanda row scores,
calibrated on the world's calibration split) in mask mode and evaluates POPE (random,
adversarial) and ScienceQA on the test split. Prints one JSON line per cell.

    python benchmarks/layer_sensitivity.py --model demo --data WORLD_DIR [--ratios 0.75,0.95]
"""

from __future__ import annotations

import argparse
import json

import hipp_torchprune as hipp
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import prepare_eval
from degradation import TASKS, run_plan


def main() -> None:
    """Parse arguments and print one JSON line per (ratio, layer)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.75, 0.95])
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--round-to", type=int, default=32)
    args = parser.parse_args()
    model, processor = hipp.load_model(args.model)
    scorer = hipp.importance("wanda", model, hipp.calibrate(model, processor, calibration_samples(args.data, args.calib_n)))
    prepared = prepare_eval(processor, args.data, TASKS, limit=args.limit)
    n_layers = len(hipp.get_adapter(model).intermediate_widths())
    for ratio in args.ratios:
        for layer in range(n_layers):
            ratios = [ratio if i == layer else 0.0 for i in range(n_layers)]
            plan = hipp.api.plan_from_ratios(model, ratios, round_to=args.round_to, r_max=max(ratio, 0.8))
            scores = run_plan(model, plan, scorer, processor, prepared)
            print(json.dumps({"ratio": ratio, "layer": layer, **{k: round(v, 4) for k, v in scores.items()}}), flush=True)


if __name__ == "__main__":
    main()
