"""Speed of a physically pruned language model against dense, measured side by side in one run.

On a GPU: LLaVA-1.5-7B language-model shapes (hidden 4096, MLP 11008, 32 layers, vocab 32000),
random weights, bf16, batch 32, 616-token inputs. On CPU: a smaller stand-in with the same
MLP/hidden ratio, fp32. Both models are timed alternately (median of ``--repeats``), and the
ideal speedup from FLOPs is printed next to the measured one. The same plan applied in mask mode
(``PlanMasks`` hooks on the dense model, same kept channels) is timed in the same loop for
comparison; mask mode does not save compute, so its speedup stays at or just below 1.

    python benchmarks/pruned_speed.py [--sparsity 0.225] [--round-to 64] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import hipp_torchprune as hipp
from hipp_torchprune.pruning.operator import PlanMasks, keep_indices, layer_scores

GPU_SHAPES = dict(hidden=4096, inter=11008, layers=32, heads=32, vocab=32000, batch=32, seq=616, dtype="bfloat16")
CPU_SHAPES = dict(hidden=512, inter=1408, layers=4, heads=8, vocab=4096, batch=4, seq=256, dtype="float32")


def build(shapes: dict, device: str) -> LlavaForConditionalGeneration:
    """A random LLaVA whose language model has the given shapes (the vision tower is a stub)."""
    text = LlamaConfig(hidden_size=shapes["hidden"], intermediate_size=shapes["inter"],
                       num_hidden_layers=shapes["layers"], num_attention_heads=shapes["heads"],
                       num_key_value_heads=shapes["heads"], vocab_size=shapes["vocab"], max_position_embeddings=2048)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=shapes["vocab"] - 1)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    return model.to(getattr(torch, shapes["dtype"])).eval()


def lm_flops(hidden: int, widths: list[int], seq: int, vocab: int) -> float:
    """Forward FLOPs per sequence of the language model (projections, attention, MLP, head)."""
    per_layer_attn = 2 * seq * 4 * hidden * hidden + 2 * 2 * seq * seq * hidden
    mlp = sum(2 * seq * 3 * hidden * w for w in widths)
    return len(widths) * per_layer_attn + mlp + 2 * seq * hidden * vocab


def time_forward(model: torch.nn.Module, ids: torch.Tensor, device: str) -> float:
    """Seconds for one language-model forward (+ lm_head) on ``ids``."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        hidden = model.model.language_model(input_ids=ids, use_cache=False).last_hidden_state
        model.lm_head(hidden)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print the result (a table, or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.225)
    parser.add_argument("--round-to", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    torch.manual_seed(0)
    dense = build(shapes, device)
    pruned = copy.deepcopy(dense)
    plan = hipp.make_plan(pruned, "uniform", args.sparsity, round_to=args.round_to)
    # mask mode keeps the same channels (the copy has identical weights, the scorer is deterministic)
    dense_adapter = hipp.get_adapter(dense)
    keep = [keep_indices(s, k) for s, k in
            zip(layer_scores(dense_adapter, hipp.importance("magnitude", dense)), plan.widths_after)]
    hipp.prune_model(pruned, plan, hipp.importance("magnitude", pruned))
    ids = torch.randint(0, shapes["vocab"] - 2, (shapes["batch"], shapes["seq"]), device=device)

    def time_masked() -> float:
        with PlanMasks(dense_adapter) as masks:  # hooks only while timing, so "dense" stays hook-free
            masks.set_keep(keep)
            return time_forward(dense, ids, device)

    for model in (dense, pruned):  # warm-up
        time_forward(model, ids, device)
    time_masked()
    times: dict[str, list[float]] = {"dense": [], "pruned": [], "masked": []}
    for _ in range(args.repeats):
        times["dense"].append(time_forward(dense, ids, device))
        times["pruned"].append(time_forward(pruned, ids, device))
        times["masked"].append(time_masked())
    med = {k: statistics.median(v) for k, v in times.items()}
    ideal = lm_flops(shapes["hidden"], list(plan.widths_before), shapes["seq"], shapes["vocab"]) / lm_flops(
        shapes["hidden"], list(plan.widths_after), shapes["seq"], shapes["vocab"])
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shapes": shapes,
        "widths_after": sorted(set(plan.widths_after)), "realized_sparsity": round(plan.realized_sparsity, 4),
        "dense_samples_per_s": shapes["batch"] / med["dense"], "pruned_samples_per_s": shapes["batch"] / med["pruned"],
        "speedup": med["dense"] / med["pruned"], "ideal_speedup": ideal,
        "fraction_of_ideal": (med["dense"] / med["pruned"]) / ideal,
        "masked_samples_per_s": shapes["batch"] / med["masked"], "masked_speedup": med["dense"] / med["masked"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
