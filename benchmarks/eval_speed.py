"""Benchmark: wall time to evaluate 256 POPE examples with the demo model on CPU.

Usage::

    python benchmarks/eval_speed.py [--model demo] [--data DIR] [--repeats 7] [--threads 2]

Builds a fresh test world (seed 12345, 300 images) if ``--data`` is not given. Reports the median
of ``--repeats`` timings of two paths:

* ``cold``: ``evaluate(model, processor, data_dir, "pope_adversarial", limit=256)`` (reads the
  parquet, decodes images, tokenizes, then runs the forward passes);
* ``warm``: ``evaluate(model, processor, prepared)`` on inputs prepared once with ``prepare_eval``
  (the path pruning search uses thousands of times).

The target is a median <= 3 s on the 2-core CPU. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", default=None)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from hipp_torchprune.evaluation import evaluate, load_model_and_processor, prepare_eval

    torch.set_num_threads(args.threads)
    data = args.data
    if data is None:
        from hipp_torchprune.demo_job import demo_world

        data = str(demo_world(args.model, Path(tempfile.mkdtemp()) / "world", seed=12345, n_images=300))
    model, processor = load_model_and_processor(args.model, device="cpu")
    task = "pope_adversarial"
    evaluate(model, processor, data, task, limit=args.n, batch_size=args.batch_size)  # warm-up
    cold, warm = [], []
    prepared = prepare_eval(processor, data, task, limit=args.n, batch_size=args.batch_size)
    n = prepared.tasks[0].gold.__len__()
    for _ in range(args.repeats):
        t = time.perf_counter()
        evaluate(model, processor, data, task, limit=args.n, batch_size=args.batch_size)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluate(model, processor, prepared)
        warm.append(time.perf_counter() - t)
    print(json.dumps({"examples": n, "batch_size": args.batch_size, "threads": args.threads,
                      "cold_median_s": round(statistics.median(cold), 3),
                      "warm_median_s": round(statistics.median(warm), 3),
                      "cold_all_s": [round(x, 3) for x in cold], "warm_all_s": [round(x, 3) for x in warm]}))


if __name__ == "__main__":
    main()
