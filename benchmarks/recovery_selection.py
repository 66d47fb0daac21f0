"""Which recovery state should a comparison hand back? Selection rules scored on the test rows.

``hipp compare`` recovers every cell for ``--steps`` steps and picks the state it hands back by
scores on held-out calibration rows (until session 36: the best of the states every quarter, the
unrecovered model included). This screen records the state every ``--every`` steps once, per cell, with its per-row correctness on the whole
calibration split (each POPE category, ScienceQA) and on the test split, so that any selection rule
can be replayed offline (``RULES``) and judged by the test scores of the states it picks:

* ``best-adv128``: the rule compare shipped until session 36 (``select_every`` a quarter, 128 POPE-adversarial rows and
  the ScienceQA rows, best score wins);
* ``best-all``: the same on every calibration row (POPE's three categories pooled);
* ``paired-*-zK``: a state replaces the one held only when its paired gain on the selection rows
  clears ``K`` standard errors (:mod:`hipp_torchprune.recovery.selection`);
* ``guard-all-z1``: the last state unless it is worse than the unrecovered one by one standard error
  on every calibration row (``hipp compare``'s default since session 36);
* ``last`` and ``none``: the final state, and no recovery.

The cells are ``hipp compare``'s Table-1 baselines at the sparsity HiPP realizes at
``--preference`` and HiPP at each ``--hipp`` query, for each seed. Writes ``recovery_selection.json``
after each cell (a rerun resumes) and prints, per rule, each method's test POPE-adversarial and
ScienceQA (mean +- std over seeds) and, over all cells, the mean test selection score and the mean
seed-to-seed standard deviation.

    OMP_NUM_THREADS=1 python benchmarks/recovery_selection.py --data out/world-s13 --out out/rsel-lo \\
        --preference 0.9,0.1,0 --hipp "0.1,0.9,0;0.5,0.5,0;0.9,0.1,0" --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hipp_torchprune.atomic import write_text_atomic
from hipp_torchprune.compare import BASELINES, CompareConfig, cell_key, load_shared, prune_cell
from hipp_torchprune.data import TASKS
from hipp_torchprune.demo_job import DEMO_POLICY_DIR
from hipp_torchprune.evaluation import evaluate, prepare_eval
from hipp_torchprune.hipp.preferences import parse_preference
from hipp_torchprune.provenance import world_fingerprint
from hipp_torchprune.recovery import RecoveryConfig, recover
from hipp_torchprune.recovery.selection import guard_keeps, paired_gain, replaces, row_weights
from hipp_torchprune.registry import default_registry

#: Selection rows per rule: ``(task, first rows or None)``; the test score uses compare's two tasks.
ROW_SETS: dict[str, tuple[tuple[str, int | None], ...]] = {
    "adv128": (("pope_adversarial", 128), ("scienceqa", 128)),
    "all": (("pope", None), ("scienceqa", None)),
}
#: Rule name -> (row set, z, mode), or ``"last"`` / ``"none"``.
RULES: dict[str, tuple[str, float, str] | str] = {
    "best-adv128": ("adv128", 0.0, "best"), "best-all": ("all", 0.0, "best"),
    "paired-adv128-z1": ("adv128", 1.0, "best"), "paired-all-z1": ("all", 1.0, "best"),
    "paired-all-z2": ("all", 2.0, "best"), "guard-all-z1": ("all", 1.0, "guard"), "last": "last", "none": "none"}
SELECT_TASKS = ("pope_random", "pope_popular", "pope_adversarial", "scienceqa")
TEST_TASKS = {"pope_adversarial": "pope_adv", "scienceqa": "sqa"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--data", required=True, help="world (train: recovery, calibration: selection, test: scores)")
    p.add_argument("--out", required=True)
    p.add_argument("--policy", default=str(DEMO_POLICY_DIR))
    p.add_argument("--preference", default="0.9,0.1,0", help="HiPP query whose sparsity the baselines match")
    p.add_argument("--hipp", default="0.1,0.9,0;0.5,0.5,0;0.9,0.1,0", help="HiPP queries 'a,b,c;...'")
    p.add_argument("--methods", default=",".join(BASELINES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10, help="a state is recorded every this many steps")
    p.add_argument("--table-only", action="store_true", help="print the tables of OUT, run nothing")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        raise SystemExit(f"--steps must be a positive multiple of --every, got {args.steps}, {args.every}")
    return args


# ---------------------------------------------------------------- offline rules (pure)


def _rows(state: dict[str, Any], gold: dict[str, list[int]], row_set: str) -> tuple[np.ndarray, np.ndarray]:
    """``(correct, weights)`` of one state on a row set (``pope``: the three categories pooled)."""
    correct, tasks = [], []
    for task, limit in ROW_SETS[row_set]:
        names = ("pope_random", "pope_popular", "pope_adversarial") if task == "pope" else (task,)
        c = "".join(state["select"][n][:limit] for n in names)
        g = [x for n in names for x in gold[n][:limit]]
        correct.append(c)
        tasks.append((TASKS[task].family, g))
    return np.array([int(ch) for ch in "".join(correct)]), row_weights(tasks)


def chosen_state(states: Sequence[dict[str, Any]], gold: dict[str, list[int]], rule: str) -> int:
    """Index of the state ``rule`` hands back. ``best``: the first state is held, and each later one
    replaces the held one when :func:`~hipp_torchprune.recovery.selection.replaces` says so.
    ``guard``: the last state when :func:`~hipp_torchprune.recovery.selection.guard_keeps` it, else the first."""
    spec = RULES[rule]
    if spec == "none":
        return 0
    if spec == "last":
        return len(states) - 1
    row_set, z, mode = spec
    held, (held_c, w) = 0, _rows(states[0], gold, row_set)
    if mode == "guard":
        return len(states) - 1 if guard_keeps(*paired_gain(_rows(states[-1], gold, row_set)[0], held_c, w), z) else 0
    for i in range(1, len(states)):
        c, _ = _rows(states[i], gold, row_set)
        if replaces(*paired_gain(c, held_c, w), z):
            held, held_c = i, c
    return held


def test_scores(state: dict[str, Any], gold: dict[str, list[int]]) -> dict[str, float]:
    """A state's test POPE-adversarial balanced accuracy, ScienceQA accuracy (percent) and their mean."""
    out = {}
    for task, short in TEST_TASKS.items():
        c = np.array([int(ch) for ch in state["test"][task]])
        out[short] = 100.0 * float(row_weights([(TASKS[task].family, gold["test:" + task])]) @ c)
    out["score"] = (out["pope_adv"] + out["sqa"]) / 2
    return out


# ---------------------------------------------------------------- recording


def _correct(model: Any, processor: Any, prepared: Any) -> dict[str, str]:
    return {t: m["correct"] for t, m in evaluate(model, processor, prepared, per_row=True).items()}


def record_cell(shared: Any, config: CompareConfig, cell: tuple[str, str, Any, int], args: argparse.Namespace,
                prepared: tuple[Any, Any], work: Path) -> dict[str, Any]:
    """Prune one cell, then record its state every ``--every`` steps of one recovery run (a run of
    ``k`` steps resumes the saved state of ``k - every``: the same trajectory as one run)."""
    table, method, pref, seed = cell
    pruned = copy.deepcopy(shared.model)
    _, realized, widths, _ = prune_cell(config, shared, pruned, table, method, pref, seed, "main")
    rcfg = RecoveryConfig(**{**config.recovery.to_dict(), "seed": seed, "select_every": 0, "save_every": args.every})
    states = []
    for k in range(0, args.steps + 1, args.every):
        model = copy.deepcopy(pruned)
        if k:
            recover(model, shared.processor, config.data, RecoveryConfig(**{**rcfg.to_dict(), "steps": k}),
                    work_dir=work, progress=False, registry=shared.registry)
        states.append({"step": k, "select": _correct(model, shared.processor, prepared[0]),
                       "test": _correct(model, shared.processor, prepared[1])})
    return {"table": table, "method": method, "preference": list(pref), "seed": seed,
            "realized_sparsity": realized, "widths": list(widths), "states": states}


def _cells(args: argparse.Namespace) -> list[tuple[str, str, tuple[float, ...], int]]:
    target = parse_preference(args.preference)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    cells = [("table1", m, target, s) for s in seeds for m in methods]
    return cells + [("table3", "hipp", parse_preference(q), s) for s in seeds for q in args.hipp.split(";")]


def _gold(prepared: tuple[Any, Any]) -> dict[str, list[int]]:
    gold = {t.name: list(t.gold) for t in prepared[0].tasks}
    return {**gold, **{"test:" + t.name: list(t.gold) for t in prepared[1].tasks}}


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Record every cell not yet in ``out/recovery_selection.json``, saving after each."""
    import shutil

    from tqdm.auto import tqdm

    path = out / "recovery_selection.json"
    done = json.loads(path.read_text()) if path.exists() else {"args": vars(args), "cells": {}}
    todo = [c for c in _cells(args) if cell_key(c[0], c[1], c[2], c[3]) not in done["cells"]]
    if not todo:
        return done
    config = CompareConfig(model=args.model, data=args.data, policy=args.policy,
                           preference=parse_preference(args.preference),
                           recovery=RecoveryConfig(steps=args.steps, save_every=args.every))
    registry = default_registry()
    shared = load_shared(config, registry)
    prepared = (prepare_eval(shared.processor, args.data, SELECT_TASKS, split="calibration"),
                prepare_eval(shared.processor, args.data, tuple(TEST_TASKS)))
    done.update(world=world_fingerprint(args.data), gold=_gold(prepared))
    for cell in tqdm(todo, desc="cells"):
        work = out / "work" / cell_key(*cell).replace("|", "_")
        done["cells"][cell_key(*cell)] = record_cell(shared, config, cell, args, prepared, work)
        shutil.rmtree(work, ignore_errors=True)
        write_text_atomic(path, json.dumps(done))
    return done


# ---------------------------------------------------------------- tables


#: Rule pairs whose per-cell test-score differences are printed.
PAIRS: tuple[tuple[str, str], ...] = (("last", "best-adv128"), ("last", "none"), ("best-adv128", "none"),
                                      ("guard-all-z1", "best-adv128"), ("guard-all-z1", "last"))


def paired_difference(done: dict[str, Any], a: str, b: str, key: str = "score") -> tuple[float, float]:
    """Mean over cells of rule ``a``'s test ``key`` minus rule ``b``'s, and its standard error."""
    gold, diffs = done["gold"], []
    for cell in done["cells"].values():
        states = cell["states"]
        diffs.append(test_scores(states[chosen_state(states, gold, a)], gold)[key]
                     - test_scores(states[chosen_state(states, gold, b)], gold)[key])
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), se


def _pm(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def summarize(done: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per rule: per method (HiPP per query) the test scores of the chosen states over seeds,
    the mean test score over all cells, and the mean seed-to-seed standard deviation."""
    gold, out = done["gold"], {}
    for rule in RULES:
        groups: dict[str, list[dict[str, float]]] = {}
        for cell in done["cells"].values():
            name = cell["method"] if cell["table"] == "table1" else "hipp " + ",".join(f"{w:g}" for w in cell["preference"])
            groups.setdefault(name, []).append(test_scores(cell["states"][chosen_state(cell["states"], gold, rule)], gold))
        sd = [statistics.stdev([s[k] for s in v]) for v in groups.values() if len(v) > 1 for k in ("pope_adv", "sqa")]
        out[rule] = {"groups": groups, "mean_score": statistics.mean(s["score"] for v in groups.values() for s in v),
                     "mean_sd": statistics.mean(sd) if sd else 0.0}
    return out


def render(summary: dict[str, dict[str, Any]]) -> str:
    """Two markdown tables: per rule the overall figures, and per method and rule the test scores."""
    lines = ["| rule | mean test score | mean seed sd (POPE-adv, SQA) |", "|---|---|---|"]
    lines += [f"| {r} | {s['mean_score']:.2f} | {s['mean_sd']:.2f} |" for r, s in summary.items()]
    names = list(next(iter(summary.values()))["groups"])
    lines += ["", "| method | " + " | ".join(summary) + " |", "|---|" + "---|" * len(summary)]
    for n in names:
        cells = [f"{_pm([s['pope_adv'] for s in v['groups'][n]])} / {_pm([s['sqa'] for s in v['groups'][n]])}"
                 for v in summary.values()]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the screen and print its tables."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = json.loads((out / "recovery_selection.json").read_text()) if args.table_only else run(args, out)
    summary = summarize(done)
    print(render(summary))
    for a, b in PAIRS:
        print(f"{a} - {b}, per cell over {len(done['cells'])} cells: " + ", ".join(
            "{} {:+.2f} ± {:.2f}".format(k, *paired_difference(done, a, b, k)) for k in ("score", "pope_adv", "sqa")))
    return summary


if __name__ == "__main__":
    main()
