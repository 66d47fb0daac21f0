"""Best-of-K deployment, screened: would choosing among a policy's sampled allocations beat its
deterministic plan?

For each ``--preferences`` query, the policy's mean plan and ``--samples`` plans drawn from its
allocation head (Dirichlet samples, seeded) are pinned to the mean plan's sparsity
(``ablations.pinned_widths``), so only where the rows go differs. Each distinct plan is scored
before recovery, in mask mode (with ``--reconstruct lstsq``, refitted on the world's calibration
samples, as ``hipp compare --reconstruct lstsq`` deploys it) on two row sets of ``--data``: the
whole test split (the comparison's rows) and ``--select-limit`` rows a task of ``--select-split``
(default ``train``: rows neither the refit nor the test split uses). The selected plan maximizes
``w_rob * POPE + w_util * ScienceQA`` on the selection rows, each accuracy divided by the spread of
the candidates' (their standard deviation), so neither task's units dominate. Reported per query:
the mean plan's test scores, the candidates' test range, the selected plan's test scores and the
best test scores any candidate reached (an oracle no deployment has), how well the selection rows
predict the test rows, and whether the candidates trade POPE for ScienceQA (r over candidates).
Writes ``best_of_k.json``.

    OMP_NUM_THREADS=1 python benchmarks/best_of_k.py --data out/compare-v2/world --reconstruct lstsq \\
        --out out/best-of-k --samples 24
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablations import pinned_widths, test_setup, write_records

from hipp_torchprune.compare import pearson
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.policy_io import LoadedPolicy, load_policy, query
from hipp_torchprune.hipp.preferences import parse_preference
from hipp_torchprune.hipp.state import layer_states, static_features
from hipp_torchprune.pruning.plan import realized_sparsity
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS
from hipp_torchprune.rewards import PopeMarginReward, ScienceQAMarginReward

#: The two ends of ``hipp compare``'s Table-3 sweeps at ``w_comp`` 0.5 and 0 (docs/results.md).
PREFERENCES = "0.1,0.4,0.5;0.4,0.1,0.5;0.1,0.9,0;0.9,0.1,0"
DEMO_POLICY = Path(__file__).resolve().parents[1] / "hipp_torchprune" / "assets" / "demo-policy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", help="world no policy saw (required unless --table-only)")
    p.add_argument("--out", required=True, help="writes best_of_k.json and the calibration cache here")
    p.add_argument("--policy", default=str(DEMO_POLICY))
    p.add_argument("--preferences", default=PREFERENCES, help="queries 'a,b,c;...'")
    p.add_argument("--samples", type=int, default=24, help="sampled allocations per query (K)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select-split", default="train", help="split whose rows choose among the candidates")
    p.add_argument("--select-limit", type=int, default=256, help="selection rows per task")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="none")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--table-only", action="store_true", help="print the table of OUT/best_of_k.json, score nothing")
    args = p.parse_args(argv)
    if args.data is None and not args.table_only:
        raise SystemExit("--data is required (a world no policy saw)")
    if args.samples < 1 or args.select_limit < 1:
        raise SystemExit(f"--samples and --select-limit must be >= 1, got {args.samples}, {args.select_limit}")
    if args.select_split == "test":
        raise SystemExit("--select-split must not be the test split (it would select on the scored rows)")
    return args


def accuracy_objectives(processor: Any, data: str, split: str, limit: int | None) -> dict[str, Any]:
    """``{"rob": POPE-adversarial balanced accuracy, "util": ScienceQA accuracy}`` in percent, on
    ``limit`` rows a task of ``split`` (``None``: all)."""
    pope = PopeMarginReward(processor, data, split, limit)
    sqa = ScienceQAMarginReward(processor, data, split, limit)
    return {"rob": lambda m: 100 * float(pope.metrics(m)["balanced_accuracy"]),
            "util": lambda m: 100 * float(sqa.metrics(m)["accuracy"])}


def scored(env: PlanEnvironment, objectives: dict[str, Any], widths: tuple[int, ...]) -> list[float]:
    """``[POPE, ScienceQA]`` of ``widths`` under ``objectives`` (the environment's own restored after)."""
    own, env.objectives = env.objectives, objectives
    try:
        raw = env.score_widths([widths]).raw
    finally:
        env.objectives = own
    return [float(raw[0, 0]), float(raw[0, 1])]


def candidate_plans(loaded: LoadedPolicy, preference: tuple[float, ...], k: int, seed: int) -> list[tuple[float, ...]]:
    """The mean plan, then ``k`` plans with the mean budget and allocations drawn from the
    allocation head (seeded by ``seed``)."""
    cfg = loaded.policy.config
    states = layer_states(static_features(loaded.profile, loaded.state), torch.tensor(preference),
                          (cfg.rho_min, cfg.rho_max))  # (1, L, F)
    sizes = [w * p for w, p in zip(loaded.profile.widths, loaded.profile.row_params)]
    u, alpha = loaded.policy.mean_action(states)  # (1,), (1, L)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        draws = loaded.policy.distributions(states)[1].sample((k,))[:, 0]  # (k, L)
    return loaded.policy.plans((u.expand(k + 1), torch.cat([alpha, draws])), sizes)


def select(records: list[dict[str, Any]], preference: tuple[float, ...]) -> dict[str, Any]:
    """The candidate with the highest ``w_rob * POPE + w_util * ScienceQA`` on the selection rows,
    each accuracy divided by the candidates' standard deviation of it (1 where they all agree)."""
    spread = [statistics.pstdev(r["select"][i] for r in records) or 1.0 for i in (0, 1)]
    return max(records, key=lambda r: sum(preference[i] * r["select"][i] / spread[i] for i in (0, 1)))


def query_records(env: PlanEnvironment, selection: dict[str, Any], loaded: LoadedPolicy, text: str,
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per distinct candidate plan of one query (the mean plan first)."""
    answer = query(loaded, parse_preference(text))
    records: dict[tuple[int, ...], dict[str, Any]] = {}
    for index, plan in enumerate(candidate_plans(loaded, answer.preference, args.samples, args.seed)):
        widths = pinned_widths(env, plan, answer.realized_sparsity)
        if widths not in records:
            records[widths] = {"preference": list(answer.preference), "candidate": index, "widths": list(widths),
                               "sparsity": realized_sparsity(env.widths, widths, env.row_params),
                               "test": scored(env, env.objectives, widths), "select": scored(env, selection, widths)}
    return list(records.values())


def pearson_or_nan(xs: list[float], ys: list[float]) -> float:
    """:func:`~hipp_torchprune.compare.pearson` of ``xs`` and ``ys``, but NaN (not a number to read)
    with fewer than two points or either side constant."""
    if len(xs) < 2 or max(xs) == min(xs) or max(ys) == min(ys):
        return float("nan")
    return pearson(xs, ys)


def agreement(records: list[dict[str, Any]], task: int) -> float:
    """Pearson r between the candidates' selection-row and test scores of ``task`` (0 POPE, 1
    ScienceQA); NaN when either is constant. Near 0: the selection rows cannot tell the plans apart."""
    return pearson_or_nan([r["select"][task] for r in records], [r["test"][task] for r in records])


def tradeoff(records: list[dict[str, Any]]) -> float:
    """Pearson r between the candidates' test POPE and test ScienceQA: negative when the plans
    near the policy's trade one for the other (a preference has something to choose), positive
    when the better plans are better on both."""
    return pearson_or_nan([r["test"][0] for r in records], [r["test"][1] for r in records])


def render(records: list[dict[str, Any]]) -> str:
    """Markdown: per query, the mean plan, the candidates' test range, the selected plan, the oracle
    and how well the selection rows predict the test rows."""
    header = ("| preference | distinct plans | mean plan POPE / SQA | candidates' test POPE, SQA | "
              "selected POPE / SQA | best test POPE, best test SQA | r(selection, test) POPE, SQA | r(POPE, SQA) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys(tuple(r["preference"]) for r in records):
        group = [r for r in records if tuple(r["preference"]) == key]
        pope, sqa = ([r["test"][i] for r in group] for i in (0, 1))
        chosen = select(group, key)
        lines.append(f"| {', '.join(f'{w:.2f}' for w in key)} | {len(group)} | {group[0]['test'][0]:.1f} / "
                     f"{group[0]['test'][1]:.1f} | {min(pope):.1f}–{max(pope):.1f}, {min(sqa):.1f}–{max(sqa):.1f} | "
                     f"{chosen['test'][0]:.1f} / {chosen['test'][1]:.1f} | {max(pope):.1f}, {max(sqa):.1f} | "
                     f"{agreement(group, 0):+.2f}, {agreement(group, 1):+.2f} | {tradeoff(group):+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Score every query's candidates, print the table, write ``best_of_k.json``."""
    args = parse_args(argv)
    if args.table_only:
        print(render(json.loads(Path(args.out, "best_of_k.json").read_text())["records"]))
        return
    loaded = load_policy(args.policy)
    cfg = loaded.policy.config
    env, processor = test_setup(args.model, args.data, args.calib_n, Path(args.out) / "test-calibration",
                                round_to=loaded.round_to, r_max=cfg.r_max, budget=(cfg.rho_min, cfg.rho_max),
                                reconstruct=args.reconstruct)
    try:
        selection = accuracy_objectives(processor, args.data, args.select_split, args.select_limit)
        records = [r for text in args.preferences.split(";") for r in query_records(env, selection, loaded, text, args)]
    finally:
        env.close()
    print(render(records))
    write_records(Path(args.out, "best_of_k.json"), args, records, args.data)


if __name__ == "__main__":
    main()
