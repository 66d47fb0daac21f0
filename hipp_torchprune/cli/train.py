"""``hipp train``: plan-level GRPO training of a HiPP policy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hipp_torchprune.loading import add_dtype_argument
from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS


def _budget(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split(","))
    return lo, hi


def _statistics(text: str) -> tuple[str, str]:
    """``ROB[,UTIL]`` reward statistics (:func:`~hipp_torchprune.hipp.objectives.statistic_pair`)."""
    from hipp_torchprune.errors import DataError
    from hipp_torchprune.hipp.objectives import statistic_pair

    try:
        return statistic_pair(text)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS

    p = subparsers.add_parser("train", help="train a preference-conditioned pruning policy")
    p.add_argument("--model", required=True, help="checkpoint dir, 'demo', or a tiny model name")
    p.add_argument("--data", required=True, help="data dir (calibration split for statistics and rewards)")
    p.add_argument("--out", required=True, help="policy directory (checkpoints and TensorBoard logs too)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--group", type=int, default=6, help="plans per preference (GRPO group)")
    p.add_argument("--prefs", type=int, default=2, help="preferences per update")
    p.add_argument("--budget", type=_budget, default=(0.2, 0.4), help="target sparsity interval LO,HI")
    p.add_argument("--sampler", choices=("mixed", "anchors", "dirichlet"), default="mixed")
    p.add_argument("--round-to", type=int, default=64)
    p.add_argument("--r-max", type=float, default=0.8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="cap on each calibration image's pixel count (Qwen2.5-VL resizes to fit; default 1280*28*28)")
    p.add_argument("--calibration", default=None, help="calibration cache from hipp calibrate --cache (default OUT/calibration)")
    p.add_argument("--reward-limit", type=int, default=128, help="examples per objective per plan")
    p.add_argument("--reward-stat", type=_statistics, default=("loglik", "loglik"), metavar="ROB[,UTIL]",
                   help="reward statistics of the gold margins, 'loglik' (mean gold log-probability among the "
                        "options), 'prob' (mean gold probability among them) or 'margin' (the paper's mean "
                        "margin): one for both objectives or ROB,UTIL (default loglik for both)")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="none",
                   help="score every plan with the least-squares refit of its pruned down_proj layers in place "
                        "(lstsq, as hipp prune/compare --reconstruct lstsq deploy it) or as masked rows alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gate", action="store_true", help="ablation: no SynFlow stability gate (every weight 1)")
    p.add_argument("--gate-band", choices=("budget", "pooled"), default="budget",
                   help="stability band per realized-sparsity bin, or pooled over all plans (the paper's)")
    p.add_argument("--gate-side", choices=("lower", "both"), default="lower",
                   help="penalize phi below the band only, or on both sides (the paper's)")
    p.add_argument("--no-visual-sensitivity", action="store_true",
                   help="ablation: leave visual sensitivity out of the policy's per-layer state")
    p.add_argument("--flat-policy", action="store_true",
                   help="ablation: one Beta per layer and no budget head instead of the hierarchical policy")
    p.add_argument("--budget-input", choices=("backbone", "compression"), default="backbone",
                   help="what the budget head reads: the pooled backbone with every preference weight (the "
                        "paper's), or only w_comp and the budget interval")
    p.add_argument("--head-balance", choices=("per_head", "joint"), default="per_head",
                   help="clip the budget and allocation heads' gradients each, or jointly (the paper's)")
    p.add_argument("--objective-cap", choices=("none", "dense", "robustness"), default="none",
                   help="use the robustness and utility returns raw (the paper's), cap both at the dense "
                        "model's (no reward for beating it on the reward rows), or cap robustness alone")
    p.add_argument("--device", default="cpu",
                   help="where plans are scored: cpu (default; the same seed gives the same policy) or cuda")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the final log record as JSON")
    p.add_argument("--config", default=None,
                   help="YAML of TrainConfig fields (nested policy:/gate:); replaces the training flags above")
    add_dtype_argument(p)
    p.set_defaults(func=run)


def _distributed_state() -> Any:
    """An ``accelerate`` state when launched on several processes (``accelerate launch`` /
    ``torchrun`` set ``WORLD_SIZE``); ``None`` for a plain single-process run."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp train``."""
    from hipp_torchprune.hipp.gate import GateConfig
    from hipp_torchprune.hipp.policy import PolicyConfig
    from hipp_torchprune.hipp.run import train_from_data
    from hipp_torchprune.hipp.state import StateConfig
    from hipp_torchprune.hipp.trainer import TrainConfig
    from hipp_torchprune.pruning.plan import PlanError

    lo, hi = args.budget
    if not 0 <= lo <= hi < args.r_max:
        raise PlanError(f"--budget {lo},{hi} must satisfy 0 <= LO <= HI < r_max={args.r_max}")
    gate = GateConfig(enabled=not args.no_gate, binning=args.gate_band, side=args.gate_side)
    config = TrainConfig(steps=args.steps, prefs_per_step=args.prefs, group=args.group, lr=args.lr,
                         sampler=args.sampler, seed=args.seed, head_balance=args.head_balance, gate=gate,
                         objective_cap=args.objective_cap,
                         state=StateConfig(visual_sensitivity=not args.no_visual_sensitivity),
                         policy_kind="flat" if args.flat_policy else "hierarchical",
                         policy=PolicyConfig(rho_min=lo, rho_max=hi, r_max=args.r_max,
                                             budget_input=args.budget_input))
    if args.config:
        from hipp_torchprune.config import load_yaml

        config = load_yaml(TrainConfig, args.config)
    state = _distributed_state()
    result = train_from_data(args.model, args.data, args.out, config, round_to=args.round_to, calib_n=args.calib_n,
                             max_pixels=args.max_pixels,
                             reward_limit=args.reward_limit, reward_statistic=args.reward_stat,
                             calibration=args.calibration, reconstruct=args.reconstruct,
                             resume=not args.no_resume, state=state, dtype=args.dtype, device=args.device,
                             progress=not args.no_progress)
    if state is not None and not state.is_main_process:
        return 0
    last = result["history"][-1] if result["history"] else {}
    print(json.dumps(last) if args.json else f"policy saved to {args.out}; last step: {last}")
    return 0
