"""Would a hallucination-aware row score keep better rows? The shared row score blended with a POPE term.

For each MLP channel ``j`` of every layer, a term measured on ``--rows`` labelled POPE rows
(``--term-data``'s ``--term-split``, ``--category`` questions), with ``L`` their summed gold
log-likelihood and ``h`` the down-projection's input:

* ``--term taylor``: ``T_j = sum over rows and tokens of h_j * dL/dh_j`` (:func:`signed_taylor`), the
  first-order change of ``L`` when channel ``j`` is scaled, one backward pass;
* ``--term ablation``: ``T_j = L - L(channel j zeroed)`` (:func:`ablation_effects`), exact for one
  channel, one forward pass of the rows per channel.

Either way ``T_j < 0`` means removing the channel raises the log-likelihood (a channel that pushes a
hallucinated "yes"). Each layer's rows are then ranked by ``z(S) + lam * z(T)`` (:func:`blended_scores`,
``S`` the shared row score, ``z`` the within-layer standard score), and the same kept widths (``--plan``,
one per layer) are scored on the whole test split of every ``--data`` world (POPE-adversarial balanced
accuracy, ScienceQA accuracy, before recovery, the shared score calibrated on that world) for every
``--lam``; ``lam = 0`` is the shared row score itself. Writes ``task_row_score.json``.

    OMP_NUM_THREADS=1 python benchmarks/task_row_score.py --data out/compare-v2/world --data out/world-s11 \\
        --term-data out/policy-world-v2 --term ablation --rows 128 --out out/task-rows \\
        --plan 112,128,96,112,72,128,56,32 --lam 0,0.25,0.5,1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablations import parse_widths, test_environment, write_records

from hipp_torchprune import api
from hipp_torchprune.evaluation import PreparedTask, last_position_logprobs
from hipp_torchprune.loading import load_model
from hipp_torchprune.provenance import world_fingerprint
from hipp_torchprune.pruning.compute import float32_linears
from hipp_torchprune.pruning.operator import score_ranks
from hipp_torchprune.rewards import PopeMarginReward


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", action="append", required=True, help="world whose test split scores the plans; repeat")
    p.add_argument("--term", choices=("taylor", "ablation"), default="ablation")
    p.add_argument("--term-data", required=True, help="world whose labelled POPE rows give the term")
    p.add_argument("--term-split", default="calibration")
    p.add_argument("--category", default="adversarial", choices=("random", "popular", "adversarial"))
    p.add_argument("--rows", type=int, default=128, help="POPE rows the term sums over")
    p.add_argument("--out", required=True, help="writes task_row_score.json and the calibration caches here")
    p.add_argument("--plan", type=parse_widths, action="append", required=True, help="kept widths; repeat for more")
    p.add_argument("--lam", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--calib-n", type=int, default=64)
    return p.parse_args(argv)


def standard_score(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` in float64 (a constant vector gives zeros).

    Example: ``[1, 2, 3]`` gives ``[-1, 0, 1]``."""
    x = x.double()
    std = x.std()
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def blended_scores(shared: list[torch.Tensor], taylor: list[torch.Tensor], lam: float) -> list[torch.Tensor]:
    """Per layer ``z(shared) + lam * z(taylor)`` (:func:`standard_score`); ``lam = 0`` ranks as ``shared``."""
    return [standard_score(s) + lam * standard_score(t) for s, t in zip(shared, taylor, strict=True)]


def _gold_loglik(logprobs: torch.Tensor, task: PreparedTask, first: int) -> torch.Tensor:
    """Summed log-sigmoid gold margin of one batch's rows (rows ``first`` on of ``task``)."""
    total = logprobs.new_zeros(())
    for r in range(logprobs.shape[0]):
        options = torch.stack([torch.logsumexp(logprobs[r, c], 0) for c in task.candidates[first + r]])
        gold = task.gold[first + r]
        others = torch.logsumexp(torch.cat([options[:gold], options[gold + 1:]]), 0)
        total = total + F.logsigmoid(options[gold] - others)
    return total


def signed_taylor(model: Any, downs: list[torch.nn.Linear], task: PreparedTask) -> list[torch.Tensor]:
    """Per layer, ``sum h_j * dL/dh_j`` over every row and token (``h``: ``downs[l]``'s input, ``L``:
    the summed gold log-likelihood of ``task``'s rows); the weights' ``requires_grad`` is restored."""
    acts: dict[int, torch.Tensor] = {}
    hooks = [d.register_forward_pre_hook(lambda _m, inp, i=i: acts.__setitem__(i, inp[0])) for i, d in enumerate(downs)]
    sums = [torch.zeros(d.in_features, dtype=torch.float64) for d in downs]
    flags = [p.requires_grad for p in model.parameters()]
    try:
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            first = 0
            for batch in task.batches:
                acts.clear()
                logprobs = last_position_logprobs(model, batch)
                for a in acts.values():
                    a.retain_grad()
                _gold_loglik(logprobs, task, first).backward()
                first += logprobs.shape[0]
                for i, a in acts.items():
                    sums[i] += (a.float() * a.grad.float()).sum(dim=(0, 1)).double().cpu()
                model.zero_grad(set_to_none=True)
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return sums


def _summed_loglik(model: Any, task: PreparedTask) -> float:
    """``task``'s summed gold log-likelihood under ``model`` as it is now (float32 linears, no grad)."""
    total, first = 0.0, 0
    with torch.inference_mode(), float32_linears(model):
        for batch in task.batches:
            logprobs = last_position_logprobs(model, batch)
            total += float(_gold_loglik(logprobs, task, first))
            first += logprobs.shape[0]
    return total


def ablation_effects(model: Any, downs: list[torch.nn.Linear], task: PreparedTask) -> list[torch.Tensor]:
    """Per layer, ``L - L(channel j zeroed)`` for every channel ``j`` of ``downs[l]``'s input (``L``:
    the summed gold log-likelihood of ``task``'s rows), one channel at a time."""
    dense = _summed_loglik(model, task)
    effects = []
    for down in downs:
        keep = torch.ones(down.in_features)
        hook = down.register_forward_pre_hook(lambda _m, inp, keep=keep: (inp[0] * keep.to(inp[0]),))
        layer = torch.zeros(down.in_features, dtype=torch.float64)
        try:
            for j in range(down.in_features):
                keep[j] = 0.0
                layer[j] = dense - _summed_loglik(model, task)
                keep[j] = 1.0
        finally:
            hook.remove()
        effects.append(layer)
    return effects


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure the term once, score every plan under every blend on every world, print one line per
    (world, blend), write ``task_row_score.json``."""
    args = parse_args(argv)
    model, processor = load_model(args.model)
    model.eval()
    rows = PopeMarginReward(processor, args.term_data, args.term_split, args.rows, category=args.category)
    measure = signed_taylor if args.term == "taylor" else ablation_effects
    term = measure(model, [m.down for m in api.get_adapter(model).mlps()], rows.prepared)
    records = []
    for i, data in enumerate(args.data):
        world = world_fingerprint(data)
        env = test_environment(args.model, data, args.calib_n, Path(args.out) / f"test-calibration-{i}",
                               round_to=1, r_max=1.0, budget=(0.0, 1.0))
        try:
            shared = [s.clone() for s in env.row_scores]
            for lam in args.lam:
                env.ranks = [score_ranks(s).to(r.device) for s, r in zip(blended_scores(shared, term, lam), env.ranks)]
                raw = env.score_widths(args.plan).raw
                records += [{"data": data, "world": world, "lam": lam, "widths": list(w), "pope_adv": float(raw[k, 0]),
                             "sqa": float(raw[k, 1])} for k, w in enumerate(args.plan)]
                print(f"{data} lam {lam}: " + "  ".join(f"{float(raw[k, 0]):.1f}/{float(raw[k, 1]):.1f}"
                                                        for k in range(len(args.plan))), flush=True)
        finally:
            env.close()
    write_records(Path(args.out, "task_row_score.json"), args, records, args.data[0])
    return records


if __name__ == "__main__":
    main()
