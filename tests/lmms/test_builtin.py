"""``hipp lmms-tasks --builtin``: lmms-eval's own POPE / ScienceQA-IMG tasks, unchanged, on local data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make test` installs it; see docs/lmms-eval.md)")
pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")

import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from hipp_lmms.builtin import BUILTIN_TASKS, builtin_yaml, lmms_eval_tasks_dir  # noqa: E402

from hipp_torchprune.data import load_task_docs  # noqa: E402
from hipp_torchprune.errors import DataError  # noqa: E402
from tests.lmms.test_cli import hipp_eval, run_lmms_eval  # noqa: E402

LOCAL_NAMES = ["local_pope", "local_pope_adv", "local_pope_pop", "local_pope_random", "local_scienceqa_img"]


def _write(data: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    from hipp_torchprune.cli import main

    capsys.readouterr()
    assert main(["lmms-tasks", "--data", str(data), "--out", str(out), "--builtin", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def builtin_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hipp lmms-tasks --builtin`` output for the test world."""
    from hipp_torchprune.cli import main

    out = tmp_path_factory.mktemp("builtin") / "tasks"
    assert main(["lmms-tasks", "--data", str(world), "--out", str(out), "--builtin"]) == 0
    return out


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_builtin_yamls_include_lmms_evals_own_tasks(builtin_dir: Path) -> None:
    assert sorted(p.stem for p in builtin_dir.glob("local_*.yaml")) == sorted(LOCAL_NAMES)
    assert (builtin_dir / "hipp_pope_adversarial.yaml").is_file()  # the hipp tasks come along
    splits = {}
    for task in BUILTIN_TASKS:
        config = _yaml(builtin_dir / f"{task.name}.yaml")
        assert config["include"] == str(lmms_eval_tasks_dir() / task.yaml)
        assert {k: config[k] for k in ("task", "dataset_path", "dataset_name")} == {
            "task": task.name, "dataset_path": "parquet", "dataset_name": None}
        ((split, data_file),) = config["dataset_kwargs"]["data_files"].items()
        assert split == builtin_yaml(task)[1] and Path(data_file) == builtin_dir / "data" / f"{task.name}.parquet"
        splits[task.name] = split
    # lmms-eval 0.7.3 reads one split per POPE category; the generator follows its YAMLs
    assert splits == {"local_pope": "test", "local_pope_adv": "adversarial", "local_pope_pop": "popular",
                      "local_pope_random": "random", "local_scienceqa_img": "test"}
    assert not list(builtin_dir.glob(".staging-*"))


def test_builtin_data_holds_the_rows_hipp_eval_scores(builtin_dir: Path, world: Path) -> None:
    for task in BUILTIN_TASKS:
        table = pq.read_table(builtin_dir / "data" / f"{task.name}.parquet")
        want = load_task_docs(world, task.rows)
        assert table.num_rows == len(want) > 0, task.name
        assert table.column("question").to_pylist() == [d["question"] for d in want]
        assert table.column("answer").to_pylist() == [d["answer"] for d in want]
        features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
        assert features["image"] == {"_type": "Image"}
    pope = pq.read_table(builtin_dir / "data" / "local_pope_adv.parquet")
    assert set(pope.column("category").to_pylist()) == {"adversarial"}


def test_builtin_marks_images_for_datasets(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import load_dataset

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("pope", "scienceqa"):  # the same rows without the `datasets` feature metadata
        pq.write_table(pq.read_table(world / "test" / f"{name}.parquet").replace_schema_metadata(None),
                       bare / f"{name}.parquet")
    assert set(_write(bare, tmp_path / "tasks", capsys)["tasks"]) >= set(LOCAL_NAMES)
    ds = load_dataset("parquet", data_files=str(tmp_path / "tasks" / "data" / "local_pope_adv.parquet"),
                      split="train", cache_dir=str(tmp_path / "cache"))
    assert ds[0]["image"].convert("RGB").size[0] > 0  # what lmms-eval's pope_doc_to_visual calls


def test_builtin_failure_writes_nothing(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.compute as pc
    from hipp_lmms.taskgen import write_tasks

    bad = tmp_path / "bad"
    shutil.copytree(world / "test", bad)
    pope = pq.read_table(bad / "pope.parquet")
    pq.write_table(pope.filter(pc.not_equal(pope["category"], "popular")), bad / "pope.parquet")
    out = tmp_path / "tasks"
    with pytest.raises(DataError, match="local_pope_pop: no rows for hipp task 'pope_popular'"):
        write_tasks(out, bad, builtin=True)
    assert list(out.iterdir()) == []
    with pytest.raises(DataError, match="needs local data"):
        write_tasks(out, None, builtin=True)


def test_missing_lmms_eval_task_is_a_typed_error(world: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from hipp_lmms import builtin
    from hipp_lmms.taskgen import write_tasks

    monkeypatch.setattr(builtin, "lmms_eval_tasks_dir", lambda: tmp_path / "old-lmms-eval" / "tasks")
    with pytest.raises(builtin.BuiltinTaskError, match=r"'pope' has no .*old-lmms-eval/tasks/pope/pope.yaml"):
        write_tasks(tmp_path / "tasks", world, builtin=True)
    assert list((tmp_path / "tasks").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(builtin.BuiltinTaskError, match="needs lmms-eval installed"):
        builtin.lmms_eval_tasks_dir()


def test_builtin_tasks_match_hipp_eval(builtin_dir: Path, world: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out, limit = tmp_path / "out", 12
    # batch_size in --model_args used to clash with lmms-eval's own --batch_size
    proc = run_lmms_eval("--model", "hipp_vlm", "--model_args", "pretrained=demo,batch_size=4",
                         "--tasks", "local_pope_adv,local_scienceqa_img", "--include_path", str(builtin_dir),
                         "--limit", str(limit), "--log_samples", "--output_path", str(out), tmp=tmp_path)
    files = list(out.rglob("*_results.json"))
    assert proc.returncode == 0 and len(files) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(files[0].read_text())
    want = hipp_eval(Path("demo"), world, "pope_adversarial,scienceqa_img", capsys, "--limit", str(limit))
    got = report["results"]
    assert report["n-samples"]["local_pope_adv"]["effective"] == want["pope_adversarial"]["n"] == limit
    assert report["n-samples"]["local_scienceqa_img"]["effective"] == want["scienceqa_img"]["n"] > 0
    assert got["local_pope_adv"]["pope_accuracy,none"] == pytest.approx(want["pope_adversarial"]["accuracy"], abs=0.01)
    assert got["local_scienceqa_img"]["exact_match,none"] == pytest.approx(want["scienceqa_img"]["accuracy"], abs=0.01)
    # token counts: per request in the samples, totals in the results' usage block
    usage = report["usage"]["by_task"]
    samples = [json.loads(line) for f in out.rglob("*_samples_local_pope_adv.jsonl") for line in f.open()]
    counts = [s["token_counts"][0] for s in samples]
    assert len(counts) == limit and all(c["input_tokens"] > 0 and c["output_tokens"] > 0 for c in counts)
    assert usage["local_pope_adv"]["input_tokens"] == sum(c["input_tokens"] for c in counts)
    assert usage["local_pope_adv"]["output_tokens"] == sum(c["output_tokens"] for c in counts)
