"""Is HiPP's plan the best allocation under HiPP's own reward? Search failure or reward mismatch.

Builds the plan environment exactly as ``hipp train`` does (same calibration, shared row score,
reward rows of ``--reward-split``), then scores, at each preference, the policy's plan and each
MLP-row baseline's allocation at that plan's realized sparsity, and every ``--plan`` given as kept
widths, all with the environment's rows (so only the widths differ). If a baseline's widths earn more
reward than the policy's, the search is what falls short; if the policy's earn the most and it still loses on the test split, the
reward does not measure what the test does.

Prints one row per (preference, allocation), the dense model last: realized sparsity, robustness and
utility returns (the ``--reward-stat`` statistic on the reward rows), the same rows' accuracies
(POPE balanced accuracy, ScienceQA accuracy), the SynFlow change phi, and the preference's trade-off
``(w_rob * rob + w_util * util) / (w_rob + w_util)``.

    python benchmarks/plan_reward.py --data WORLD_DIR --out out/plan-reward [--policy DIR] \
        [--methods flap,owl,llm-pruner,wanda] [--preferences "0.1,0.9,0;0.9,0.1,0"] [--reconstruct lstsq [--refit-split S]] \
        [--plan 96,128,48,120,56,48,88,48 ...]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations import parse_widths

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.demo_job import DEMO_POLICY_DIR, PREFERENCES
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.objectives import DEFAULT_STATISTICS, default_objectives, statistic_pair
from hipp_torchprune.hipp.policy_io import load_policy
from hipp_torchprune.hipp.preferences import parse_preference
from hipp_torchprune.hipp.run import calibrated_profile, refit_split, reward_grams
from hipp_torchprune.loading import load_model
from hipp_torchprune.methods import MethodContext, MethodError
from hipp_torchprune.registry import default_registry


def trade_off(rob: float, util: float, preference: tuple[float, float, float]) -> float:
    """The preference's own trade-off of two returns, ``(w_rob * rob + w_util * util) / (w_rob + w_util)``."""
    w_rob, w_util, _ = preference
    return (w_rob * rob + w_util * util) / (w_rob + w_util)


def allocations(model: Any, policy: Any, context: MethodContext, preference: tuple[float, float, float],
                methods: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, kept widths)``: the policy's plan at ``preference``, then uniform's and each MLP-row
    method's at its realized sparsity (others, such as SliceGPT, have no MLP widths: refused)."""
    plan = api.make_plan(model, "hipp", round_to=context.round_to, r_max=context.r_max, policy=policy,
                         preference=preference)
    out = [("HiPP", tuple(plan.widths_after))]
    uniform = api.make_plan(model, "uniform", plan.realized_sparsity, round_to=context.round_to, r_max=context.r_max)
    out.append(("uniform", tuple(uniform.widths_after)))
    registry = context.registry or default_registry()
    for name in methods:
        method = registry.get("method", name)()
        if method.kind != "mlp-rows":
            raise MethodError(f"{name} is a {method.kind} method: it has no MLP widths to score")
        out.append((name, tuple(method.plan(model, plan.realized_sparsity, context).widths_after)))
    return out


@dataclass
class Setup:
    """What every plan-scoring benchmark shares: the model, the policy, the baselines' method
    context and the plan environment built as ``hipp train`` builds it (close ``env`` after use)."""

    model: Any
    processor: Any
    policy: Any
    context: MethodContext
    env: PlanEnvironment


def reward_accuracies(env: PlanEnvironment, widths: tuple[int, ...]) -> tuple[float, float]:
    """POPE balanced accuracy and ScienceQA accuracy (in %) of ``widths`` on the environment's
    reward rows (its objectives are :class:`~hipp_torchprune.rewards.MarginReward` tasks)."""
    with env.applied(widths) as model:
        rob, util = env.objectives["rob"].metrics(model), env.objectives["util"].metrics(model)
    return 100 * float(rob["balanced_accuracy"]), 100 * float(util["accuracy"])


def parse_preferences(text: str | None) -> dict[str, tuple[float, float, float]]:
    """``"a,b,c;d,e,f"`` as named preferences (the demo's three when ``None``)."""
    if text is None:
        return dict(PREFERENCES)
    prefs = [parse_preference(part) for part in text.split(";") if part]
    return {"({})".format(", ".join(f"{w:g}" for w in p)): p for p in prefs}


def build_setup(model_spec: str, policy_dir: str, data: str, out: str, calib_n: int, reward_limit: int,
                reward_split: str = "calibration", statistic: str | tuple[str, str] = DEFAULT_STATISTICS,
                refit_on: str | None = None) -> Setup:
    """Load the model and policy, calibrate on ``data`` (cache under ``out``) and build the environment
    whose rewards read ``reward_limit`` rows a task of ``reward_split``, returning ``statistic``; with
    ``refit_on`` (a split of ``data``) every plan is scored with the least-squares refit fitted on
    the first ``calib_n`` samples of that split, as ``hipp train --reconstruct lstsq`` scores it."""
    registry = default_registry()
    model, processor = load_model(model_spec)
    policy = load_policy(policy_dir)
    cfg = policy.policy.config
    profile, scores = calibrated_profile(model, processor, data, calib_n, Path(out) / "calibration", registry=registry)
    samples = calibration_samples(data, calib_n)
    stats = api.calibrate(model, processor, samples, with_grads=True, registry=registry)
    context = MethodContext(processor, samples, stats, round_to=policy.round_to, r_max=cfg.r_max, registry=registry)
    objectives = default_objectives(processor, data, reward_split, reward_limit, registry=registry, statistic=statistic)
    grams = None if refit_on is None else reward_grams(model, processor, data, calib_n, registry=registry,
                                                        split=refit_on)
    env = PlanEnvironment(model, api.get_adapter(model, registry), scores, objectives, round_to=policy.round_to,
                          r_max=cfg.r_max, compression_range=(cfg.rho_min, cfg.rho_max), row_params=profile.row_params,
                          grams=grams)
    return Setup(model, processor, policy, context, env)


def setup_parser(doc: str, data_help: str, out_help: str, methods: str) -> argparse.ArgumentParser:
    """The flags :func:`build_setup` needs (``--model --policy --data --out --methods --calib-n
    --reward-limit``), for this script and the ones that reuse its set-up."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--policy", default=str(DEMO_POLICY_DIR))
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--methods", default=methods)
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--reward-limit", type=int, default=128)
    return parser


def main() -> None:
    """Parse the flags, build the environment, print the table (and ``--out``/plan_reward.json)."""
    parser = setup_parser(__doc__, "the world whose calibration split the rewards read",
                          "calibration cache and plan_reward.json", "flap,owl,llm-pruner,wanda")
    parser.add_argument("--reward-split", default="calibration")
    parser.add_argument("--reward-stat", default="loglik",
                        help="the rewards' statistics of the gold margins, ROB[,UTIL] (as hipp train --reward-stat)")
    parser.add_argument("--preferences", default=None, help="W_ROB,W_UTIL,W_COMP;... (default: the demo's three)")
    parser.add_argument("--reconstruct", choices=("none", "lstsq"), default="none",
                        help="score every plan with the least-squares refit (as hipp train --reconstruct lstsq)")
    parser.add_argument("--plan", type=parse_widths, action="append", default=[],
                        help="kept widths (one per layer) scored beside the allocations at every preference; repeat")
    parser.add_argument("--refit-split", default=None,
                        help="split the refit is fitted on (default: hipp train's, never the reward split)")
    args = parser.parse_args()
    refit_on = None if args.reconstruct == "none" else (args.refit_split or refit_split(args.reward_split))
    preferences = parse_preferences(args.preferences)
    setup = build_setup(args.model, args.policy, args.data, args.out, args.calib_n, args.reward_limit,
                        args.reward_split, statistic_pair(args.reward_stat), refit_on)
    rows = []
    try:
        print("| preference | allocation | sparsity | rob | util | POPE bal. acc | SQA acc | phi | trade-off |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for pref_name, pref in preferences.items():
            named = allocations(setup.model, setup.policy, setup.context, pref,
                                [m for m in args.methods.split(",") if m])
            named += [("given " + ",".join(map(str, w)), w) for w in args.plan]
            named.append(("dense", setup.env.widths))
            outcome = setup.env.score_widths([w for _, w in named])
            for (name, widths), raw, phi, realized in zip(named, outcome.raw, outcome.phi, outcome.realized):
                rob_acc, util_acc = reward_accuracies(setup.env, widths)
                row = {"preference": pref_name, "allocation": name, "widths": list(widths), "sparsity": float(realized),
                       "rob": float(raw[0]), "util": float(raw[1]), "rob_acc": rob_acc, "util_acc": util_acc,
                       "phi": float(phi), "trade_off": trade_off(float(raw[0]), float(raw[1]), pref)}
                rows.append(row)
                print(f"| {pref_name} | {name} | {row['sparsity']:.3f} | {row['rob']:.4f} | {row['util']:.4f} | "
                      f"{rob_acc:.1f} | {util_acc:.1f} | {row['phi']:.2f} | {row['trade_off']:.4f} |", flush=True)
    finally:
        setup.env.close()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "plan_reward.json").write_text(json.dumps(rows, indent=1))

if __name__ == "__main__":
    main()
