"""ScienceQA-style accuracy by question topic (objects, reading, counting, attributes, ...).

Evaluates a checkpoint on the test split's multiple-choice rows and groups the per-question
results by the rows' ``topic`` column (real lmms-lab/ScienceQA rows have one too). Prints one
JSON object: ``{topic: {"accuracy": .., "n": ..}, "all": {...}}``.

    python benchmarks/scienceqa_topics.py --model demo --data WORLD_DIR [--limit 600]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import hipp_torchprune as hipp
from hipp_torchprune.data import load_task_docs, parse_tasks
from hipp_torchprune.evaluation import mc_metrics, option_logprobs, prepare_eval


def main() -> None:
    """Parse arguments and print the per-topic accuracies as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    model, processor = hipp.load_model(args.model)
    task = prepare_eval(processor, args.data, "scienceqa", limit=args.limit).tasks[0]
    docs = load_task_docs(args.data, parse_tasks("scienceqa")[0], limit=args.limit)
    lps = option_logprobs(model.eval(), task)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(docs):
        groups[str(doc.get("topic") or "unknown")].append(i)
    out = {t: mc_metrics([lps[i] for i in idx], [task.gold[i] for i in idx]) for t, idx in sorted(groups.items())}
    out["all"] = mc_metrics(lps, task.gold)
    print(json.dumps({t: {"accuracy": round(m["accuracy"], 4), "n": m["n"]} for t, m in out.items()}))


if __name__ == "__main__":
    main()
