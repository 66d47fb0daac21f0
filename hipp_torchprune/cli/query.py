"""``hipp query``: a trained policy's plan for a preference, without loading any model."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``query`` subcommand."""
    p = subparsers.add_parser("query", help="query a trained policy for a preference's plan")
    p.add_argument("--policy", required=True, help="policy directory from hipp train")
    p.add_argument("--preference", required=True, help="w_rob,w_util,w_comp (normalized for you)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp query``."""
    from hipp_torchprune.hipp.policy_io import load_policy, query, trained_refit
    from hipp_torchprune.hipp.preferences import parse_preference

    loaded = load_policy(args.policy)
    result = query(loaded, parse_preference(args.preference))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print("preference (rob, util, comp): " + ", ".join(f"{w:.3f}" for w in result.preference))
    print(f"{'layer':>5} {'ratio':>7} {'kept':>6}")
    for i, (r, w) in enumerate(zip(result.plan, result.widths)):
        print(f"{i:>5} {r:>7.3f} {w:>6}")
    print(f"realized MLP sparsity: {result.realized_sparsity:.4f}")
    if trained_refit(loaded) != "none":
        print("trained with the least-squares refit in its reward: prune with --reconstruct lstsq "
              "(hipp prune --method hipp adopts it)")
    return 0
