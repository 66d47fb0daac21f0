"""Benchmark: bf16 arithmetic against float32 linears (``float32_linears``) for a bf16 model on CPU.

Side by side in one run, alternating, median of ``--repeats``:

* ``matmul``: one (600 x 4096) by (4096 x 11008) product, LLaVA-7B's MLP shape over an image
  prompt, in bf16 and in float32;
* ``demo``: the forward passes of ``--n`` prepared POPE-adversarial rows through the bf16 demo
  model (what ``hipp eval`` runs after preparing its inputs), with bf16 arithmetic (the plain
  model) and inside :func:`~hipp_torchprune.pruning.compute.float32_linears` (what ``hipp eval``
  and calibration do on a CPU now), plus how many rows' yes/no answers differ between the two.

    OMP_NUM_THREADS=1 python benchmarks/cpu_compute.py --data WORLD [--n 256] [--repeats 5]

Prints one JSON line. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call, and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def forward_all(model: Any, task: Any) -> torch.Tensor:
    """Last-position log-probabilities of every prepared batch, concatenated ``(N, V)``."""
    from hipp_torchprune.evaluation import last_position_logprobs

    with torch.inference_mode():
        return torch.cat([last_position_logprobs(model, batch) for batch in task.batches])


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from hipp_torchprune.evaluation import load_model_and_processor, prepare_eval
    from hipp_torchprune.pruning.compute import float32_linears

    torch.set_num_threads(1)
    model, processor = load_model_and_processor(args.model, device="cpu")
    task = prepare_eval(processor, args.data, "pope_adversarial", limit=args.n, batch_size=64).tasks[0]
    x, w = torch.randn(600, 4096), torch.randn(11008, 4096)
    runs: dict[str, list[float]] = {k: [] for k in ("matmul_bf16", "matmul_fp32", "demo_bf16", "demo_fp32_linears")}
    outs: dict[str, torch.Tensor] = {}

    def upcast() -> torch.Tensor:
        with float32_linears(model):
            return forward_all(model, task)

    for _ in range(args.repeats):
        runs["matmul_bf16"].append(timed(lambda: x.bfloat16() @ w.bfloat16().T)[0])
        runs["matmul_fp32"].append(timed(lambda: x @ w.T)[0])
        t, outs["bf16"] = timed(lambda: forward_all(model, task))
        runs["demo_bf16"].append(t)
        t, outs["fp32"] = timed(upcast)
        runs["demo_fp32_linears"].append(t)
    med = {k: statistics.median(v) for k, v in runs.items()}
    top = {k: o.argmax(dim=-1) for k, o in outs.items()}  # the predicted next token of each row
    print(json.dumps({"model_dtype": str(next(model.parameters()).dtype), "rows": int(outs["bf16"].shape[0]),
                      "median_s": {k: round(v, 3) for k, v in med.items()},
                      "matmul_bf16_over_fp32": round(med["matmul_bf16"] / med["matmul_fp32"], 2),
                      "demo_bf16_over_fp32_linears": round(med["demo_bf16"] / med["demo_fp32_linears"], 2),
                      "max_abs_logprob_diff": float((outs["bf16"] - outs["fp32"]).abs().max()),
                      "top_token_differs": int((top["bf16"] != top["fp32"]).sum())}))


if __name__ == "__main__":
    main()
