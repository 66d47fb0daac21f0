"""benchmarks/steering.py: every policy's sweeps scored on the test split, on tiny-llava."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hipp_torchprune.hipp.policy_io import load_policy, query
from tests.benchmark_scripts import load_benchmark, train_one_step_policy


def test_a_run_on_tiny_llava(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("steering")
    world = make_world(0, 8)
    policy = train_one_step_policy(world, tmp_path / "p")
    out = tmp_path / "steer"
    sweeps = ["0.9,0.1,0;0.5,0.5,0;0.1,0.9,0", "0.4,0.1,0.5;0.1,0.4,0.5"]
    bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--calib-n", "2",
                "--reconstruct", "lstsq", "--policy", f"a={policy}", "--policy", f"b={policy}",
                *[x for s in sweeps for x in ("--sweep", s)]])
    records = json.loads((out / "steering.json").read_text())["records"]
    assert [(r["policy"], r["sweep"]) for r in records] == [(n, s) for n in "ab" for s in sweeps for _ in s.split(";")]
    loaded = load_policy(policy)
    for r in records:  # the policy's own widths, scored as percentages
        answer = query(loaded, r["preference"])
        assert r["widths"] == list(answer.widths) and r["sparsity"] == pytest.approx(answer.realized_sparsity)
        assert 0 <= r["pope_adv"] <= 100 and 0 <= r["sqa"] <= 100
    printed = capsys.readouterr().out
    assert printed.count("r(w_rob, POPE-adv)") == 4 and "### a, w_comp 0.50" in printed
    bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--calib-n", "2",
                "--policy", f"a={policy}", "--sweep", sweeps[1], "--sparsity", "0.25"])
    pinned = json.loads((out / "steering.json").read_text())["records"]  # one sparsity, whatever w_comp says
    assert [r["sparsity"] for r in pinned] == [pytest.approx(0.25, abs=16 / 1024)] * 2
    assert pinned[0]["widths"] != records[3]["widths"]  # not the policy's own 0.5-budget plan
    with pytest.raises(SystemExit, match="--sparsity must lie in"):
        bench.main(["--data", str(world), "--out", str(out), "--policy", f"a={policy}", "--sparsity", "0.99"])
    with pytest.raises(SystemExit, match="NAME=DIR"):
        bench.main(["--data", str(world), "--out", str(out), "--policy", str(policy)])


def test_ends_contrast_is_the_paired_difference_of_the_two_ends(make_world, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``--ends``: the bootstrapped difference is exactly the ends' score difference, inside its interval."""
    bench = load_benchmark("steering")
    world = make_world(0, 8)
    policy = train_one_step_policy(world, tmp_path / "p")
    out = tmp_path / "steer"
    bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--calib-n", "2",
                "--policy", f"a={policy}", "--sweep", "0.1,0.9,0;0.5,0.5,0;0.9,0.1,0", "--ends"])
    records = json.loads((out / "steering.json").read_text())["records"]
    assert "ends" not in records[0] and "ends" not in records[1]
    ends = records[-1]["ends"]
    for name, key in (("pope_adv_bal_acc", "pope_adv"), ("sqa_acc", "sqa")):
        d, low, high = ends[name]
        assert d == pytest.approx(records[-1][key] - records[0][key], abs=1e-9) and low <= d <= high
    assert "POPE end minus ScienceQA end" in capsys.readouterr().out
