"""benchmarks/tradeoff.py: the summary by hand, the random plans, and a run on tiny-llava."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


def test_summary_by_hand() -> None:
    m = load_benchmark("tradeoff").summary([90.0, 92.0], [88.0, 85.0])
    assert m["sqa_cost_of_best_pope"] == 3.0 and m["pope_cost_of_best_sqa"] == 2.0
    assert m["r"] == pytest.approx(-1.0) and m["pope_mean"] == 91.0 and m["sqa_std"] == pytest.approx(2.1213, abs=1e-4)
    same = load_benchmark("tradeoff").summary([90.0, 92.0, 91.0], [85.0, 88.0, 86.0])
    assert same["sqa_cost_of_best_pope"] == 0.0 and same["pope_cost_of_best_sqa"] == 0.0  # one plan best for both


def test_an_unknown_refit_setting_is_refused() -> None:
    with pytest.raises(SystemExit):
        load_benchmark("tradeoff").parse_args(["--data", "w", "--out", "o", "--reconstruct", "none,obs"])
    assert load_benchmark("tradeoff").parse_args(["--data", "w", "--out", "o", "--reconstruct", "lstsq"]).reconstruct \
        == ["lstsq"]


def test_random_ratios_are_seeded_dirichlet_draws() -> None:
    ratios = load_benchmark("tradeoff").random_ratios
    a, b, c = ratios(5, 4, 0), ratios(5, 4, 0), ratios(5, 4, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (5, 4) and torch.allclose(a.sum(1), torch.ones(5, dtype=torch.float64)) and bool((a > 0).all())


def test_a_run_on_tiny_llava(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("tradeoff")
    world = make_world(0, 8)
    out = tmp_path / "t"
    bench.main(["--model", "tiny-llava", "--data", str(world), "--out", str(out), "--sparsity", "0.3,0.5",
                "--plans", "3", "--round-to", "16", "--calib-n", "2"])
    records = json.loads((out / "tradeoff.json").read_text())["records"]
    assert [(r["reconstruct"], r["target"]) for r in records] == [
        (setting, s) for setting in ("none", "lstsq") for s in (0.3, 0.5) for _ in range(3)]
    for r in records:  # pinned near the target (rounded to 16 rows), scored as percentages
        assert r["sparsity"] == pytest.approx(r["target"], abs=0.07) and 0 <= r["pope_adv"] <= 100
    none, lstsq = records[:6], records[6:]
    assert [r["widths"] for r in none] == [r["widths"] for r in lstsq]  # the same plans under each setting
    assert len({tuple(r["widths"]) for r in none[:3]}) > 1
    printed = capsys.readouterr().out
    assert printed.count("| 30.0 |") == 2 and printed.count("| 50.0 |") == 2
