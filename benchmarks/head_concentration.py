"""Where does a policy's allocation head still explore? Its Dirichlet concentration per layer.

For each ``--preferences`` query, the hierarchical policy's allocation head gives a Dirichlet over the
layers' shares of the pruned rows. Prints, per layer, the concentration ``alpha_l`` and the 99th
percentile of that layer's share over ``--samples`` seeded draws. A layer whose ``alpha_l`` has fallen
far below 1 is never given a share in sampling either, so training can no longer discover plans that
prune it: the head has stopped exploring there. Writes ``concentration.json``.

    python benchmarks/head_concentration.py --policy hipp_torchprune/assets/demo-policy --out out/conc \\
        --preferences "0.1,0.6,0.3;0.7,0,0.3"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from hipp_torchprune.atomic import write_text_atomic
from hipp_torchprune.demo_job import DEMO_POLICY_DIR
from hipp_torchprune.hipp.policy_io import LoadedPolicy, load_policy
from hipp_torchprune.hipp.preferences import parse_preference
from hipp_torchprune.hipp.state import layer_states, static_features


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=str(DEMO_POLICY_DIR))
    p.add_argument("--out", required=True, help="writes concentration.json here")
    p.add_argument("--preferences", default="0.1,0.6,0.3;0.6,0.1,0.3;0.7,0,0.3;1,0,0", help="queries 'a,b,c;...'")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def share_quantile(concentration: torch.Tensor, samples: int, seed: int, q: float = 0.99) -> list[float]:
    """Per layer, the ``q`` quantile of its share over ``samples`` Dirichlet draws (seeded)."""
    torch.manual_seed(seed)
    draws = torch.distributions.Dirichlet(concentration.double()).sample((samples,))  # (S, L)
    return [float(x) for x in draws.quantile(q, dim=0)]


def head_record(loaded: LoadedPolicy, preference: tuple[float, float, float], samples: int,
                seed: int) -> dict[str, Any]:
    """One query's concentration per layer, its mean shares and its 99th-percentile shares."""
    cfg = loaded.policy.config
    states = layer_states(static_features(loaded.profile, loaded.state), torch.tensor(preference),
                          (cfg.rho_min, cfg.rho_max))
    with torch.no_grad():
        _, allocation = loaded.policy.distributions(states)
    alpha = allocation.concentration[0]
    return {"preference": list(preference), "concentration": [float(a) for a in alpha],
            "mean_share": [float(a) for a in alpha / alpha.sum()], "p99_share": share_quantile(alpha, samples, seed)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Print one line per query and write ``concentration.json``."""
    args = parse_args(argv)
    loaded = load_policy(args.policy)
    if not hasattr(loaded.policy, "distributions"):
        raise SystemExit(f"{args.policy}: a flat policy has no allocation head (one Beta per layer)")
    records = [head_record(loaded, parse_preference(part), args.samples, args.seed)
               for part in args.preferences.split(";") if part]
    for r in records:
        print(f"{tuple(r['preference'])}: alpha " + " ".join(f"{a:.1f}" for a in r["concentration"])
              + " | p99 share " + " ".join(f"{s:.3f}" for s in r["p99_share"]))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(args.out, "concentration.json"), json.dumps({"policy": args.policy, "records": records},
                                                                      indent=1))
    return records


if __name__ == "__main__":
    main()
