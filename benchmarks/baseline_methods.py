"""Every registered MLP-row baseline on one model, before recovery: widths, POPE-adversarial
balanced accuracy and ScienceQA accuracy on a world's test split.

One calibration set (``--calib-n`` rows of the calibration split, with gradients) serves every
method, as in ``hipp compare``; each method prunes a copy of the model at each ``--sparsity``.
It uses only ``prune_with_method``, so the same file also runs on older checkouts of the project
(the old-vs-new rows of ``docs/baselines.md``).

    python benchmarks/baseline_methods.py --model demo --data WORLD --sparsity 0.625,0.5 \\
        --methods wanda,llm-pruner,owl,ecoflap,flap,random
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import evaluate, prepare_eval
from hipp_torchprune.loading import load_model
from hipp_torchprune.methods import MethodContext, prune_with_method
from hipp_torchprune.registry import default_registry


def headline(model: torch.nn.Module, processor: object, prepared: object) -> tuple[float, float]:
    """(POPE-adversarial balanced accuracy, ScienceQA accuracy), in percent."""
    result = evaluate(model, processor, prepared)
    return 100 * result["pope_adversarial"]["balanced_accuracy"], 100 * result["scienceqa"]["accuracy"]


def main() -> None:
    """Parse the flags, run every (sparsity, method), print one JSON line per row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="proving-ground world")
    p.add_argument("--sparsity", default="0.625", help="comma-separated MLP sparsities")
    p.add_argument("--methods", default="wanda,llm-pruner,owl,ecoflap,flap,random")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--round-to", type=int, default=32)
    p.add_argument("--r-max", type=float, default=0.95)
    args = p.parse_args()
    registry = default_registry()
    base, processor = load_model(args.model)
    samples = calibration_samples(args.data, args.calib_n)
    stats = api.calibrate(base, processor, samples, with_grads=True, registry=registry)
    prepared = prepare_eval(processor, args.data, "pope_adversarial,scienceqa")
    print(json.dumps({"method": "dense", "metrics": headline(base, processor, prepared)}), flush=True)
    for sparsity in (float(s) for s in args.sparsity.split(",")):
        for name in args.methods.split(","):
            start = time.time()
            model = copy.deepcopy(base)
            context = MethodContext(processor, samples, stats, round_to=args.round_to, r_max=args.r_max,
                                    registry=registry)
            report = prune_with_method(model, name, sparsity, context)
            print(json.dumps({"method": name, "sparsity": sparsity, "realized": report.realized_sparsity,
                              "widths": list(report.widths), "metrics": headline(model, processor, prepared),
                              "selected": report.details.get("selected"), "seconds": round(time.time() - start)}),
                  flush=True)


if __name__ == "__main__":
    main()
