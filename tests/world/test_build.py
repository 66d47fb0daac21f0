"""World generation: determinism, manifest, split disjointness, atomic writes, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hipp_torchprune.cli import main
from hipp_torchprune.errors import DataError
from hipp_torchprune.world.build import build_world
from hipp_torchprune.world.io import content_hash


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("w") / "world"
    return out, build_world(out, seed=3, n_images=40)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical(world: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = world
    build_world(tmp_path / "again", seed=3, n_images=40)
    assert _files(out) == _files(tmp_path / "again")


def test_different_seed_differs(world: tuple[Path, dict], tmp_path: Path) -> None:
    m = build_world(tmp_path / "other", seed=4, n_images=40)
    assert m["content_hash"] != world[1]["content_hash"]


def test_manifest_contents(world: tuple[Path, dict]) -> None:
    out, m = world
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert m["seed"] == 3 and m["n_images"] == 40
    assert sum(s["images"] for s in m["splits"].values()) == 40
    assert set(m["splits"]) == {"train", "calibration", "test"}
    assert len(m["categories"]) >= 16
    assert sum(m["category_frequencies"].values()) > 40
    assert m["content_hash"] == content_hash(out, m["files"])
    for split, s in m["splits"].items():
        rows = pq.read_table(out / split / "pope.parquet").num_rows
        assert rows == sum(s["pope"].values()) == 3 * 6 * s["pope_eligible_images"]


def test_splits_do_not_share_images(world: tuple[Path, dict]) -> None:
    out, _ = world
    seen: dict[str, set[str]] = {}
    for split in ("train", "calibration", "test"):
        t = pq.read_table(out / split / "scenes.parquet").to_pylist()
        seen[split] = {hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in t}
        assert len(seen[split]) == len(t)
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["calibration"])
    assert not (seen["test"] & seen["calibration"])


def test_scenes_keep_annotations(world: tuple[Path, dict]) -> None:
    out, _ = world
    rows = pq.read_table(out / "test" / "scenes.parquet").to_pylist()
    assert all(1 <= len(r["objects"]) <= 6 for r in rows)
    assert all(len(r["objects"][0]["bbox"]) == 4 for r in rows)


def test_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hipp_torchprune.world.io as wio

    def broken(table, where, **kw):  # noqa: ANN001, ANN003 - pyarrow signature
        Path(where).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(wio.pq, "write_table", broken)
    with pytest.raises(KeyboardInterrupt):
        build_world(tmp_path / "w", seed=1, n_images=40)
    assert list((tmp_path / "w").rglob("*.parquet")) == []
    assert [p for p in (tmp_path / "w").rglob("*") if p.is_file()] == []


def test_too_few_images_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 3"):
        build_world(tmp_path / "w", seed=1, n_images=2)


def test_cli_world_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["world", "build", "--out", str(tmp_path / "w"), "--seed", "5", "--images", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seed"] == 5 and (tmp_path / "w" / "test" / "pope.parquet").is_file()


def test_cli_world_build_like_a_model_takes_its_training_world(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.data import world_render, world_version
    from hipp_torchprune.world.scenes import SceneConfig

    model = tmp_path / "m"
    model.mkdir()
    (model / "train_summary.json").write_text(json.dumps(
        {"world": {"version": 2, "jitter": 0.5, "faint": 0.1, "noise": 8.0, "companion": 0.7, "occluder": 0.6}}))
    assert main(["world", "build", "--out", str(tmp_path / "w"), "--seed", "5", "--images", "30",
                 "--like", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert (world_version(tmp_path / "w"), world_render(tmp_path / "w")) == (
        2, SceneConfig(jitter=0.5, faint=0.1, noise=8.0, companion=0.7, occluder=0.6))
    for extra, message in ((["--version", "2"], "drop --version"), (["--noise", "4"], "drop --noise"),
                           ([], "does not exist")):
        like = str(model if extra else tmp_path / "none")
        assert main(["world", "build", "--out", str(tmp_path / "x"), "--seed", "5", "--like", like, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written
