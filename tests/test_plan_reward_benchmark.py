"""benchmarks/plan_reward.py: the trade-off by hand, and a run on tiny-llava with a one-step policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmark_scripts import ROOT, load_benchmark


def test_trade_off_by_hand() -> None:
    trade_off = load_benchmark("plan_reward").trade_off
    assert trade_off(2.0, 6.0, (0.7, 0.2, 0.1)) == pytest.approx((1.4 + 1.2) / 0.9)
    assert trade_off(1.0, 3.0, (0.5, 0.5, 0.0)) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def policy(make_world, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hipp_torchprune.cli import main

    world = make_world(0, 8)
    out = tmp_path_factory.mktemp("policy") / "p"
    assert main(["train", "--model", "tiny-llava", "--data", str(world), "--out", str(out), "--steps", "1",
                 "--group", "2", "--round-to", "16", "--budget", "0.2,0.5", "--reward-limit", "4",
                 "--calib-n", "2"]) == 0
    return world, out


def _run(world: Path, policy: Path, out: Path, methods: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HIPP_DISABLE_PLUGIN_AUTOLOAD"}  # the baselines' plugin
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plan_reward.py"), "--model", "tiny-llava",
                           "--policy", str(policy), "--data", str(world), "--out", str(out), "--methods", methods,
                           "--calib-n", "2", "--reward-limit", "4", *extra],
                          cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=900, check=False)


def test_scores_each_allocation_with_the_environments_rows(policy: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("hipp_baselines")
    proc = _run(*policy, tmp_path, "wanda")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "plan_reward.json").read_text())
    assert [r["allocation"] for r in rows] == ["HiPP", "uniform", "wanda", "dense"] * 3
    for pref in {r["preference"] for r in rows}:
        hipp, uniform, wanda, dense = (r for r in rows if r["preference"] == pref)
        assert dense["sparsity"] == 0.0 and all(0.0 <= r[k] <= 100.0 for r in (hipp, dense) for k in ("rob_acc", "util_acc"))
        assert abs(uniform["sparsity"] - hipp["sparsity"]) < 0.05
        # Wanda's plan is uniform: with the environment's rows it is the same plan, scored the same
        assert wanda["widths"] == uniform["widths"] and wanda["rob"] == uniform["rob"]


def test_given_widths_are_scored_beside_the_allocations(policy: tuple[Path, Path], tmp_path: Path) -> None:
    proc = _run(*policy, tmp_path, "", "--preferences", "0.9,0.1,0", "--plan", "64,256,256,64", "--plan", "256,64,64,256")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "plan_reward.json").read_text())
    assert [r["allocation"] for r in rows] == ["HiPP", "uniform", "given 64,256,256,64", "given 256,64,64,256", "dense"]
    first, second = rows[2], rows[3]
    assert first["widths"] == [64, 256, 256, 64] and first["sparsity"] == pytest.approx(0.375)
    assert (first["rob"], first["util"]) != (second["rob"], second["util"])  # the widths, not the label, are scored
    bad = _run(*policy, tmp_path, "", "--plan", "64,x")
    assert bad.returncode != 0 and "comma-separated integers" in bad.stderr


def test_preferences_by_hand() -> None:
    parse = load_benchmark("plan_reward").parse_preferences
    assert parse("0.1,0.9,0;0.9,0.1,0") == {"(0.1, 0.9, 0)": (0.1, 0.9, 0.0), "(0.9, 0.1, 0)": (0.9, 0.1, 0.0)}
    assert len(parse(None)) == 3
    from hipp_torchprune.errors import HippError

    with pytest.raises(HippError, match="3 weights"):
        parse("0.5,0.5")


def test_a_method_without_mlp_widths_is_refused(policy: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("hipp_baselines")
    proc = _run(*policy, tmp_path, "slicegpt")
    assert proc.returncode != 0 and "has no MLP widths" in proc.stderr


def test_rank_agreement_by_hand() -> None:
    rank_agreement = load_benchmark("reward_ranking").rank_agreement
    rows = [{"s": 1.0, "acc": 10.0}, {"s": 2.0, "acc": 30.0}, {"s": 3.0, "acc": 20.0}]
    assert rank_agreement(rows, "s", "acc") == pytest.approx(0.5)  # ranks (1,2,3) vs (1,3,2)
    assert rank_agreement(rows, "s", "s") == pytest.approx(1.0)
    assert rank_agreement(rows[:2], "s", "acc") != rank_agreement(rows[:2], "s", "acc")  # nan under 3 rows


def test_moved_widths_by_hand() -> None:
    moved_widths = load_benchmark("reward_ranking").moved_widths
    assert moved_widths((64, 128), 32, 8) == [("1->0 x32", (96, 96))]  # nothing moves into a full layer
    assert moved_widths((16, 64, 128), 32, 8) == [("0->1 x8", (8, 72, 128)), ("1->0 x32", (48, 32, 128)),
                                                  ("2->0 x32", (48, 64, 96)), ("2->1 x32", (16, 96, 96))]
    for _, widths in moved_widths((40, 80, 120), 24, 8):
        assert sum(widths) == 240 and min(widths) >= 8 and max(widths) <= 120
    assert moved_widths((64, 64), 32, 8, caps=(128, 128)) == [("0->1 x32", (32, 96)), ("1->0 x32", (96, 32))]


def test_reward_ranking_scores_every_allocation_on_both_splits(policy: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("hipp_baselines")
    world, pol = policy
    env = {k: v for k, v in os.environ.items() if k != "HIPP_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reward_ranking.py"), "--model", "tiny-llava",
                           "--policy", str(pol), "--data", str(world), "--out", str(tmp_path), "--methods", "wanda",
                           "--preference", "pope-heavy", "--calib-n", "2", "--reward-limit", "4"],
                          cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "reward_ranking.json").read_text())
    names = [r["allocation"] for r in rows]
    assert names[0] == "dense" and names[1] == "HiPP (pope-heavy)" and names[-1].startswith("sensitivity @")
    assert rows[0]["sparsity"] == 0.0 and all(r["sparsity"] > 0 for r in rows[1:])
    for r in rows:  # a log-likelihood is <= 0; accuracies are percentages
        assert r["rob_loglik"] <= 0 and r["util_loglik"] <= 0 and 0 <= r["rob_test"] <= 100
    assert '"objective": "rob"' in proc.stdout and '"objective": "util"' in proc.stdout


def test_the_refit_split_decides_what_the_refitted_plans_score(policy: tuple[Path, Path], tmp_path: Path) -> None:
    """``--reconstruct lstsq`` scores the policy's plans refitted, fitted on ``--refit-split``: the
    dense model is unchanged, the pruned plans are not."""
    runs = {}
    for split in ("train", "calibration"):
        out = tmp_path / split
        proc = _run(*policy, out, "", "--reconstruct", "lstsq", "--refit-split", split,
                    "--preferences", "0.1,0.9,0;0.9,0.1,0")
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[split] = json.loads((out / "plan_reward.json").read_text())
    train, calibration = runs["train"], runs["calibration"]
    assert [r["allocation"] for r in train] == ["HiPP", "uniform", "dense"] * 2
    for a, b in zip(train, calibration):
        assert a["widths"] == b["widths"]
        if a["allocation"] == "dense":
            assert a["rob"] == b["rob"] and a["util"] == b["util"]
        else:
            assert (a["rob"], a["util"]) != (b["rob"], b["util"])
