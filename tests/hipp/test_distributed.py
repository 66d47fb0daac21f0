"""Plan scoring and calibration over 2 CPU processes (gloo) equal 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hipp import dist_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path: Path) -> None:
    from hipp_torchprune.world import build_world

    world = tmp_path / "w"
    build_world(world, seed=5, n_images=200)
    single = dist_worker.run(str(world), None)
    out = tmp_path / "dist.json"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.hipp.dist_worker", str(world), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    dist = json.loads(out.read_text())
    assert dist["sensitivity"] == pytest.approx(single["sensitivity"], abs=1e-5)
    assert sum(dist["raw"], []) == pytest.approx(sum(single["raw"], []), abs=1e-4)
    assert dist["phi"] == pytest.approx(single["phi"], abs=1e-6)


def test_hipp_train_on_two_processes_matches_one(tmp_path: Path, make_world) -> None:
    """``hipp train`` launched on 2 gloo processes (as accelerate launch / torchrun would) sees the
    rewards a single process sees, step by step, and ends with the same plans.

    (Weights are not compared bitwise: Adam amplifies 1e-9 gradient differences from the
    all-reduced calibration sums in near-zero gradient coordinates.)"""
    from hipp_torchprune.cli import main
    from hipp_torchprune.hipp.policy_io import load_policy, query

    world = make_world(5, 200)
    args = ["train", "--model", "tiny-llava", "--data", str(world), "--steps", "2", "--group", "3", "--prefs", "2",
            "--budget", "0.2,0.5", "--round-to", "16", "--calib-n", "4", "--reward-limit", "6"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "hipp_torchprune.cli", *args, "--out", str(tmp_path / "two")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    one, two = (json.loads((tmp_path / d / "train_log.json").read_text()) for d in ("one", "two"))
    assert [r.keys() for r in one] == [r.keys() for r in two] and len(one) == 3
    for a, b in zip(one, two):
        for key in ("reward", "rob_raw", "util_raw", "comp_raw", "sparsity", "phi", "anchor_reward"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-4), key
    for pref in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        plans = [query(load_policy(tmp_path / d), pref) for d in ("one", "two")]
        assert plans[0].widths == plans[1].widths
