"""The lmms-eval command line against the hipp tasks and the ``hipp_vlm`` wrapper, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make test` installs it; see docs/lmms-eval.md)")
pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")

LMMS_EVAL = shutil.which("lmms-eval", path=str(Path(sys.executable).parent)) or "lmms-eval"


def run_lmms_eval(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``lmms-eval eval ARGS`` offline, with the datasets cache under ``tmp``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([LMMS_EVAL, "eval", *args], capture_output=True, text=True, env=env, timeout=300)


def hipp_eval(model: Path, world: Path, tasks: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    """``hipp eval --json EXTRA`` in-process."""
    from hipp_torchprune.cli import main

    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(world), "--tasks", tasks, "--json",
                 "--dtype", "float64", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_matches_hipp_eval(dense_dir: Path, world: Path, tasks_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    # float64 and one row a batch on both sides: float32 summation order alone moves a trained
    # model's margins by ~1e-6, and so does left padding (the real tokens' absolute positions shift
    # with the batch's longest row, and RoPE is shift-invariant only up to its float32 angles; the
    # shipped model's ScienceQA margin moved by 2.4e-6 between batch 1 and 16, docs/notes.md)
    proc = run_lmms_eval("--model", "hipp_vlm", "--model_args", f"pretrained={dense_dir},dtype=float64,batch_size=1",
                         "--tasks", "hipp_pope_adversarial,hipp_scienceqa_img", "--include_path", str(tasks_dir),
                         "--output_path", str(out), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.rglob("*_results.json"))
    assert len(files) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(files[0].read_text())
    assert {"results", "configs", "versions", "n-samples", "config"} <= set(report)
    expected = hipp_eval(dense_dir, world, "pope_adversarial,scienceqa_img", capsys, "--batch-size", "1")
    pairs = {"hipp_pope_adversarial": "pope_adversarial", "hipp_scienceqa_img": "scienceqa_img"}
    for lmms_task, hipp_task in pairs.items():
        got, want = report["results"][lmms_task], expected[hipp_task]
        assert report["n-samples"][lmms_task]["effective"] == want["n"] > 0
        for metric, value in want.items():
            if metric != "n":
                assert got[f"{metric},none"] == pytest.approx(value, abs=1e-9), (lmms_task, metric)
    assert set(report["results"]["hipp_pope_adversarial"]) >= {
        f"{m},none" for m in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "yes_ratio", "margin")}


def test_cli_unknown_task_is_reported(tasks_dir: Path, tmp_path: Path) -> None:
    proc = run_lmms_eval("--model", "hipp_vlm", "--model_args", "pretrained=demo", "--tasks", "hipp_pope_nope",
                         "--include_path", str(tasks_dir), tmp=tmp_path)
    text = proc.stdout + proc.stderr
    assert "Tasks not found: hipp_pope_nope" in text
    assert not list(tmp_path.rglob("*_results.json"))


def test_cli_missing_pretrained_path_names_it(world: Path, tasks_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    proc = run_lmms_eval("--model", "hipp_vlm", "--model_args", f"pretrained={missing}",
                         "--tasks", "hipp_pope_adversarial", "--include_path", str(tasks_dir),
                         "--output_path", str(tmp_path / "out"), tmp=tmp_path)
    text = proc.stdout + proc.stderr
    # lmms-eval prints the traceback itself; the error at its end is ours and says what to do
    last = [line for line in text.splitlines() if line.startswith("hipp_torchprune.errors.")]
    assert last and last[-1].startswith("hipp_torchprune.errors.CheckpointError:"), text[-3000:]
    assert str(missing) in last[-1] and "'demo'" in last[-1]
    assert not list((tmp_path / "out").rglob("*_results.json"))


def test_hipp_lmms_tasks_rejects_missing_columns(world: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from hipp_torchprune.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(world / "test", bad)
    pq.write_table(pq.read_table(bad / "pope.parquet").drop(["question"]), bad / "pope.parquet")
    assert main(["lmms-tasks", "--data", str(bad), "--out", str(tmp_path / "tasks")]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) question" in err and "Traceback" not in err
    assert main(["lmms-tasks", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_written_tasks_point_at_local_parquet(world: Path, tasks_dir: Path) -> None:
    names = sorted(p.stem for p in tasks_dir.glob("*.yaml"))
    assert names == sorted(["hipp_pope", "hipp_pope_adversarial", "hipp_pope_popular", "hipp_pope_random",
                            "hipp_scienceqa_img"])
    text = (tasks_dir / "hipp_pope_adversarial.yaml").read_text()
    assert "dataset_path: parquet" in text and str((world / "test" / "pope.parquet").resolve()) in text
