"""How far can any MLP-row allocation go at one sparsity? A hill climb on the test rows themselves.

Starting from each ``--start`` allocation (kept widths, one per layer), moves ``--move`` rows (each
size listed, multiples of ``--round-to``) from one layer to another (every ordered pair, so the
sparsity stays fixed when the layers are equally wide), scores every neighbour on the whole test
split of ``--data`` (``ablations.test_environment``: POPE-adversarial balanced accuracy and ScienceQA
accuracy, before recovery, rows by the shared row score) and takes the best one, until no neighbour
improves. "Best" maximizes ``--maximize`` (``pope`` or ``sqa``) among the neighbours whose other
accuracy is at least ``--floor`` (ties: the other accuracy); from a start below the floor it first
climbs the other accuracy toward it. On a plateau (the best neighbour only equals the current plan)
it takes up to ``--patience`` sideways steps to plans it has not stood on.

It selects on the rows it reports, so what it finds is an optimistic ceiling for every allocator
that uses these rows (HiPP's policy and every MLP-row baseline's allocation), never a deployable
plan: if the ceiling at a sparsity is below a target, no allocation meets that target there; if it
is above, score the plan it found on another world (``--check``) before believing it. Prints each
start's climb, the best plan any climb saw and, on every ``--check`` world, the starts, the climbs'
ends and the best plan; writes ``ceiling.json``.

    OMP_NUM_THREADS=1 python benchmarks/allocation_ceiling.py --data out/compare-v2/world --out out/ceiling \\
        --start "104,128,72,104,40,128,24,32" --maximize pope --floor 88.2 --patience 2 --check out/world-s11
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablations import parse_widths, test_environment, write_records

from hipp_torchprune.hipp.env import PlanEnvironment

#: The metric a climb maximizes; the other one is held at ``--floor``.
Metric = Literal["pope", "sqa"]


@dataclass(frozen=True)
class Scored:
    """One allocation and its test accuracies (percent)."""

    widths: tuple[int, ...]
    pope: float
    sqa: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="world whose test split scores the plans")
    p.add_argument("--out", required=True, help="writes ceiling.json and the calibration cache here")
    p.add_argument("--start", type=parse_widths, action="append", required=True, help="kept widths; repeat for more starts")
    p.add_argument("--check", action="append", help="another world whose test split scores the starts, the "
                   "climbs' ends and the best plan; repeat")
    p.add_argument("--maximize", choices=("pope", "sqa"), default="pope")
    p.add_argument("--floor", type=float, default=0.0, help="least accuracy (percent) of the other metric")
    p.add_argument("--max-steps", type=int, default=30, help="most moves a climb takes")
    p.add_argument("--round-to", type=int, default=8, help="widths are multiples of this")
    p.add_argument("--move", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="rows one move carries, comma-separated sizes (default: --round-to)")
    p.add_argument("--patience", type=int, default=0, help="sideways steps allowed in a row on a plateau")
    p.add_argument("--calib-n", type=int, default=64)
    return p.parse_args(argv)


def neighbours(widths: tuple[int, ...], full: tuple[int, ...], step: int) -> list[tuple[int, ...]]:
    """Every allocation ``step`` rows away: one layer gives ``step`` rows to another, no layer below
    ``step`` rows or above its full width.

    Example: ``neighbours((8, 16), (16, 16), 8) == [(16, 8)]``."""
    out = []
    for i, give in enumerate(widths):
        for j, take in enumerate(widths):
            if i != j and give - step >= step and take + step <= full[j]:
                moved = list(widths)
                moved[i], moved[j] = give - step, take + step
                out.append(tuple(moved))
    return out


def key(plan: Scored, maximize: Metric, floor: float) -> tuple[bool, float, float]:
    """Sort key of a plan: meets the floor first; among plans that do, the maximized metric, then the
    other one; among plans that do not, the other metric (nearer the floor), then the maximized one.

    Example: with ``maximize="pope", floor=88``, ``Scored((), 93, 87)`` ranks below ``Scored((), 91, 88)``,
    and ``Scored((), 90, 87)`` above ``Scored((), 95, 86)``."""
    main, other = (plan.pope, plan.sqa) if maximize == "pope" else (plan.sqa, plan.pope)
    return (True, main, other) if other >= floor else (False, other, main)


def score(env: PlanEnvironment, plans: list[tuple[int, ...]], seen: dict[tuple[int, ...], Scored]) -> list[Scored]:
    """Each plan's test accuracies, scoring only the ones ``seen`` lacks (and adding them)."""
    new = [w for w in dict.fromkeys(plans) if w not in seen]
    if new:
        raw = env.score_widths(new).raw
        for i, w in enumerate(new):
            seen[w] = Scored(w, float(raw[i, 0]), float(raw[i, 1]))
    return [seen[w] for w in plans]


def climb(env: PlanEnvironment, start: tuple[int, ...], args: argparse.Namespace,
          seen: dict[tuple[int, ...], Scored]) -> list[Scored]:
    """The steepest-ascent path from ``start``: each step to the best neighbour under :func:`key`
    (sideways to an unvisited equal one at most ``--patience`` times in a row), until none is left
    or ``--max-steps`` moves were taken. Returns the path up to its best plan."""
    path, sideways = score(env, [start], seen), 0
    for _ in range(args.max_steps):
        here, visited = path[-1], {p.widths for p in path}
        around = [w for size in args.move or [args.round_to] for w in neighbours(here.widths, env.widths, size)]
        candidates = [p for p in score(env, around, seen) if p.widths not in visited]
        best = max(candidates, key=lambda p: key(p, args.maximize, args.floor), default=here)
        rank, now = key(best, args.maximize, args.floor), key(here, args.maximize, args.floor)
        sideways = sideways + 1 if rank == now else 0
        if rank < now or best is here or sideways > args.patience:
            break
        path.append(best)
        print(f"  {best.widths}: POPE-adv {best.pope:.1f}, ScienceQA {best.sqa:.1f}", flush=True)
    top = max(range(len(path)), key=lambda i: (key(path[i], args.maximize, args.floor), -i))
    return path[:top + 1]


def checked(args: argparse.Namespace, plans: list[tuple[int, ...]], cache: Path) -> dict[str, list[dict[str, Any]]]:
    """Every ``--check`` world's test accuracies of ``plans`` (the shared row score calibrated on that
    world), printed: does what the climb found on its own rows hold on rows it never saw?"""
    out: dict[str, list[dict[str, Any]]] = {}
    for i, data in enumerate(args.check or []):
        env = test_environment(args.model, data, args.calib_n, cache / f"check-{i}", round_to=args.round_to,
                               r_max=1.0, budget=(0.0, 1.0))
        try:
            raw = env.score_widths(plans).raw
        finally:
            env.close()
        out[data] = [{"widths": list(w), "pope_adv": float(raw[k, 0]), "sqa": float(raw[k, 1])}
                     for k, w in enumerate(plans)]
        for row in out[data]:
            print(f"  on {data}: {tuple(row['widths'])}: POPE-adv {row['pope_adv']:.1f}, ScienceQA {row['sqa']:.1f}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Climb from every start, print the climbs and the best plan seen, score the starts, the climbs'
    ends and the best plan on every ``--check`` world, write ``ceiling.json``."""
    args = parse_args(argv)
    env = test_environment(args.model, args.data, args.calib_n, Path(args.out) / "test-calibration",
                           round_to=args.round_to, r_max=1.0, budget=(0.0, 1.0))
    seen: dict[tuple[int, ...], Scored] = {}
    climbs: list[list[Scored]] = []
    try:
        for start in args.start:
            if len(start) != len(env.widths) or any(not 0 < w <= f for w, f in zip(start, env.widths)):
                raise SystemExit(f"--start {start}: give {len(env.widths)} widths within {env.widths}")
            print(f"from {start}:", flush=True)
            climbs.append(climb(env, start, args, seen))
    finally:
        env.close()
    best = max(seen.values(), key=lambda p: key(p, args.maximize, args.floor))
    print(f"best of {len(seen)} plans scored: {best.widths}, POPE-adv {best.pope:.1f}, ScienceQA {best.sqa:.1f}")
    ends = [{"start": list(c[0].widths), "end": list(c[-1].widths), "pope_adv": c[-1].pope, "sqa": c[-1].sqa,
             "moves": len(c) - 1} for c in climbs]
    shown = list(dict.fromkeys([w for c in climbs for w in (c[0].widths, c[-1].widths)] + [best.widths]))
    result = {"best": {"widths": list(best.widths), "pope_adv": best.pope, "sqa": best.sqa}, "climbs": ends,
              "checks": checked(args, shown, Path(args.out)),
              "plans": [{"widths": list(p.widths), "pope_adv": p.pope, "sqa": p.sqa} for p in seen.values()]}
    write_records(Path(args.out, "ceiling.json"), args, [result], args.data)
    return result


if __name__ == "__main__":
    main()
