"""benchmarks/refit.py: the runs it makes, and a run on tiny-llava with and without the refit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

from tests.benchmark_scripts import ROOT, load_benchmark


def test_runs_are_the_baselines_at_each_sparsity_then_the_queries() -> None:
    script = load_benchmark("refit")
    ns = Namespace(sparsity="0.3,0.5", methods="uniform,flap", preferences="0.1,0.9,0;0.9,0.1,0")
    assert script.runs(ns) == [("uniform", 0.3), ("flap", 0.3), ("uniform", 0.5), ("flap", 0.5),
                               ("hipp", (0.1, 0.9, 0.0)), ("hipp", (0.9, 0.1, 0.0))]
    assert script.runs(Namespace(sparsity="0.3", methods="uniform", preferences="")) == [("uniform", 0.3)]


def test_runs_on_tiny_llava(make_world, tmp_path: Path) -> None:
    world = make_world(0, 8)
    env = {**os.environ, "HIPP_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "refit.py"), "--model", "tiny-llava",
                           "--data", str(world), "--methods", "uniform", "--sparsity", "0.4", "--preferences", "",
                           "--limit", "4", "--calib-n", "2", "--round-to", "16"], check=False, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    runs = [json.loads(line) for line in lines if line.startswith('{"method": "uniform"')]
    assert [r["score"] for r in runs] == ["none", "lstsq"]
    assert runs[0]["widths"] == runs[1]["widths"] and runs[0]["widths"] != []
    assert any(line.startswith("| uniform | 40.0 |") for line in lines)
    decision = json.loads(lines[-1])
    assert decision["recommended"] in ("none", "lstsq") and set(decision["calibration_means"]) == {"none", "lstsq"}
