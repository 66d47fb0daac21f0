"""benchmarks/ablations.py: the row configs, pinning by hand, and a run on tiny-llava."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark


def test_each_row_changes_one_part() -> None:
    bench = load_benchmark("ablations")
    from hipp_torchprune.hipp.trainer import TrainConfig

    base = TrainConfig()
    changed = {row: bench.row_config(row, base, 3) for row in bench.ROWS}
    assert all(c.seed == 3 for c in changed.values())
    assert changed["full"] == changed["margin"] == TrainConfig(seed=3)  # margin changes the rewards only
    assert not changed["no-gate"].gate.enabled and changed["full"].gate.enabled
    assert (changed["paper-gate"].gate.binning, changed["paper-gate"].gate.side) == ("pooled", "both")
    assert changed["flat"].policy_kind == "flat" and changed["flat"].policy.budget_input == "backbone"
    assert not changed["no-vs"].state.visual_sensitivity and changed["no-vs"].state.grounding_drops
    assert (changed["anchors"].sampler, changed["dirichlet"].sampler) == ("anchors", "dirichlet")
    assert (changed["dense-cap"].objective_cap, changed["full"].objective_cap) == ("dense", "none")
    assert changed["robustness-cap"].objective_cap == "robustness"
    capped = TrainConfig(objective_cap="dense")  # a table whose full method has the cap prices removing it
    assert bench.row_config("no-cap", capped, 0).objective_cap == "none"


def test_claim_keeps_a_policy_directory_to_one_live_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    bench, policy = load_benchmark("ablations"), tmp_path / "p"
    with bench.claimed(policy) as mine, bench.claimed(policy) as again:
        assert mine and not again  # one holder, in this process too
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(Path(bench.__file__).parent), str(policy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with bench.claimed(policy) as mine:
            assert not mine and (policy / ".training").read_text() == str(holder.pid)
    finally:
        holder.kill()  # dies holding it: no clean-up runs
        holder.wait()
    with bench.claimed(policy) as mine:  # the kernel dropped the dead holder's lock
        assert mine and (policy / ".training").read_text() == str(os.getpid())


#: A process that claims a directory, says so, and waits to be killed.
HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import ablations
with ablations.claimed(__import__("pathlib").Path(sys.argv[2])) as mine:
    print("held" if mine else "not held", flush=True)
    time.sleep(600)
"""


class _Env:
    """The two things pinned_widths reads from a plan environment, for a 3-layer model."""

    widths, row_params, r_max = (100, 100, 100), (3, 3, 3), 0.9

    @staticmethod
    def widths_for(ratios):  # no rounding
        return tuple(round(w * (1 - r)) for w, r in zip(_Env.widths, ratios))


def test_pinned_widths_by_hand() -> None:
    pinned_widths = load_benchmark("ablations").pinned_widths
    assert pinned_widths(_Env, (0.1, 0.2, 0.3), None) == (90, 80, 70)  # the plan's own sparsity
    assert pinned_widths(_Env, (0.1, 0.2, 0.3), 0.4) == (80, 60, 40)  # scaled by 2: mean ratio 0.4
    # 0.9 caps the last layer; the overflow goes to the others in proportion: c * (0.1 + 0.2) = 0.6
    assert pinned_widths(_Env, (0.1, 0.2, 0.6), 0.5) == (80, 60, 10)


def test_a_run_on_tiny_llava(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("ablations")
    world = make_world(0, 8)
    out = tmp_path / "abl"
    flags = ["--model", "tiny-llava", "--data", str(world), "--test-data", str(world), "--out", str(out),
             "--rows", "full,flat", "--seeds", "0,1", "--steps", "1", "--group", "2", "--round-to", "16",
             "--budget", "0.2,0.5", "--reward-limit", "4", "--calib-n", "2", "--sparsity", "0.3"]
    bench.main(flags + ["--train-only"])
    assert sorted(p.parent.name + "/" + p.name for p in out.glob("*/seed-*")) == [
        "flat/seed-0", "flat/seed-1", "full/seed-0", "full/seed-1"]
    assert not (out / "ablations.json").exists()
    before = (out / "full" / "seed-0" / "policy.safetensors").read_bytes()
    bench.main(flags)  # the trained policies are reused, then scored
    assert (out / "full" / "seed-0" / "policy.safetensors").read_bytes() == before
    records = json.loads((out / "ablations.json").read_text())["records"]
    assert [(r["row"], r["seed"]) for r in records] == [("full", 0), ("full", 1), ("flat", 0), ("flat", 1)]
    for r in records:  # pinned near 0.3 whatever each budget head chose; accuracies are percentages
        assert r["sparsity"] == pytest.approx(0.3, abs=0.1) and 0 <= r["pope_adv"] <= 100 and 0 <= r["sqa"] <= 100
    printed = capsys.readouterr().out
    assert "| full | 2 |" in printed and "| flat | 2 |" in printed
