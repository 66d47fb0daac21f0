"""Plans evaluated per second in mask mode, against the dense-forward bound, side by side.

The bound is one dense forward pass over the reward batch (what scoring a plan can at best
cost); a mask-mode plan evaluation adds the plan's rounding, row selection, mask update and the
masked forward. Both are timed alternately in one run (median of ``--repeats``). On a GPU the
plan evaluation is also timed with the scores kept on the device (``*_device_scores``), and
``breakdown_ms`` says where one plan evaluation's time goes (each phase timed on its own).

- CPU (proving-ground scale): the shipped demo model (or ``--model``), one batch of 64 POPE
  prompts from a world built on the fly.
- GPU: LLaVA-1.5-7B language-model shapes with random weights, bf16, batch 32 x 616 tokens
  (text-only forward of the language model; vision features are a fixed cost outside the plan).

    python benchmarks/plan_eval_throughput.py [--model demo] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import hipp_torchprune as hipp
from hipp_torchprune.pruning.operator import PlanMasks, score_ranks
from hipp_torchprune.pruning.plan import budget_matched_widths


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call of ``fn``."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def cpu_setup(model_spec: str) -> tuple[torch.nn.Module, Callable[[], object]]:
    """The demo model and a forward over 64 POPE prompts (images included)."""
    from hipp_torchprune.demo_job import demo_world
    from hipp_torchprune.evaluation import last_position_logprobs, prepare_eval

    model, processor = hipp.load_model(model_spec)
    world = demo_world(model_spec, Path(tempfile.mkdtemp(prefix="hipp-bench-world-")) / "world", seed=11, n_images=300)
    batch = prepare_eval(processor, world, "pope_adversarial", limit=64, batch_size=64).tasks[0].batches[0]
    return model, lambda: last_position_logprobs(model, batch)


def gpu_setup() -> tuple[torch.nn.Module, Callable[[], object]]:
    """LLaVA-1.5-7B language-model shapes, random bf16 weights, batch 32 x 616 tokens."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from pruned_speed import GPU_SHAPES, build

    model = build(GPU_SHAPES, "cuda")
    ids = torch.randint(0, GPU_SHAPES["vocab"] - 2, (GPU_SHAPES["batch"], GPU_SHAPES["seq"]), device="cuda")

    def forward() -> object:
        with torch.inference_mode():
            hidden = model.model.language_model(input_ids=ids, use_cache=False).last_hidden_state
            return model.lm_head(hidden[:, -1])

    return model, forward


def main() -> None:
    """Run the benchmark and print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--round-to", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, forward = gpu_setup() if device == "cuda" else cpu_setup(args.model)
    adapter = hipp.get_adapter(model)
    widths = tuple(adapter.intermediate_widths())
    from hipp_torchprune.api import row_params

    params = row_params(adapter)
    scores = [torch.randn(w, generator=torch.Generator().manual_seed(i)) for i, w in enumerate(widths)]
    masks = PlanMasks(adapter)
    # as PlanEnvironment does: rows ranked once, on the model's device; a plan is then one
    # comparison per layer (no sort, no host-to-device copies)
    ranks = [score_ranks(s).to(m.device) for s, m in zip(scores, masks.masks)]
    gen = torch.Generator().manual_seed(0)

    def random_kept() -> tuple[int, ...]:
        ratios = (0.15 + 0.3 * torch.rand(len(widths), generator=gen)).tolist()
        return budget_matched_widths(ratios, widths, args.round_to, 0.8, params)

    def evaluate_plan() -> object:
        masks.set_ranked(ranks, random_kept())
        with torch.inference_mode():
            out = forward()
        masks.set_keep(None)
        return out

    with torch.inference_mode():
        forward()
    evaluate_plan()
    dense: list[float] = []
    plan: list[float] = []
    for _ in range(args.repeats):
        with torch.inference_mode():
            dense.append(timed(forward, device))
        plan.append(timed(evaluate_plan, device))

    # where a plan evaluation's time goes, each phase timed on its own
    phases: dict[str, list[float]] = {k: [] for k in ("round", "set_ranked", "masked_forward", "reset")}

    def phase(name: str, fn: Callable[[], object]) -> object:
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        phases[name].append(time.perf_counter() - start)
        return out

    for _ in range(min(args.repeats, 5)):
        kept = phase("round", random_kept)
        phase("set_ranked", lambda kept=kept: masks.set_ranked(ranks, kept))
        with torch.inference_mode():
            phase("masked_forward", forward)
        phase("reset", lambda: masks.set_keep(None))
    masks.remove()
    med_dense = statistics.median(dense)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "model": "llava-1.5-7b-shapes-random-bf16" if device == "cuda" else args.model,
              "dense_forwards_per_s": 1 / med_dense}
    result["plans_per_s"] = 1 / statistics.median(plan)
    result["fraction_of_bound"] = med_dense / statistics.median(plan)
    result["breakdown_ms"] = {k: round(1000 * statistics.median(v), 3) for k, v in phases.items()}
    result["breakdown_ms"]["dense_forward"] = round(1000 * med_dense, 3)
    print(json.dumps(result) if args.json else "\n".join(f"{k:>22}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
