"""CI run of benchmarks/real_shapes.py: the real widths of LLaVA-1.5-7B and Qwen2.5-VL-3B with 2 layers.

The benchmark builds each model from its real configuration, so the parameter count with 2
decoder layers and 2 vision blocks is the full model's count minus the per-layer counts of the
layers left out (checked against the published totals). LLaVA's forward-heavy steps are left to
Qwen here: LLaVA always feeds 576 image tokens, about a minute per bf16 forward on 2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (full parameter count, LM layers, parameters per LM layer, vision blocks, parameters per vision block)
LLAVA = (7_063_427_072, 32, 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096,
         24, 4 * (1024 * 1024 + 1024) + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024)
QWEN = (3_754_622_976, 36, 2 * (2048 * 2048) + 2048 + 2 * (2048 * 256 + 256) + 3 * 2048 * 11008 + 2 * 2048,
        32, 1280 * 3840 + 3840 + 1280 * 1280 + 1280 + 2 * (1280 * 3420 + 3420) + 3420 * 1280 + 1280 + 2 * 1280)
CASES = {
    "llava-1.5-7b": (LLAVA, ["--steps", "build,prune-magnitude,load-pruned,ratio", "--no-forward"]),
    "qwen2.5-vl-3b": (QWEN, ["--image-size", "56"]),
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_real_shapes_with_two_layers(model: str, tmp_path: Path) -> None:
    (full, layers, per_layer, blocks, per_block), extra = CASES[model]
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_shapes.py"), "--model", model,
                           "--layers", "2", "--calib-n", "1", "--repeats", "1", "--workdir", str(tmp_path),
                           "--json", str(out), *extra], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["step"]: r for r in json.loads(out.read_text())["results"]}
    assert all(r["ok"] for r in results.values())
    build = results["build"]
    assert build["parameters"] == full - (layers - 2) * per_layer - (blocks - 2) * per_block
    assert build["tied"] is (model == "qwen2.5-vl-3b")
    assert results["ratio"]["same_kept_channels"] is True
    assert results["load-pruned"]["dtype"] == "torch.bfloat16"
    if "forward" in results["load-pruned"]:
        assert results["load-pruned"]["logits_finite"] and results["load-pruned"]["image_tokens"] == 4
    # a 2-layer model at real widths is about 1 GiB in bf16: no step may hold much more
    assert max(r["peak_anon_gib"] for r in results.values()) < 3.0
    assert sorted(tmp_path.iterdir()) == [out]  # checkpoints went into a temporary directory, now gone
