"""Which reward statistic ranks plans as test accuracy does? The margin, the log-likelihood, the probability.

Builds the plan environment as ``hipp train`` does (same calibration, shared row score) and
collects allocations at the policy's operating points: the policy's plan at each ``--preference``,
then uniform's, each MLP-row method's and the single-layer-sensitivity allocation (water-filled
from the environment's robustness drops, ``pruning.allocators.sensitivity_ratios``) at that plan's
realized sparsity, rows by the environment's row score, so only the widths differ. Each
allocation is scored in mask mode on the calibration reward rows (``--reward-limit`` a task: the
mean gold margin, the paper's reward, the mean gold log-likelihood and the mean gold probability) and on the whole test
split (POPE-adversarial balanced accuracy, ScienceQA accuracy). Prints one row per allocation
and, per task, the Spearman correlation of each statistic with test accuracy over the pruned
allocations.

    python benchmarks/reward_ranking.py --data WORLD_DIR --out out/reward-ranking [--policy DIR] [--moves 32]

With ``--moves ROWS`` it also scores the first preference's plan with rows moved between every
ordered pair of layers: the neighbourhood a trained policy searches, where the statistics must
rank too (with ``--methods ''`` and one preference, that neighbourhood alone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_reward import allocations, build_setup, setup_parser
from scipy.stats import spearmanr

from hipp_torchprune.demo_job import PREFERENCES
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.grounding import single_layer_drops
from hipp_torchprune.methods import MethodContext
from hipp_torchprune.pruning.allocators import sensitivity_ratios
from hipp_torchprune.pruning.plan import realized_sparsity
from hipp_torchprune.rewards import PopeMarginReward, ScienceQAMarginReward

#: The reward statistics compared (keys of the reward tasks' metrics).
STATS: tuple[str, ...] = ("margin", "loglik", "prob")
#: The test-split metric of each objective.
TEST_METRIC: dict[str, str] = {"rob": "balanced_accuracy", "util": "accuracy"}


def rank_agreement(rows: list[dict[str, Any]], statistic: str, accuracy: str) -> float:
    """Spearman correlation over ``rows`` of ``row[statistic]`` with ``row[accuracy]`` (nan for < 3 rows)."""
    if len(rows) < 3:
        return float("nan")
    return float(spearmanr([r[statistic] for r in rows], [r[accuracy] for r in rows]).statistic)


def measure(env: PlanEnvironment, model: Any, name: str, widths: tuple[int, ...],
            tasks: dict[str, Any]) -> dict[str, Any]:
    """One allocation's row: sparsity, and each statistic of each reward task in ``tasks``."""
    env.masks.set_ranked(env.ranks, widths)
    try:
        metrics = {key: task.metrics(model) for key, task in tasks.items()}
    finally:
        env.masks.set_keep(None)
    row: dict[str, Any] = {"allocation": name, "widths": list(widths),
                           "sparsity": realized_sparsity(env.widths, widths, env.row_params)}
    for key, metric in TEST_METRIC.items():
        cal, test = metrics[f"cal_{key}"], metrics[f"test_{key}"]
        row |= {f"{key}_{stat}": float(cal[stat]) for stat in STATS}
        row[f"{key}_test"] = 100 * float(test[metric])
    return row


def named_widths(model: Any, env: PlanEnvironment, policy: Any, context: MethodContext, methods: list[str],
                 preferences: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Every allocation to score: per preference, :func:`plan_reward.allocations` and the
    sensitivity allocation at the policy plan's sparsity (duplicates dropped, dense first)."""
    drops = [float(d) for d in single_layer_drops(env)[:, 0]]
    sizes = [w * p for w, p in zip(env.widths, env.row_params)]
    out = [("dense", tuple(env.widths))]
    for pref in preferences:
        named = allocations(model, policy, context, PREFERENCES[pref], methods)
        sparsity = realized_sparsity(env.widths, named[0][1], env.row_params)
        named.append(("sensitivity", env.widths_for(sensitivity_ratios(drops, sizes, sparsity, env.r_max, 0.1))))
        out += [(f"{name} ({pref})" if name == "HiPP" else f"{name} @{sparsity:.3f}", w) for name, w in named]
    seen: set[str] = set()
    return [(n, w) for n, w in out if not (n in seen or seen.add(n))]


def moved_widths(widths: tuple[int, ...], rows: int, floor: int,
                 caps: tuple[int, ...] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The plan's neighbours at (about) its sparsity: for every ordered layer pair ``(src, dst)``,
    up to ``rows`` rows moved from ``src`` (keeping at least ``floor``) to ``dst`` (at most its
    dense width ``caps[dst]``; default ``max(widths)`` in every layer); pairs that can move
    nothing are skipped.

    Example: ``moved_widths((64, 128), 32, 8) == [("1->0 x32", (96, 96))]``: layer 1 is full, so
    nothing moves into it.
    """
    caps, out = caps or (max(widths),) * len(widths), []
    for src in range(len(widths)):
        for dst in range(len(widths)):
            n = min(rows, widths[src] - floor, caps[dst] - widths[dst]) if src != dst else 0
            if n > 0:
                moved = list(widths)
                moved[src], moved[dst] = moved[src] - n, moved[dst] + n
                out.append((f"{src}->{dst} x{n}", tuple(moved)))
    return out


def main() -> None:
    """Parse the flags, score every allocation, print the table and the rank agreement."""
    parser = setup_parser(__doc__, "world: calibration split for rewards, test split for accuracy",
                          "calibration cache and reward_ranking.json", "flap,owl,ecoflap")
    parser.add_argument("--preference", default="pope-heavy,scienceqa-heavy", help="names in demo_job.PREFERENCES")
    parser.add_argument("--moves", type=int, default=0,
                        help="also score the first preference's plan with up to this many rows moved between "
                             "every ordered layer pair (the neighbourhood the policy searches; 0: off)")
    args = parser.parse_args()
    setup = build_setup(args.model, args.policy, args.data, args.out, args.calib_n, args.reward_limit)
    objectives = setup.env.objectives
    tasks = {"cal_rob": objectives["rob"], "cal_util": objectives["util"],
             "test_rob": PopeMarginReward(setup.processor, args.data, "test", None),
             "test_util": ScienceQAMarginReward(setup.processor, args.data, "test", None)}
    try:
        named = named_widths(setup.model, setup.env, setup.policy, setup.context,
                             [m for m in args.methods.split(",") if m], args.preference.split(","))
        if args.moves:
            plan = next(w for n, w in named if n.startswith("HiPP"))
            named += [(f"HiPP {name}", w) for name, w in moved_widths(plan, args.moves, setup.policy.round_to, setup.env.widths)]
        rows = [measure(setup.env, setup.model, name, widths, tasks) for name, widths in named]
    finally:
        setup.env.close()
    print_table(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "reward_ranking.json").write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict[str, Any]]) -> None:
    """The markdown table, then the Spearman agreement of each statistic with test accuracy (pruned rows)."""
    print("| allocation | sparsity | POPE margin | POPE loglik | POPE prob | POPE-adv test "
          "| SQA margin | SQA loglik | SQA prob | SQA test |\n|" + "---|" * 10)
    for r in rows:
        cells = [f"{r[f'{key}_{stat}']:.{1 if stat == 'test' else 3}f}" for key in TEST_METRIC for stat in (*STATS, "test")]
        print(f"| {r['allocation']} | {r['sparsity']:.3f} | " + " | ".join(cells) + " |")
    pruned = [r for r in rows if r["sparsity"] > 0]
    moved = [r for r in pruned if "->" in r["allocation"]]
    for subset, chosen in (("all", pruned), ("moves", moved)):
        for key in TEST_METRIC:
            if subset == "moves" and not moved:
                continue
            agreement = {stat: rank_agreement(chosen, f"{key}_{stat}", f"{key}_test") for stat in STATS}
            print(json.dumps({"objective": key, "allocations": subset, "n_allocations": len(chosen),
                              **{f"spearman_{k}_vs_test": round(v, 3) for k, v in agreement.items()}}))


if __name__ == "__main__":
    main()
