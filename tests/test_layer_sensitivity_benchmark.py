"""benchmarks/layer_sensitivity.py: its summary by hand, and a run on tiny-llava."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmark_scripts import ROOT, load_benchmark


def _script() -> ModuleType:
    return load_benchmark("layer_sensitivity")


def test_summary_by_hand() -> None:
    drops = {"pope_adversarial": [0.3, 0.0, 0.1, 0.05], "scienceqa": [0.0, 0.2, 0.1, 0.05]}
    feature = [[0.9, 0.0], [0.1, 0.8], [0.2, 0.1], [0.0, 0.3]]
    out = _script().summary(drops, [0.4, 0.3, 0.2, 0.1], feature)
    assert (out["most_critical_pope_adv"], out["most_critical_sqa"]) == (0, 1)
    assert (out["most_critical_margin_feature_pope_adv"], out["most_critical_margin_feature_sqa"]) == (0, 1)
    # POPE ranks 4 1 3 2; sensitivity 4 3 2 1 (sum d^2 = 6); feature 4 2 3 1 (2); ScienceQA 1 4 3 2 (18)
    assert out["spearman_visual_sensitivity_vs_pope_adv"] == pytest.approx(1 - 6 * 6 / 60)
    assert out["spearman_margin_feature_vs_pope_adv"] == pytest.approx(1 - 6 * 2 / 60)
    assert out["spearman_pope_adv_vs_sqa"] == pytest.approx(1 - 6 * 18 / 60)


def test_runs_on_tiny_llava(make_world, tmp_path: Path) -> None:
    world = make_world(0, 40)
    out = tmp_path / "ls.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layer_sensitivity.py"), "--model", "tiny-llava",
                           "--data", str(world), "--split", "calibration", "--limit", "6", "--calib-n", "4",
                           "--round-to", "16", "--feature-limit", "4", "--out", str(out)],
                          cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    ratio = result["ratios"]["0.75"]
    assert len(ratio["drops"]["pope_adversarial"]) == len(ratio["margin_feature"]) == len(result["visual_sensitivity"]) == 4
    assert all(len(f) == 2 for f in ratio["margin_feature"])
    assert 0 <= ratio["most_critical_margin_feature_pope_adv"] < 4
