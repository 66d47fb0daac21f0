"""``hipp eval``: score a checkpoint on POPE / ScienceQA-style data by answer log-probabilities."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hipp_torchprune.loading import add_dtype_argument

DEFAULT_TASKS = "pope_random,pope_popular,pope_adversarial,scienceqa"


def _format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for task, m in results.items():
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()]
        lines.append(f"{task:<18} " + " ".join(parts))
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from hipp_torchprune.data import parse_tasks
    from hipp_torchprune.evaluation import evaluate, load_model_and_processor
    from hipp_torchprune.threads import torch_threads

    parse_tasks(args.tasks)  # fail on unknown task names before loading anything
    with torch_threads(args.threads or None):  # an in-process caller keeps its own thread count
        model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
        results = evaluate(model, processor, args.data, args.tasks, limit=args.limit,
                           batch_size=args.batch_size, split=args.split)
    print(json.dumps(results) if args.json else _format_table(results))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser("eval", help="evaluate a model on POPE / ScienceQA-style tasks")
    p.add_argument("--model", required=True, help="'demo' or a checkpoint directory")
    p.add_argument("--data", required=True, help="world dir, split dir or lmms-lab download")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated (default {DEFAULT_TASKS})")
    p.add_argument("--limit", type=int, default=None, help="first N rows of each task")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.add_argument("--split", default="test", help="split of a world directory (default test)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    add_dtype_argument(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by task")
    p.set_defaults(func=_eval)
