"""benchmarks/recovery_selection.py: the replayed rules by hand, and a resumable run on tiny-llava."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark, train_one_step_policy

GOLD = {"pope_random": [0, 1], "pope_popular": [0, 1], "pope_adversarial": [0, 1, 0, 1], "scienceqa": [0, 0, 0, 0],
        "test:pope_adversarial": [0, 1], "test:scienceqa": [0, 0]}


def _state(pope: str, sqa: str) -> dict:
    """A state whose POPE rows (random, popular, adversarial) read ``pope`` and ScienceQA ``sqa``."""
    return {"select": {"pope_random": pope[:2], "pope_popular": pope[2:4], "pope_adversarial": pope[4:],
                       "scienceqa": sqa}, "test": {"pope_adversarial": "10", "scienceqa": "11"}}


def test_rules_by_hand() -> None:
    bench = load_benchmark("recovery_selection")
    s0 = _state("10101010", "1100")  # POPE: every yes row right, every no row wrong (0.5); ScienceQA 0.5
    s1 = _state("10101010", "1110")  # one more ScienceQA row: gain 1/8, standard error 1/8
    s2 = _state("10101010", "1100")  # back to s0
    states = [s0, s1, s2]
    picks = {rule: bench.chosen_state(states, GOLD, rule) for rule in bench.RULES}
    assert picks == {"best-adv128": 1, "best-all": 1, "paired-adv128-z1": 0, "paired-all-z1": 0,
                     "paired-all-z2": 0, "guard-all-z1": 2, "last": 2, "none": 0}
    big = _state("11111111", "1111")  # all-rows gain 0.5 against s0, standard error about 0.22
    assert bench.chosen_state([s0, big, s2], GOLD, "paired-all-z2") == 1
    assert bench.chosen_state([big, s1, s0], GOLD, "guard-all-z1") == 0  # the last lost 0.5, se about 0.22
    assert bench.test_scores(s0, GOLD) == {"pope_adv": 50.0, "sqa": 100.0, "score": 75.0}
    s1_test = {**s1, "test": {"pope_adversarial": "11", "scienceqa": "11"}}  # test score 100 against s0's 75
    done = {"gold": GOLD, "cells": {"a": {"states": [s0, s1_test, s2]}, "b": {"states": [s0, s1_test, s1_test]}}}
    assert bench.paired_difference(done, "best-all", "none") == (25.0, 0.0)  # both cells pick s1
    assert bench.paired_difference(done, "last", "none") == pytest.approx((12.5, 12.5))  # +0 and +25


def test_a_run_on_tiny_llava_resumes(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("recovery_selection")
    world = make_world(0, 8)
    policy = train_one_step_policy(world, tmp_path / "p")
    argv = ["--model", "tiny-llava", "--data", str(world), "--out", str(tmp_path / "r"), "--policy", str(policy),
            "--methods", "", "--hipp", "0.5,0.5,0;0.9,0.1,0", "--seeds", "0", "--steps", "2", "--every", "1"]
    summary = bench.main(argv)
    done = json.loads((tmp_path / "r" / "recovery_selection.json").read_text())
    assert len(done["cells"]) == 2
    for cell in done["cells"].values():
        assert [s["step"] for s in cell["states"]] == [0, 1, 2]
        for s in cell["states"]:
            assert {t: len(c) for t, c in s["select"].items()} == {t: len(done["gold"][t]) for t in bench.SELECT_TASKS}
            assert {t: len(c) for t, c in s["test"].items()} == {t: len(done["gold"]["test:" + t])
                                                                 for t in bench.TEST_TASKS}
        assert 0 < cell["realized_sparsity"] < 1
    none = summary["none"]["groups"]
    assert none["hipp 0.5,0.5,0"] == [bench.test_scores(c["states"][0], done["gold"])
                                      for c in done["cells"].values() if c["preference"] == [0.5, 0.5, 0.0]]
    stamp = (tmp_path / "r" / "recovery_selection.json").stat().st_mtime_ns
    assert bench.main(argv) == summary  # every cell recorded: nothing reruns
    assert (tmp_path / "r" / "recovery_selection.json").stat().st_mtime_ns == stamp
    assert bench.main([*argv, "--table-only"]) == summary
    assert "| best-adv128 |" in capsys.readouterr().out
