"""Load a ``benchmarks/`` script as a module (they import their siblings by bare name)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, with ``benchmarks/`` on the path while it loads."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def run_benchmark(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<name>.py ARGS`` as a user would (from ``benchmarks/``, the repository on
    the path); returns the finished process with its text output."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], cwd=ROOT / "benchmarks",
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def train_one_step_policy(world: Path, out: Path) -> Path:
    """A 1-step ``hipp train`` policy on tiny-llava over ``world`` (group 2, widths rounded to 16,
    budget 0.2–0.5, 4 reward rows), written to ``out``; the benchmarks' fixture policy."""
    from hipp_torchprune.cli import main as cli

    assert cli(["train", "--model", "tiny-llava", "--data", str(world), "--out", str(out), "--steps", "1",
                "--group", "2", "--round-to", "16", "--budget", "0.2,0.5", "--reward-limit", "4", "--calib-n", "2",
                "--no-progress"]) == 0
    return out
