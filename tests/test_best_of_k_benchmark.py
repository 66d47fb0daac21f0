"""benchmarks/best_of_k.py: a policy's sampled allocations, pinned to its plan's sparsity, scored
on the test split and on selection rows, on tiny-llava."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hipp_torchprune.hipp.policy_io import load_policy, query
from hipp_torchprune.provenance import world_fingerprint
from tests.benchmark_scripts import load_benchmark, train_one_step_policy


def test_select_weighs_each_task_by_the_preference_in_units_of_its_spread() -> None:
    bench = load_benchmark("best_of_k")
    records = [{"name": "a", "select": [90.0, 80.0]}, {"name": "b", "select": [92.0, 70.0]},
               {"name": "c", "select": [91.0, 84.0]}]
    assert bench.select(records, (1.0, 0.0, 0.0))["name"] == "b"
    assert bench.select(records, (0.0, 1.0, 0.0))["name"] == "c"
    # POPE spread 0.82, ScienceQA spread 5.9: a 0.6/0.4 preference still buys c's +14 ScienceQA over b
    assert bench.select(records, (0.6, 0.4, 0.0))["name"] == "c"
    # all candidates alike on ScienceQA: no division by zero, POPE decides
    assert bench.select([{"name": n, "select": [p, 80.0]} for n, p in (("x", 1.0), ("y", 2.0))],
                        (0.5, 0.5, 0.0))["name"] == "y"


def test_agreement_is_pearson_r_of_selection_and_test_scores() -> None:
    bench = load_benchmark("best_of_k")
    records = [{"select": [1.0, 5.0], "test": [2.0, 1.0]}, {"select": [2.0, 5.0], "test": [4.0, 3.0]},
               {"select": [3.0, 5.0], "test": [5.0, 2.0]}]
    assert bench.agreement(records, 0) == pytest.approx(0.9819805, abs=1e-6)  # r of (1,2,3) and (2,4,5)
    assert math.isnan(bench.agreement(records, 1))  # the selection rows cannot tell them apart
    assert bench.agreement([{"select": [1.0, 0.0], "test": [1.0, 0.0]}, {"select": [2.0, 0.0], "test": [0.0, 0.0]}],
                           0) == pytest.approx(-1.0)
    assert bench.tradeoff(records) == pytest.approx(0.6546537, abs=1e-6)  # r of (2, 4, 5), (1, 3, 2): 2 / sqrt(84 / 9)
    assert bench.tradeoff(records[:1]) != bench.tradeoff(records[:1])  # one candidate: NaN


def test_a_run_on_tiny_llava(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("best_of_k")
    world = make_world(0, 8)
    policy = train_one_step_policy(world, tmp_path / "p")
    loaded = load_policy(policy)
    first, again, other = (bench.candidate_plans(loaded, (0.4, 0.1, 0.5), 3, seed) for seed in (0, 0, 1))
    assert len(first) == 4 and first == again and first[1:] != other[1:] and first[0] == other[0]
    out = tmp_path / "bok"
    prefs = "0.4,0.1,0.5;0.1,0.9,0"
    bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--calib-n", "2", "--policy",
                str(policy), "--preferences", prefs, "--samples", "4", "--select-limit", "4", "--reconstruct", "lstsq"])
    written = json.loads((out / "best_of_k.json").read_text())
    records = written["records"]
    assert written["world"] == world_fingerprint(world) and written["world"] is not None
    for text in prefs.split(";"):
        answer = query(loaded, [float(x) for x in text.split(",")])
        group = [r for r in records if r["preference"] == pytest.approx(list(answer.preference))]
        assert group[0]["candidate"] == 0 and 1 <= len(group) <= 5
        assert len({tuple(r["widths"]) for r in group}) == len(group)  # distinct plans, scored once each
        assert all(r["sparsity"] == pytest.approx(answer.realized_sparsity, abs=16 / 1024) for r in group)
        assert all(0 <= x <= 100 for r in group for x in r["test"] + r["select"])
    out_text = capsys.readouterr().out
    table = out_text[out_text.index("| preference"):]
    assert table.count("\n| 0.") == 2
    bench.main(["--out", str(out), "--table-only"])  # re-renders the written records, scores nothing
    assert capsys.readouterr().out.strip() == table.strip()
    data = ["--data", str(world)]
    for flags, message in (([*data, "--select-split", "test"], "must not be the test split"),
                           ([*data, "--samples", "0"], "must be >= 1"), ([], "--data is required")):
        with pytest.raises(SystemExit, match=message):
            bench.main(["--out", str(out), *flags])
