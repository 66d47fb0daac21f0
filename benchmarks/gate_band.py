"""Does the stability band fight the preference? Replays a ``hipp train`` run's episodes
(``phi`` and realized sparsity, from its ``checkpoint.pt``) under each band and reports how
the gate weights depend on sparsity.

A band that fights the preference down-weights plans for being light or sparse (what the
robustness, utility and compression preferences ask for), not for losing flow. For each band
(``pooled``/``budget`` x ``both``/``lower``), every episode is weighed against the band of
the whole history (no warm-up widening), and the script prints the mean weight in each tercile
of realized sparsity, the share of episodes weighted below 0.9, and the Spearman correlation of
weight with sparsity.

    python benchmarks/gate_band.py --run POLICY_DIR [--quantiles 0.05,0.95] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

from hipp_torchprune.hipp.gate import GateConfig, QuantileBand

BANDS: tuple[tuple[str, str], ...] = (("pooled", "both"), ("pooled", "lower"), ("budget", "both"), ("budget", "lower"))


def replay(phi: torch.Tensor, realized: torch.Tensor, binning: str, side: str,
           quantiles: tuple[float, float]) -> dict[str, object]:
    """Weights of every episode under one band, summarized by sparsity tercile."""
    band = QuantileBand(GateConfig(binning=binning, side=side, quantiles=quantiles, warmup=0))  # type: ignore[arg-type]
    band.update(phi, realized)
    weights = band.weights(phi.float(), realized)  # (N,)
    order = torch.argsort(realized)
    terciles = [weights[chunk].mean().item() for chunk in torch.tensor_split(order, 3)]
    rho = spearmanr(weights.numpy(), realized.numpy()).statistic if weights.std() > 0 else 0.0
    return {"band": f"{binning}/{side}", "mean_weight_by_sparsity_tercile": [round(t, 3) for t in terciles],
            "downweighted_share": round(float((weights < 0.9).float().mean()), 3),
            "spearman_weight_vs_sparsity": round(float(rho), 3)}


def main() -> None:
    """Parse arguments, load the run's episode history and print one row per band."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a hipp train output directory (its checkpoint.pt)")
    ap.add_argument("--quantiles", default="0.05,0.95")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    saved = torch.load(Path(args.run) / "checkpoint.pt", weights_only=False)["band"]
    phi = torch.tensor(saved["values"], dtype=torch.float64)
    realized = torch.tensor(saved.get("sparsity") or [float("nan")] * len(phi), dtype=torch.float64)
    if torch.isnan(realized).any():
        raise SystemExit(f"{args.run}: the checkpoint has no realized sparsity per episode (saved before the "
                         "binned band); retrain it to replay")
    lo, hi = (float(q) for q in args.quantiles.split(","))
    rows = [replay(phi, realized, b, s, (lo, hi)) for b, s in BANDS]
    if args.json:
        print(json.dumps({"episodes": len(phi), "rows": rows}))
        return
    print(f"{len(phi)} episodes of {args.run}\n")
    print("| band | mean weight, light / middle / sparse third | weighted < 0.9 | Spearman(weight, sparsity) |")
    print("|---|---|---|---|")
    for r in rows:
        t = r["mean_weight_by_sparsity_tercile"]
        print(f"| {r['band']} | {t[0]:.3f} / {t[1]:.3f} / {t[2]:.3f} | {r['downweighted_share']:.3f} | "
              f"{r['spearman_weight_vs_sparsity']:+.3f} |")


if __name__ == "__main__":
    main()
