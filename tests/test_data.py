"""Data loading: layouts, validation errors and lmms-eval prompt formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hipp_torchprune.data import (
    TASKS,
    decode_image,
    load_task_docs,
    parse_tasks,
    pope_prompt,
    resolve_task_files,
    scienceqa_prompt,
)
from hipp_torchprune.errors import DataError, HippError
from hipp_torchprune.world.build import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    build_world(out, seed=2, n_images=40)
    return out


def test_pope_prompt_matches_lmms_eval() -> None:
    doc = {"question": "Is there a cup in the image?"}
    assert pope_prompt(doc) == "Is there a cup in the image?\nAnswer the question using a single word or phrase."


def test_scienceqa_prompt_with_and_without_hint() -> None:
    doc = {"hint": "", "question": "How many objects are in the image?", "choices": ["2", "3", "5"]}
    assert scienceqa_prompt(doc) == ("How many objects are in the image?\nA. 2\nB. 3\nC. 5\n"
                                     "Answer with the option's letter from the given choices directly.")
    doc = {"hint": "Anna has the cup.", "question": "Whose object is in the image?", "choices": ["Anna", "Ben"]}
    assert scienceqa_prompt(doc).startswith("Context: Anna has the cup.\nWhose object is in the image?\nA. Anna\nB. Ben\n")


def test_layouts_resolve(world: Path, tmp_path: Path) -> None:
    assert resolve_task_files(world, "pope") == [world / "test" / "pope.parquet"]
    assert resolve_task_files(world / "calibration", "mc") == [world / "calibration" / "scienceqa.parquet"]
    hub = tmp_path / "POPE" / "data"
    hub.mkdir(parents=True)
    shutil.copy(world / "test" / "pope.parquet", hub / "test-00000-of-00001.parquet")
    assert resolve_task_files(tmp_path, "pope") == [hub / "test-00000-of-00001.parquet"]
    with pytest.raises(DataError, match="no scienceqa parquet"):
        resolve_task_files(tmp_path, "mc")


def test_task_filtering_and_limit(world: Path) -> None:
    adv = load_task_docs(world, TASKS["pope_adversarial"])
    assert adv and {d["category"] for d in adv} == {"adversarial"}
    assert len(load_task_docs(world, TASKS["pope"])) == 3 * len(adv)
    assert len(load_task_docs(world, TASKS["scienceqa"], limit=5)) == 5


def test_unknown_task_names_the_task() -> None:
    with pytest.raises(DataError, match="'pope_bogus'.*valid tasks: pope_random"):
        parse_tasks("pope_random,pope_bogus")
    assert issubclass(DataError, HippError)


def test_missing_column_names_file_and_column(world: Path, tmp_path: Path) -> None:
    table = pq.read_table(world / "test" / "pope.parquet").drop_columns(["answer"])
    pq.write_table(table, tmp_path / "pope.parquet")
    with pytest.raises(DataError, match=r"pope\.parquet: missing column\(s\) answer"):
        load_task_docs(tmp_path, TASKS["pope_random"])


def test_unreadable_image_names_file(world: Path, tmp_path: Path) -> None:
    rows = pq.read_table(world / "test" / "pope.parquet").to_pylist()
    rows[0]["image"] = {"bytes": b"not a png", "path": "x.png"}
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(world / "test" / "pope.parquet")),
                   tmp_path / "pope.parquet")
    doc = load_task_docs(tmp_path, TASKS["pope"])[0]
    with pytest.raises(DataError, match=r"pope\.parquet:row 0: unreadable image"):
        decode_image(doc["image"], doc["_where"])
    assert decode_image(load_task_docs(world, TASKS["pope"])[0]["image"], "x").size == (64, 64)


def test_missing_directory() -> None:
    with pytest.raises(DataError, match="does not exist"):
        resolve_task_files("/nonexistent/dir", "pope")
