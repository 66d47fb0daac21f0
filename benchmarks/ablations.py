"""Which parts of HiPP earn their place: Table 5 over policy seeds, at one pinned sparsity.

Trains one policy per (ablation row, seed) on ``--data``'s calibration split, every row with the
same training budget (``--steps``, ``--group``, ``--prefs``, ``--reward-limit``) and the same recipe
flags (budget interval, ``r_max``, rounding, budget input), each row changing one part
(:data:`ROWS`). Each policy is then queried at ``--preference``, its plan is pinned to
``--sparsity`` (its ratios scaled by one factor, water-filled under ``r_max``:
:func:`pinned_widths`), so rows differ only in where the rows go, and scored in mask mode, before
recovery, on the whole test split of ``--test-data`` (a world no policy saw): POPE-adversarial
balanced accuracy and ScienceQA accuracy, rows by the shared row score calibrated on that world.
Prints mean ± std over the seeds per row, with the sparsity each budget head chose before
pinning, and writes ``ablations.json``. Resumable: a finished policy directory is reused, an
interrupted one resumes from its checkpoint; processes may run side by side over the same rows
(each policy directory is claimed with a ``flock`` while it trains, so no two train the same
policy), and a last run over all of them only evaluates.

    python benchmarks/ablations.py --data POLICY_WORLD --test-data TEST_WORLD --out out/ablations \
        --seeds 0,1,2,3,4 --steps 200 --sparsity 0.281 [--rows full,no-gate,flat,no-vs,anchors,dirichlet,no-cap,dense-cap]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hipp_torchprune import api
from hipp_torchprune.atomic import write_text_atomic
from hipp_torchprune.compare import fmt_pm
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.gate import GateConfig
from hipp_torchprune.hipp.policy import PolicyConfig
from hipp_torchprune.hipp.policy_io import load_policy, query
from hipp_torchprune.hipp.run import calibrated_profile, reward_grams, train_from_data
from hipp_torchprune.hipp.state import StateConfig
from hipp_torchprune.hipp.trainer import TrainConfig
from hipp_torchprune.loading import load_model
from hipp_torchprune.provenance import world_fingerprint
from hipp_torchprune.pruning.plan import waterfill
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS
from hipp_torchprune.rewards import PopeMarginReward, ScienceQAMarginReward

#: Each row's change to the full method's :class:`TrainConfig` (``"margin"`` changes the rewards).
ROWS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "full": lambda c: c,
    "no-gate": lambda c: dataclasses.replace(c, gate=dataclasses.replace(c.gate, enabled=False)),
    "paper-gate": lambda c: dataclasses.replace(c, gate=dataclasses.replace(c.gate, binning="pooled", side="both")),
    "flat": lambda c: dataclasses.replace(c, policy_kind="flat",
                                          policy=dataclasses.replace(c.policy, budget_input="backbone")),
    "no-vs": lambda c: dataclasses.replace(c, state=dataclasses.replace(c.state, visual_sensitivity=False)),
    "anchors": lambda c: dataclasses.replace(c, sampler="anchors"),
    "dirichlet": lambda c: dataclasses.replace(c, sampler="dirichlet"),
    "margin": lambda c: c,
    "no-cap": lambda c: dataclasses.replace(c, objective_cap="none"),
    "dense-cap": lambda c: dataclasses.replace(c, objective_cap="dense"),
    "robustness-cap": lambda c: dataclasses.replace(c, objective_cap="robustness"),
}


def row_config(row: str, base: TrainConfig, seed: int) -> TrainConfig:
    """``base`` with ``row``'s part changed, at ``seed``."""
    return dataclasses.replace(ROWS[row](base), seed=seed)


def parse_widths(text: str) -> tuple[int, ...]:
    """``"96,128,64"`` as kept widths, one per layer (an argparse type: bad text exits with a message).

    Example: ``parse_widths("8,16") == (8, 16)``."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: give kept widths as comma-separated integers") from err


def pinned_widths(env: PlanEnvironment, ratios: tuple[float, ...], sparsity: float | None) -> tuple[int, ...]:
    """Kept widths of a plan with its ratios scaled by one factor until the plan removes
    ``sparsity`` (water-filled under the environment's ``r_max``), rounded as the environment
    rounds; ``None`` keeps the plan's own sparsity."""
    if sparsity is None:
        return env.widths_for(ratios)
    sizes = [w * p for w, p in zip(env.widths, env.row_params)]
    return env.widths_for(waterfill([max(r, 1e-6) for r in ratios], sizes, sparsity, env.r_max))


@contextmanager
def claimed(policy_dir: Path) -> Iterator[bool]:
    """Hold ``policy_dir/.training`` for the block (``True``), or ``False`` while another open
    holds it, in this process or a live other one. The lock is an advisory ``flock``, which the
    kernel drops when its holder exits however it exits, so no lock goes stale and none has to be
    taken over. The file stays behind, with the last holder's pid."""
    policy_dir.mkdir(parents=True, exist_ok=True)
    with open(policy_dir / ".training", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield True


def train_all(args: argparse.Namespace, base: TrainConfig) -> None:
    """Train every (row, seed) policy not finished, nor claimed by another process, under
    ``--out``/ROW/seed-S."""
    todo = [(row, seed) for row in args.rows for seed in args.seeds]
    for row, seed in tqdm(todo, desc="ablation policies"):
        out = Path(args.out) / row / f"seed-{seed}"
        if (out / "policy.json").exists():
            continue
        with claimed(out) as mine:
            if not mine or (out / "policy.json").exists():  # held, or finished since the check above
                continue
            stat = "margin" if row == "margin" else args.reward_stat
            train_from_data(args.model, args.data, out, row_config(row, base, seed), round_to=args.round_to,
                            calib_n=args.calib_n, reward_limit=args.reward_limit, reward_statistic=stat,
                            calibration=Path(args.out) / "calibration", reconstruct=args.reconstruct,
                            progress=False)


def test_environment(model_spec: str, test_data: str, calib_n: int, cache: Path, *, round_to: int, r_max: float,
                     budget: tuple[float, float], reconstruct: str = "none", device: str = "cpu") -> PlanEnvironment:
    """Plan environment on ``test_data`` whose two objectives are test-split accuracies, rows by the
    shared row score calibrated on its calibration split (cached in ``cache``), each plan refitted
    there too with ``reconstruct="lstsq"`` (as ``hipp compare --reconstruct lstsq`` does), the model on
    ``device``."""
    return test_setup(model_spec, test_data, calib_n, cache, round_to=round_to, r_max=r_max, budget=budget,
                      reconstruct=reconstruct, device=device)[0]


def write_records(path: Path, args: argparse.Namespace, records: list[dict[str, Any]], data: str) -> None:
    """Write a screen's ``{"args", "world", "records"}`` to ``path`` atomically; ``world`` is the
    content hash of the world ``data`` it was measured on (``provenance.world_fingerprint``), so a
    rerun on a rebuilt world can be checked against it."""
    payload = {"args": vars(args), "world": world_fingerprint(data), "records": records}
    write_text_atomic(path, json.dumps(payload, indent=1))


def test_setup(model_spec: str, test_data: str, calib_n: int, cache: Path, *, round_to: int, r_max: float,
               budget: tuple[float, float], reconstruct: str = "none",
               device: str = "cpu") -> tuple[PlanEnvironment, Any]:
    """:func:`test_environment` and the model's processor (to score other rows on the same model)."""
    model, processor = load_model(model_spec, device=device)
    profile, scores = calibrated_profile(model, processor, test_data, calib_n, cache)
    grams = reward_grams(model, processor, test_data, calib_n) if reconstruct == "lstsq" else None
    pope = PopeMarginReward(processor, test_data, "test", None)
    sqa = ScienceQAMarginReward(processor, test_data, "test", None)
    objectives = {"rob": lambda m: 100 * float(pope.metrics(m)["balanced_accuracy"]),
                  "util": lambda m: 100 * float(sqa.metrics(m)["accuracy"])}
    env = PlanEnvironment(model, api.get_adapter(model), scores, objectives, round_to=round_to, r_max=r_max,
                          compression_range=budget, row_params=profile.row_params, grams=grams)
    return env, processor


def evaluate_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per (row, seed): the plan's own sparsity, the pinned widths and their test accuracies."""
    env = test_environment(args.model, args.test_data, args.calib_n, Path(args.out) / "test-calibration",
                           round_to=args.round_to, r_max=args.r_max, budget=args.budget, reconstruct=args.reconstruct)
    records = []
    try:
        for row in args.rows:
            for seed in args.seeds:
                answer = query(load_policy(Path(args.out) / row / f"seed-{seed}"), args.preference)
                widths = pinned_widths(env, answer.plan, args.sparsity)
                outcome = env.score_widths([widths])
                records.append({"row": row, "seed": seed, "own_sparsity": answer.realized_sparsity,
                                "sparsity": float(outcome.realized[0]), "widths": list(widths),
                                "pope_adv": float(outcome.raw[0, 0]), "sqa": float(outcome.raw[0, 1])})
    finally:
        env.close()
    return records


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table: per row, seeds, own and pinned sparsity, POPE-adversarial and ScienceQA
    (``mean ± std`` as ``hipp compare`` prints them), and the difference of each mean from the full method's."""
    rows = list(dict.fromkeys(r["row"] for r in records))
    full = {k: statistics.fmean(r[k] for r in records if r["row"] == "full") for k in ("pope_adv", "sqa")} \
        if "full" in rows else None
    lines = ["| row | seeds | own sparsity % | pinned sparsity % | POPE-adv BalAcc | ScienceQA acc | Δ POPE | Δ SQA |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [r for r in records if r["row"] == row]
        pope, sqa = [r["pope_adv"] for r in cells], [r["sqa"] for r in cells]
        delta = (f"{statistics.fmean(pope) - full['pope_adv']:+.1f} | {statistics.fmean(sqa) - full['sqa']:+.1f}"
                 if full else " | ")
        lines.append(f"| {row} | {len(cells)} | {fmt_pm([r['own_sparsity'] for r in cells])} | "
                     f"{fmt_pm([r['sparsity'] for r in cells])} | {fmt_pm(pope, 1.0)} | {fmt_pm(sqa, 1.0)} | {delta} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="world whose calibration split trains the policies")
    p.add_argument("--test-data", required=True, help="world no policy saw: its test split scores the plans")
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=lambda s: s.split(","), default=list(ROWS), help=f"of {', '.join(ROWS)}")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--group", type=int, default=6)
    p.add_argument("--prefs", type=int, default=2)
    p.add_argument("--budget", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.2, 0.6))
    p.add_argument("--r-max", type=float, default=0.95)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--reward-limit", type=int, default=128)
    p.add_argument("--reward-stat", default="loglik", help="the full method's reward statistics (hipp train --reward-stat)")
    p.add_argument("--objective-cap", choices=("none", "dense", "robustness"), default="none",
                   help="the full method's cap on the returns (hipp train --objective-cap)")
    p.add_argument("--preference", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.8, 0.1, 0.1))
    p.add_argument("--sparsity", type=float, default=None, help="pin every plan to this sparsity (default: its own)")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="none",
                   help="least-squares refit of pruned down_proj in every training reward and test score")
    p.add_argument("--train-only", action="store_true", help="train the missing policies and stop")
    args = p.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train the missing policies, then (unless ``--train-only``) score them and print the table."""
    args = parse_args(argv)
    lo, hi = args.budget
    base = TrainConfig(steps=args.steps, group=args.group, prefs_per_step=args.prefs, gate=GateConfig(),
                       objective_cap=args.objective_cap,
                       state=StateConfig(), policy=PolicyConfig(rho_min=lo, rho_max=hi, r_max=args.r_max,
                                                                budget_input="compression"))
    train_all(args, base)
    if args.train_only:
        return
    records = evaluate_all(args)
    print(table(records))
    write_records(Path(args.out, "ablations.json"), args, records, args.test_data)


if __name__ == "__main__":
    main()
