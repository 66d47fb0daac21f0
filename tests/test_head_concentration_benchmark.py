"""benchmarks/head_concentration.py: the share quantile by hand, and a run on a one-step tiny policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark, train_one_step_policy


def test_a_layer_with_a_tiny_concentration_never_gets_a_share() -> None:
    quantile = load_benchmark("head_concentration").share_quantile
    shares = quantile(torch.tensor([50.0, 0.1, 50.0]), 2000, 0)
    assert shares[1] < 0.05 and min(shares[0], shares[2]) > 0.5  # Beta(0.1, 100) marginal: p99 about 0.015
    assert quantile(torch.tensor([1.0, 1.0]), 500, 3) == quantile(torch.tensor([1.0, 1.0]), 500, 3)  # seeded


def test_a_run_on_a_one_step_policy(make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = train_one_step_policy(make_world(0, 8), tmp_path / "p")
    records = load_benchmark("head_concentration").main(
        ["--policy", str(policy), "--out", str(tmp_path / "c"), "--preferences", "0.1,0.6,0.3;1,0,0", "--samples", "200"])
    assert [r["preference"] for r in records] == [[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]]
    for r in records:
        assert len(r["concentration"]) == len(r["p99_share"]) == 4 and min(r["concentration"]) > 0
        assert sum(r["mean_share"]) == pytest.approx(1.0)
        assert all(m <= p for m, p in zip(r["mean_share"], r["p99_share"]))  # a 99th percentile above the mean
    for r in records:  # one step from a fresh head: PolicyConfig.concentration (30) on every layer, near enough
        assert r["concentration"] == pytest.approx([30.0] * 4, rel=0.05)
    assert json.loads((tmp_path / "c" / "concentration.json").read_text())["records"] == records
    assert capsys.readouterr().out.count("alpha") == 2
