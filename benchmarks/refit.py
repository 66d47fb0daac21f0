"""The least-squares down_proj refit, measured: every MLP-row method with and without it, before
recovery, on a world's calibration split (the choice) and its test split (information).

Methods: the uniform allocation with the shared row score (``uniform``), each registered MLP-row
baseline at each ``--sparsity``, and ``hipp`` (the shipped demo policy) at each ``--preferences``
query (the preference sets its compression). Each run prunes a copy of the dense model with
``MethodContext.reconstruct`` = ``none`` and then ``lstsq`` (:mod:`hipp_torchprune.pruning.reconstruct`);
one calibration set serves every run, as in ``hipp compare``. FLAP's own mean-bias compensation is
what ``none`` means for FLAP; ``lstsq`` replaces it.

Selection rule (declared before the first run, the row-score rule of ``benchmarks/row_score.py``):
the mean over every (method, sparsity) cell of ``(POPE-adversarial balanced accuracy + ScienceQA
accuracy) / 2`` on the calibration split; ``lstsq`` is recommended only when its mean exceeds
``none``'s by at least ``--margin`` (0.5) points. The test split plays no part in it.

    OMP_NUM_THREADS=1 python benchmarks/refit.py --data out/policy-world-v2 --sparsity 0.28,0.47 --limit 200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_methods import headline
from row_score import DEMO_POLICY, dense_setup, render, select

from hipp_torchprune.hipp.preferences import parse_preference
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, pair_method, prune_with_method

#: The two variants, in the order they run (``none`` is the current default).
VARIANTS: tuple[str, ...] = ("none", "lstsq")


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="proving-ground world")
    p.add_argument("--sparsity", default="0.28,0.47", help="comma-separated MLP sparsities of the baselines")
    p.add_argument("--methods", default="uniform,wanda,llm-pruner,owl,ecoflap,flap,random")
    p.add_argument("--policy", default=str(DEMO_POLICY), help="HiPP policy")
    p.add_argument("--preferences", default="0.1,0.9,0;0.9,0.1,0;0.1,0.4,0.5;0.4,0.1,0.5",
                   help="HiPP queries 'a,b,c;...' (empty: no HiPP rows)")
    p.add_argument("--limit", type=int, default=200, help="rows per task and split")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--round-to", type=int, default=8, help="baselines' rounding (HiPP uses its policy's)")
    p.add_argument("--margin", type=float, default=0.5, help="points lstsq must win by")
    return p.parse_args()


def runs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``(method, sparsity)`` of the baselines, then ``("hipp", preference)`` for each query."""
    out: list[tuple[str, Any]] = [(m, float(s)) for s in args.sparsity.split(",") for m in args.methods.split(",") if m]
    return out + [("hipp", parse_preference(p)) for p in args.preferences.split(";") if p]


def prune_run(base: Any, method: str, target: Any, context: MethodContext) -> tuple[Any, Any]:
    """A pruned copy of ``base`` and its report (``uniform``: the uniform strategy with the shared row score)."""
    model = copy.deepcopy(base)
    if method == "uniform":
        return model, prune_with_method(model, pair_method("uniform", context.row_score), target, context)
    if method == "hipp":
        return model, prune_with_method(model, "hipp", 0.0, replace(context, options={**context.options,
                                                                                      "preference": target}))
    return model, prune_with_method(model, method, target, context)


def main() -> int:
    """Run every (run, variant), print one JSON line each, then the table and the recommendation."""
    args = parse_args()
    registry, base, processor, samples, stats, splits, policy = dense_setup(args)
    rows = []
    for method, target in runs(args):
        hipp = method == "hipp"
        for variant in VARIANTS:
            start = time.time()
            context = MethodContext(processor, samples, stats, round_to=policy.round_to if hipp else args.round_to,
                                    r_max=policy.policy.config.r_max, registry=registry, row_score=DEFAULT_ROW_SCORE,
                                    options={"policy": policy} if hipp else {}, reconstruct=variant)
            model, report = prune_run(base, method, target, context)
            label = f"hipp ({', '.join(f'{w:g}' for w in target)})" if hipp else method
            # "score" is the variant: the column row_score.render and row_score.select group by
            row = {"method": label, "sparsity": None if hipp else target, "score": variant,
                   "realized": report.realized_sparsity, "widths": list(report.widths),
                   **{s: headline(model, processor, p) for s, p in splits.items()}, "seconds": round(time.time() - start)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    chosen, means = select(rows, "none", args.margin)
    print(render(rows, 0.005))
    print(json.dumps({"calibration_means": means, "recommended": chosen, "margin": args.margin}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
