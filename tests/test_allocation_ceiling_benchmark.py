"""benchmarks/allocation_ceiling.py: the neighbourhood and the ranking by hand, and a climb on tiny-llava."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


def test_neighbours_move_one_step_between_every_ordered_pair_within_bounds() -> None:
    neighbours = load_benchmark("allocation_ceiling").neighbours
    assert neighbours((8, 16), (16, 16), 8) == [(16, 8)]  # layer 0 may not go below one step, layer 0 is full
    around = neighbours((16, 16, 16), (32, 32, 32), 8)
    assert len(around) == 6 and all(sum(w) == 48 for w in around) and (8, 24, 16) in around
    assert neighbours((32, 32), (32, 32), 8) == []  # every layer full: nowhere to move rows


def test_the_floor_comes_before_the_maximized_metric() -> None:
    bench = load_benchmark("allocation_ceiling")
    high, meets = bench.Scored((), 93.0, 87.0), bench.Scored((), 91.0, 88.0)
    assert bench.key(meets, "pope", 88.0) > bench.key(high, "pope", 88.0)
    assert bench.key(high, "pope", 0.0) > bench.key(meets, "pope", 0.0)
    assert bench.key(meets, "sqa", 0.0) > bench.key(high, "sqa", 0.0)  # maximizing ScienceQA
    tie = bench.Scored((), 93.0, 89.0)
    assert bench.key(tie, "pope", 0.0) > bench.key(high, "pope", 0.0)  # equal POPE: the other metric decides
    nearer, farther = bench.Scored((), 90.0, 87.0), bench.Scored((), 95.0, 86.0)
    assert bench.key(nearer, "pope", 88.0) > bench.key(farther, "pope", 88.0)  # below the floor: climb toward it


def test_bad_widths_are_refused() -> None:
    with pytest.raises(SystemExit):
        load_benchmark("allocation_ceiling").parse_args(["--data", "w", "--out", "o", "--start", "8,x"])


def test_a_climb_on_tiny_llava(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("allocation_ceiling")
    world = make_world(0, 8)
    out = tmp_path / "c"
    result = bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--round-to", "64",
                         "--calib-n", "2", "--start", "128,128,128,128", "--max-steps", "2",
                         "--check", str(make_world(1, 8))])
    saved = json.loads((out / "ceiling.json").read_text())["records"][0]
    assert saved["best"] == result["best"]
    (climb,) = saved["climbs"]
    assert climb["start"] == [128] * 4 and climb["moves"] <= 2 and sum(climb["end"]) == 512
    scored = {tuple(p["widths"]): (p["pope_adv"], p["sqa"]) for p in saved["plans"]}
    assert (128,) * 4 in scored and len(scored) >= 13  # the start and its 12 neighbours at least
    assert all(sum(w) == 512 for w in scored)  # every move keeps the sparsity
    best = max(scored.values())
    assert (saved["best"]["pope_adv"], saved["best"]["sqa"]) == best  # no floor: the best POPE, then ScienceQA
    (checks,) = saved["checks"].values()  # the start, the climb's end and the best plan, each once
    assert [tuple(c["widths"]) for c in checks] == list(dict.fromkeys(
        [(128,) * 4, tuple(climb["end"]), tuple(saved["best"]["widths"])]))
    assert all(0 <= c["pope_adv"] <= 100 and 0 <= c["sqa"] <= 100 for c in checks)
    printed = capsys.readouterr().out
    assert "best of" in printed and printed.count("  on ") == len(checks)
    with pytest.raises(SystemExit):
        bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--calib-n", "2",
                    "--start", "128,128,128"])


class _Landscape:
    """A plan environment stand-in: three 32-row layers; POPE 92 once layer 0 is full, 90 below
    that down to 16 rows (a plateau), 80 under 16; ScienceQA 85 everywhere."""

    widths = (32, 32, 32)

    def __init__(self) -> None:
        self.scored: list[tuple[int, ...]] = []

    def score_widths(self, plans: list[tuple[int, ...]]) -> SimpleNamespace:
        self.scored += plans
        pope = [92.0 if w[0] == 32 else 90.0 if w[0] >= 16 else 80.0 for w in plans]
        return SimpleNamespace(raw=torch.tensor([[p, 85.0, 0.0] for p in pope]))


@pytest.mark.parametrize(("patience", "end"), [(0, (16, 16, 16)), (1, (32, 8, 8))])
def test_sideways_steps_cross_a_plateau_only_with_patience(patience: int, end: tuple[int, ...]) -> None:
    bench = load_benchmark("allocation_ceiling")
    args = bench.parse_args(["--data", "w", "--out", "o", "--start", "16,16,16", "--patience", str(patience)])
    env, seen = _Landscape(), {}
    path = bench.climb(env, (16, 16, 16), args, seen)
    assert path[-1].widths == end and path[0].widths == (16, 16, 16)
    assert len(env.scored) == len(set(env.scored)) == len(seen)  # every plan scored once
