"""Calibration, plan scoring and ``hipp train`` over 2 CPU processes (gloo) equal 1 process, bit
for bit: batches are the same on any process count and every reduction runs in a fixed order.

Both sides run as fresh processes with one torch thread each, so nothing an earlier test left in
the pytest process (thread count, RNG, flags) reaches either side; only the process count differs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, args: list[str]) -> list[subprocess.Popen]:
    """Start ``python ARGS`` on ``n`` processes (a gloo group when ``n`` > 1), one torch thread each."""
    port = str(_free_port())
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")])))
    procs = []
    for rank in range(n):
        env = dict(base) if n == 1 else {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                         "WORLD_SIZE": str(n), "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _run_one_and_two(one: list[str], two: list[str]) -> None:
    """Run ``one`` on a single process and ``two`` on two processes, side by side; all must succeed."""
    procs = _launch(1, one) + _launch(2, two)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]


def test_two_processes_match_one(tmp_path: Path) -> None:
    from hipp_torchprune.world import build_world

    world = tmp_path / "w"
    build_world(world, seed=5, n_images=200)
    worker = ["-m", "tests.hipp.dist_worker", str(world)]
    _run_one_and_two([*worker, str(tmp_path / "one.json")], [*worker, str(tmp_path / "two.json")])
    single, dist = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert single["profile"]["n_samples"] == 8 and len(single["raw"]) == 5
    for key in ("in_sq", "n_tokens", "profile", "scores", "raw", "phi"):
        assert dist[key] == single[key], key


def test_hipp_train_on_two_processes_matches_one(tmp_path: Path, make_world) -> None:
    """``hipp train`` launched on 2 gloo processes (as accelerate launch / torchrun would) logs the
    same numbers as a single process at every step and saves the same policy, bit for bit."""
    from hipp_torchprune.hipp.policy_io import load_policy, query

    world = make_world(5, 200)
    args = ["-m", "hipp_torchprune.cli", "train", "--model", "tiny-llava", "--data", str(world), "--steps", "2",
            "--group", "3", "--prefs", "2", "--budget", "0.2,0.5", "--round-to", "16", "--calib-n", "4",
            "--reward-limit", "6"]
    _run_one_and_two([*args, "--out", str(tmp_path / "one")], [*args, "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / d / "train_log.json").read_text()) for d in ("one", "two"))
    assert len(one) == 3 and {"reward", "comp_raw", "phi", "loss", "anchor_reward"} <= one[-1].keys()
    assert one == two
    weights = [load_file(tmp_path / d / "policy.safetensors") for d in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for pref in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        plans = [query(load_policy(tmp_path / d), pref) for d in ("one", "two")]
        assert plans[0].widths == plans[1].widths
