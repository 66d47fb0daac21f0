"""benchmarks/row_score.py: its declared selection rule by hand, and a run on tiny-llava."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.benchmark_scripts import ROOT, load_benchmark


def _script() -> ModuleType:
    return load_benchmark("row_score")


def _rows(**means: float) -> list[dict]:
    return [{"score": s, "calibration": [m + d, m - d]} for s, m in means.items() for d in (1.0, 3.0)]


def test_selection_rule_by_hand() -> None:
    select = _script().select
    chosen, means = select(_rows(wanda=90.0, **{"wanda-sp": 80.0, "wanda-mix": 90.4}), "wanda", 0.5)
    assert chosen == "wanda" and means == {"wanda": 90.0, "wanda-sp": 80.0, "wanda-mix": 90.4}  # a tie
    assert select(_rows(wanda=90.0, **{"wanda-mix": 90.5}), "wanda", 0.5)[0] == "wanda-mix"
    assert select(_rows(wanda=90.0, **{"wanda-mix": 95.0}), "wanda-mix", 0.5)[0] == "wanda-mix"


def test_runs_on_tiny_llava(make_world, tmp_path: Path) -> None:
    world = make_world(0, 8)
    env = {**os.environ, "HIPP_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "row_score.py"), "--model", "tiny-llava",
                           "--data", str(world), "--methods", "uniform", "--sparsity", "0.3", "--limit", "4",
                           "--calib-n", "2", "--round-to", "16"], check=False, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    runs = [json.loads(line) for line in lines if line.startswith('{"method": "uniform"')]
    assert [r["score"] for r in runs] == ["wanda", "wanda-sp", "wanda-mix"]
    assert len({r["realized"] for r in runs}) == 1 and all(len(r["calibration"]) == 2 for r in runs)
    assert any(line.startswith("| uniform | 30.0 |") for line in lines)
    decision = json.loads(lines[-1])
    assert decision["chosen"] in decision["calibration_means"] and set(decision["calibration_means"]) == {
        "wanda", "wanda-sp", "wanda-mix"}
