"""SliceGPT's two variants at matched parameter counts, before recovery: which is stronger here.

``global`` (one PCA basis for the whole residual stream, ``lm_head`` sliced) against
``per-block`` (the reference's: a sequential PCA basis per residual-stream site, shortcut matrices
counted as parameters, ``lm_head`` unsliced), each at the cut whose parameter count is closest to
the MLP-sparsity budget (``slicegpt``'s conversion). Metrics: POPE-adversarial balanced accuracy
and ScienceQA accuracy, on the world's calibration split (decides) and test split (reported).

Calibration draws: ``--calib-n * --draws`` rows of the calibration split are read once and cut
into ``--draws`` disjoint sets of ``--calib-n``; each variant's PCA runs once per draw (the draws
show how much the choice of calibration rows moves each variant).

**Decision rule (fixed before the run).** Score ``m = (POPE-adv BalAcc + ScienceQA acc) / 2`` on
the calibration split, in points. The margin is per-block's ``m`` minus global's, averaged over
every sparsity and draw. ``per-block`` wins if the margin is at least +1 point, and ``global``
wins if it is at most -1 point. Between the two, the variants are not told apart and ``global``
stays the default: it is cheaper (no shortcut layers), and its checkpoints save and reload.

    python -m hipp_torchprune.cli world build --out /tmp/h3world --seed 23 --images 1000
    python benchmarks/slicegpt_variants.py --model demo --data /tmp/h3world --sparsity 0.5,0.625
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import torch

from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.evaluation import PreparedEval, evaluate, prepare_eval
from hipp_torchprune.loading import load_model
from hipp_torchprune.methods import MethodContext, prune_with_method
from hipp_torchprune.registry import default_registry

VARIANTS = ("global", "per-block")


def headline(model: torch.nn.Module, processor: Any, prepared: PreparedEval) -> dict[str, float]:
    """POPE-adversarial balanced accuracy, ScienceQA accuracy and their mean ``m``, in points."""
    result = evaluate(model, processor, prepared)
    pope, sqa = 100 * result["pope_adversarial"]["balanced_accuracy"], 100 * result["scienceqa"]["accuracy"]
    return {"pope_adv_balacc": round(pope, 2), "scienceqa_acc": round(sqa, 2), "m": round((pope + sqa) / 2, 2)}


def run_one(base: torch.nn.Module, processor: Any, samples: list, variant: str, sparsity: float,
            splits: dict[str, PreparedEval]) -> dict[str, Any]:
    """Slice a copy of ``base`` with one variant and evaluate it on every split."""
    start = time.time()
    model = copy.deepcopy(base)
    context = MethodContext(processor, samples, None, registry=default_registry(),
                            options={"slicegpt_variant": variant})
    report = prune_with_method(model, "slicegpt", sparsity, context)
    row = {"variant": variant, "sparsity": sparsity, "realized": round(report.realized_sparsity, 4),
           "hidden_after": report.details["hidden_after"], "params": sum(p.numel() for p in model.parameters())}
    row.update({split: headline(model, processor, prepared) for split, prepared in splits.items()})
    row["seconds"] = round(time.time() - start, 1)
    return row


def decide(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The module docstring's rule on the calibration split's ``m``."""
    by = {(r["variant"], r["sparsity"], r["draw"]): r["calibration"]["m"] for r in rows}
    keys = sorted({(s, d) for _, s, d in by})
    margin = statistics.mean(by[("per-block", s, d)] - by[("global", s, d)] for s, d in keys)
    winner = "per-block" if margin >= 1 else "global" if margin <= -1 else "none (global stays default)"
    return {"margin_per_block_minus_global": round(margin, 2), "winner": winner}


def main() -> None:
    """Parse the flags, run every (sparsity, draw, variant), print JSON lines and the decision."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="proving-ground world")
    p.add_argument("--sparsity", default="0.5,0.625", help="comma-separated MLP sparsities (parameter budgets)")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--draws", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    base, processor = load_model(args.model)
    rows_all = calibration_samples(args.data, args.calib_n * args.draws)
    draws = [rows_all[i * args.calib_n:(i + 1) * args.calib_n] for i in range(args.draws)]
    splits = {s: prepare_eval(processor, args.data, "pope_adversarial,scienceqa", split=s)
              for s in ("calibration", "test")}
    print(json.dumps({"variant": "dense", **{s: headline(base, processor, pr) for s, pr in splits.items()}}),
          flush=True)
    rows = []
    for sparsity in (float(s) for s in args.sparsity.split(",")):
        for draw, samples in enumerate(draws):
            for variant in VARIANTS:
                rows.append({**run_one(base, processor, samples, variant, sparsity, splits), "draw": draw})
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"decision": decide(rows)}), flush=True)


if __name__ == "__main__":
    main()
