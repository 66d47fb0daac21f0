"""ScienceQA-style accuracy by question topic (objects, reading, counting, attributes, ...).

Evaluates a checkpoint on a split's multiple-choice rows and groups the per-question results by
the rows' ``topic`` column (real lmms-lab/ScienceQA rows have one too). Prints one JSON object:
``{topic: {"accuracy": .., "n": ..}, "all": {...}}``. With ``--prune-layers``, also one line per
listed layer with that layer alone losing ``--ratio`` of its MLP rows (Wanda order, mask mode,
calibrated on 64 calibration rows): which question kinds live in which layer.

    python benchmarks/scienceqa_topics.py --model demo --data WORLD_DIR [--limit 600] [--split test]
        [--prune-layers 0,4,5 --ratio 0.75]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import hipp_torchprune as hipp
from hipp_torchprune.data import load_task_docs, parse_tasks
from hipp_torchprune.evaluation import mc_metrics, option_logprobs, prepare_eval


def by_topic(model, task, docs) -> dict[str, dict[str, float]]:
    """Accuracy and row count per topic, and over all rows."""
    lps = option_logprobs(model, task)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(docs):
        groups[str(doc.get("topic") or "unknown")].append(i)
    out = {t: mc_metrics([lps[i] for i in idx], [task.gold[i] for i in idx]) for t, idx in sorted(groups.items())}
    out["all"] = mc_metrics(lps, task.gold)
    return {t: {"accuracy": round(m["accuracy"], 4), "n": m["n"]} for t, m in out.items()}


def main() -> None:
    """Parse arguments and print the per-topic accuracies as JSON objects."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--prune-layers", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--ratio", type=float, default=0.75)
    args = parser.parse_args()
    model, processor = hipp.load_model(args.model)
    model.eval()
    task = prepare_eval(processor, args.data, "scienceqa", limit=args.limit, split=args.split).tasks[0]
    docs = load_task_docs(args.data, parse_tasks("scienceqa")[0], split=args.split, limit=args.limit)
    print(json.dumps(by_topic(model, task, docs)))
    if not args.prune_layers:
        return
    for layer, topics in single_layer_topics(model, processor, args.data, task, docs, args.prune_layers, args.ratio):
        print(json.dumps({"layer": layer, "ratio": args.ratio, **topics}))


def single_layer_topics(model, processor, data: str, task, docs, layers: list[int], ratio: float):
    """``(layer, by_topic)`` with each of ``layers`` alone pruned at ``ratio`` (Wanda rows from 64
    calibration samples, mask mode, undone after each)."""
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.hipp.grounding import single_layer_plans

    scorer = hipp.importance("wanda", model, hipp.calibrate(model, processor, calibration_samples(data, 64)))
    plans = single_layer_plans(len(hipp.get_adapter(model).intermediate_widths()), ratio)
    for layer in layers:
        plan = hipp.api.plan_from_ratios(model, plans[layer], round_to=32, r_max=max(ratio, 0.8))
        masks = hipp.prune_model(model, plan, scorer, mode="mask").masks
        try:
            yield layer, by_topic(model, task, docs)
        finally:
            masks.remove()


if __name__ == "__main__":
    main()
