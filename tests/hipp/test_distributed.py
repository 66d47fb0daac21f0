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
