"""Is HiPP's plan the best allocation under HiPP's own reward? Search failure or reward mismatch.

Builds the plan environment exactly as ``hipp train`` does (same calibration, shared row score,
reward rows of ``--reward-split``), then scores, at each preference, the policy's plan and each
MLP-row baseline's allocation at that plan's realized sparsity, all with the environment's rows
(so only the widths differ). If a baseline's widths earn more reward than the policy's, the search
is what falls short; if the policy's earn the most and it still loses on the test split, the
reward does not measure what the test does.

Prints one row per (preference, allocation): realized sparsity, robustness and utility returns
(the ``--reward-stat`` statistic on the reward rows), the SynFlow change phi, and the preference's trade-off
``(w_rob * rob + w_util * util) / (w_rob + w_util)``.

    python benchmarks/plan_reward.py --data WORLD_DIR --out out/plan-reward [--policy DIR] \
        [--methods flap,owl,llm-pruner,wanda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.demo_job import DEMO_POLICY_DIR, PREFERENCES
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.objectives import default_objectives
from hipp_torchprune.hipp.policy_io import load_policy
from hipp_torchprune.hipp.run import calibrated_profile
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


def main() -> None:
    """Parse the flags, build the environment, print the table (and ``--out``/plan_reward.json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--policy", default=str(DEMO_POLICY_DIR))
    parser.add_argument("--data", required=True, help="the world whose calibration split the rewards read")
    parser.add_argument("--out", required=True, help="calibration cache and plan_reward.json")
    parser.add_argument("--methods", default="flap,owl,llm-pruner,wanda")
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--reward-limit", type=int, default=128)
    parser.add_argument("--reward-split", default="calibration")
    parser.add_argument("--reward-stat", choices=("loglik", "margin"), default="loglik",
                        help="the rewards' statistic of the gold margins (as hipp train --reward-stat)")
    args = parser.parse_args()
    registry = default_registry()
    model, processor = load_model(args.model)
    policy = load_policy(args.policy)
    cfg = policy.policy.config
    profile, scores = calibrated_profile(model, processor, args.data, args.calib_n, Path(args.out) / "calibration",
                                         registry=registry)
    samples = calibration_samples(args.data, args.calib_n)
    stats = api.calibrate(model, processor, samples, with_grads=True, registry=registry)
    context = MethodContext(processor, samples, stats, round_to=policy.round_to, r_max=cfg.r_max, registry=registry)
    objectives = default_objectives(processor, args.data, args.reward_split, args.reward_limit, registry=registry,
                                    statistic=args.reward_stat)
    env = PlanEnvironment(model, api.get_adapter(model, registry), scores, objectives, round_to=policy.round_to,
                          r_max=cfg.r_max, compression_range=(cfg.rho_min, cfg.rho_max), row_params=profile.row_params)
    rows = []
    try:
        print("| preference | allocation | sparsity | rob | util | phi | trade-off |\n|---|---|---|---|---|---|---|")
        for pref_name, pref in PREFERENCES.items():
            named = allocations(model, policy, context, pref, [m for m in args.methods.split(",") if m])
            outcome = env.score_widths([w for _, w in named])
            for (name, widths), raw, phi, realized in zip(named, outcome.raw, outcome.phi, outcome.realized):
                row = {"preference": pref_name, "allocation": name, "widths": list(widths), "sparsity": float(realized),
                       "rob": float(raw[0]), "util": float(raw[1]), "phi": float(phi),
                       "trade_off": trade_off(float(raw[0]), float(raw[1]), pref)}
                rows.append(row)
                print(f"| {pref_name} | {name} | {row['sparsity']:.3f} | {row['rob']:.4f} | {row['util']:.4f} | "
                      f"{row['phi']:.2f} | {row['trade_off']:.4f} |")
    finally:
        env.close()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "plan_reward.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
