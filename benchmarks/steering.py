"""Steering before recovery: each policy's preference sweeps, scored on a world's test split.

For every policy (``--policy NAME=DIR``, repeatable) and every sweep (preferences at one ``w_comp``,
as ``hipp compare``'s Table 3), the queried widths are scored in mask mode on the whole test split
of ``--data`` (a world no policy saw): POPE-adversarial balanced accuracy and ScienceQA accuracy,
rows by the shared row score calibrated on its calibration split and, with ``--reconstruct lstsq``,
each plan refitted on those calibration rows (what ``hipp compare --reconstruct lstsq`` prunes).
Prints each sweep's widths, realized sparsity and accuracies, with r(w_rob, POPE-adversarial) and
r(w_util, ScienceQA) (``hipp compare``'s Pearson); writes ``steering.json``. A screen: no recovery,
one deterministic score per plan, minutes where a comparison takes hours. With ``--sparsity S``
every plan's ratios are scaled to remove ``S`` (``ablations.pinned_widths``), to read plans at a
sparsity of one's choosing. With ``--ends`` each sweep also gets the paired bootstrap 95 % interval
of its last preference (the POPE end) minus its first (the ScienceQA end) on the same test rows,
POPE-adversarial balanced accuracy and ScienceQA accuracy: whether the sweep moves each metric by more
than the test split can resolve.

    OMP_NUM_THREADS=1 python benchmarks/steering.py --data out/compare-v2/world --reconstruct lstsq \\
        --out out/steering --policy shipped=hipp_torchprune/assets/demo-policy --policy r1=out/pol-r1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from ablations import pinned_widths, test_setup, write_records

from hipp_torchprune.bootstrap import paired_bootstrap
from hipp_torchprune.compare import BOOTSTRAP_TASKS, bootstrap_strata, pearson
from hipp_torchprune.evaluation import PreparedEval, evaluate, prepare_eval
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.policy_io import load_policy, query
from hipp_torchprune.hipp.preferences import parse_preference
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS

#: ``hipp compare``'s Table-3 sweeps of docs/results.md: ``w_comp`` 0 (28.1 %) and 0.5 (46.9 %).
SWEEPS: tuple[str, ...] = ("0.1,0.9,0.0;0.3,0.7,0.0;0.5,0.5,0.0;0.7,0.3,0.0;0.9,0.1,0.0",
                           "0.1,0.4,0.5;0.2,0.3,0.5;0.25,0.25,0.5;0.3,0.2,0.5;0.4,0.1,0.5")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="world no policy saw: its test split scores the plans")
    p.add_argument("--out", required=True, help="writes steering.json and the calibration cache here")
    p.add_argument("--policy", action="append", required=True, metavar="NAME=DIR", help="repeatable")
    p.add_argument("--sweep", action="append", default=None, metavar="'a,b,c;...'",
                   help="one sweep of preferences (repeatable; default: the two Table-3 sweeps)")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="none")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--device", default="cpu", help="where the plans are scored (cpu, cuda)")
    p.add_argument("--ends", action="store_true",
                   help="paired bootstrap interval of each sweep's POPE end minus its ScienceQA end")
    p.add_argument("--sparsity", type=float, default=None,
                   help="pin every plan to this MLP sparsity (default: each plan's own)")
    return p.parse_args(argv)


def sweep_records(env: PlanEnvironment, name: str, policy_dir: str, sweep: str,
                  sparsity: float | None = None) -> list[dict[str, Any]]:
    """One record per preference of ``sweep``: the policy's widths (pinned to ``sparsity`` when
    given) and their test accuracies."""
    policy, records = load_policy(policy_dir), []
    for text in sweep.split(";"):
        answer = query(policy, parse_preference(text))
        widths = answer.widths if sparsity is None else pinned_widths(env, answer.plan, sparsity)
        outcome = env.score_widths([widths])
        records.append({"policy": name, "sweep": sweep, "preference": list(answer.preference),
                        "widths": list(widths), "sparsity": float(outcome.realized[0]),
                        "pope_adv": float(outcome.raw[0, 0]), "sqa": float(outcome.raw[0, 1])})
    return records


def end_contrast(env: PlanEnvironment, processor: Any, prepared: PreparedEval,
                 group: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per bootstrapped task (compare's names), ``[difference, low, high]`` in points of the sweep's last
    plan minus its first on the same test rows (paired bootstrap, POPE stratified by gold answer)."""
    rows = []
    for record in (group[-1], group[0]):
        with env.applied(tuple(record["widths"])) as model:
            rows.append(evaluate(model, processor, prepared, per_row=True))
    strata, out = bootstrap_strata(prepared), {}
    for task, key in BOOTSTRAP_TASKS.items():
        a, b = (np.array([int(c) for c in r[task]["correct"]]) for r in rows)
        interval = paired_bootstrap(a, b, np.array(list(strata[task])))
        out[key] = [100 * interval.difference, 100 * interval.low, 100 * interval.high]
    return out


def render(records: list[dict[str, Any]]) -> str:
    """Markdown: per (policy, sweep) a table of its plans and the two steering correlations."""
    lines: list[str] = []
    for key in dict.fromkeys((r["policy"], r["sweep"]) for r in records):
        group = [r for r in records if (r["policy"], r["sweep"]) == key]
        r_rob = pearson([r["preference"][0] for r in group], [r["pope_adv"] for r in group])
        r_util = pearson([r["preference"][1] for r in group], [r["sqa"] for r in group])
        title = (f"### {key[0]}, w_comp {group[0]['preference'][2]:.2f}: r(w_rob, POPE-adv) {r_rob:+.2f}, "
                 f"r(w_util, SQA) {r_util:+.2f}")
        lines += [title, "",
                  "| preference | kept widths | sparsity % | POPE-adv BalAcc | ScienceQA acc |", "|---|---|---|---|---|"]
        lines += [f"| {', '.join(f'{w:.2f}' for w in r['preference'])} | {', '.join(map(str, r['widths']))} | "
                  f"{100 * r['sparsity']:.1f} | {r['pope_adv']:.1f} | {r['sqa']:.1f} |" for r in group]
        if "ends" in group[-1]:
            lines += ["", "POPE end minus ScienceQA end (paired bootstrap 95 %): " + ", ".join(
                f"{k} {d:+.1f} [{lo:+.1f}, {hi:+.1f}]" for k, (d, lo, hi) in group[-1]["ends"].items())]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Score every policy's sweeps, print the tables, write ``steering.json``."""
    args = parse_args(argv)
    policies = [item.partition("=")[::2] for item in args.policy]
    if not all(name and directory for name, directory in policies):
        raise SystemExit(f"--policy takes NAME=DIR, got {args.policy}")
    first = load_policy(policies[0][1])
    if args.sparsity is not None and not 0 < args.sparsity < first.policy.config.r_max:
        raise SystemExit(f"--sparsity must lie in (0, r_max={first.policy.config.r_max}), got {args.sparsity}")
    env, processor = test_setup(args.model, args.data, args.calib_n, Path(args.out) / "test-calibration",
                                round_to=first.round_to, r_max=first.policy.config.r_max,
                                budget=(first.policy.config.rho_min, first.policy.config.rho_max),
                                reconstruct=args.reconstruct, device=args.device)
    prepared = prepare_eval(processor, args.data, tuple(BOOTSTRAP_TASKS)) if args.ends else None
    try:
        records = []
        for name, directory in policies:
            for sweep in args.sweep or SWEEPS:
                group = sweep_records(env, name, directory, sweep, args.sparsity)
                if prepared is not None:
                    group[-1]["ends"] = end_contrast(env, processor, prepared, group)
                records += group
    finally:
        env.close()
    print(render(records))
    write_records(Path(args.out, "steering.json"), args, records, args.data)


if __name__ == "__main__":
    main()
