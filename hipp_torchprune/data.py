"""Loader for lmms-lab-format POPE / ScienceQA parquet (real or synthetic) and lmms-eval prompts.

A data directory may be a proving-ground world (``manifest.json`` + ``test/pope.parquet``), one
split of it (``pope.parquet``, ``scienceqa.parquet``), or a download of ``lmms-lab/POPE`` /
``lmms-lab/ScienceQA`` (``POPE/data/test-*.parquet``, ``ScienceQA/data/test-*.parquet``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hipp_torchprune.errors import DataError

TaskFamily = Literal["pope", "mc"]

POPE_COLUMNS: tuple[str, ...] = ("question_id", "question", "answer", "image_source", "image", "category")
SCIENCEQA_COLUMNS: tuple[str, ...] = ("image", "question", "choices", "answer", "hint")
POPE_POST_PROMPT = "\nAnswer the question using a single word or phrase."
SCIENCEQA_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    Attributes:
        name: task name as given on the command line.
        family: "pope" (yes/no) or "mc" (multiple choice).
        category: POPE category filter (random / popular / adversarial) or None for all rows.
    """

    name: str
    family: TaskFamily
    category: str | None = None


TASKS: dict[str, TaskSpec] = {
    "pope_random": TaskSpec("pope_random", "pope", "random"),
    "pope_popular": TaskSpec("pope_popular", "pope", "popular"),
    "pope_adversarial": TaskSpec("pope_adversarial", "pope", "adversarial"),
    "pope": TaskSpec("pope", "pope", None),
    "scienceqa": TaskSpec("scienceqa", "mc", None),
    "scienceqa_img": TaskSpec("scienceqa_img", "mc", None),
}


def parse_tasks(tasks: str | Sequence[str]) -> list[TaskSpec]:
    """Parse a comma-separated task list (or a sequence of names); unknown names raise DataError."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise DataError("no task given; valid tasks: " + ", ".join(TASKS))
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise DataError(f"unknown task name(s) {', '.join(map(repr, unknown))}; valid tasks: "
                        + ", ".join(TASKS))
    return [TASKS[n] for n in names]


def _candidates(root: Path, family: TaskFamily, split: str) -> list[list[Path]]:
    stem, hub = ("pope", "POPE") if family == "pope" else ("scienceqa", "ScienceQA")
    return [
        [root / f"{stem}.parquet"],
        [root / split / f"{stem}.parquet"],
        sorted((root / hub / "data").glob(f"{split}-*.parquet")),
        sorted((root / hub).glob(f"{split}-*.parquet")),
        sorted((root / "data").glob(f"{split}-*.parquet")),
    ]


def resolve_task_files(data_dir: str | Path, family: TaskFamily, split: str = "test") -> list[Path]:
    """The parquet file(s) holding a task family's rows in ``data_dir``; DataError if none."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory {str(root)!r} does not exist")
    for files in _candidates(root, family, split):
        found = [f for f in files if f.is_file()]
        if found:
            return found
    stem = "pope" if family == "pope" else "scienceqa"
    raise DataError(f"no {stem} parquet found in {str(root)!r} (looked for {stem}.parquet, "
                    f"{split}/{stem}.parquet and lmms-lab layouts)")


def check_columns(path: Path, required: Sequence[str]) -> None:
    """Raise DataError unless ``path`` is a readable parquet file with the ``required`` columns."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (expected the lmms-lab layout: "
                        f"{', '.join(required)})")


def read_rows(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Read a parquet file into row dicts, checking ``required`` columns exist."""
    import pyarrow.parquet as pq

    check_columns(path, required)
    return pq.read_table(path).to_pylist()


def decode_image(image: Any, where: str) -> Any:
    """Decode an lmms-lab image struct ``{bytes, path}`` to an RGB PIL image; DataError on failure."""
    from PIL import Image

    data = image.get("bytes") if isinstance(image, dict) else None
    if not data:
        raise DataError(f"{where}: image has no bytes")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types
        raise DataError(f"{where}: unreadable image ({exc})") from exc
    return img.convert("RGB")


def load_task_docs(data_dir: str | Path, task: TaskSpec, split: str = "test",
                   limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of one task (POPE rows filtered by category; ScienceQA rows that have an image).

    Images stay encoded; decode them with :func:`decode_image`. Each row gets ``_where``
    ("file:row") for error messages and ``_image_key`` (a key shared by rows of one image).
    """
    if task.family == "pope":
        docs = []
        for path in resolve_task_files(data_dir, "pope", split):
            for i, row in enumerate(read_rows(path, POPE_COLUMNS)):
                if task.category is None or row["category"] == task.category:
                    row["_where"], row["_image_key"] = f"{path}:row {i}", f"{path}:{row['image_source']}"
                    docs.append(row)
    else:
        docs = []
        for path in resolve_task_files(data_dir, "mc", split):
            for i, row in enumerate(read_rows(path, SCIENCEQA_COLUMNS)):
                if row["image"] is not None:
                    row["_where"], row["_image_key"] = f"{path}:row {i}", f"{path}:row {i}"
                    docs.append(row)
    return docs[:limit] if limit is not None else docs


def pope_prompt(doc: dict[str, Any]) -> str:
    """lmms-eval POPE prompt: the question + "\\nAnswer the question using a single word or phrase."."""
    return f"{doc['question'].strip()}{POPE_POST_PROMPT}"


def option_letters(n: int) -> list[str]:
    """The first ``n`` option letters ("A", "B", ...)."""
    return [chr(ord("A") + i) for i in range(n)]


def scienceqa_prompt(doc: dict[str, Any]) -> str:
    """lmms-eval scienceqa_img prompt: optional ``Context: {hint}\\n``, question, lettered options."""
    context = f"Context: {doc['hint']}\n" if doc.get("hint") else ""
    choices = "\n".join(f"{l}. {c}" for l, c in zip(option_letters(len(doc["choices"])), doc["choices"]))
    return f"{context}{doc['question']}\n{choices}{SCIENCEQA_POST_PROMPT}"


def load_scenes(data_dir: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Scene annotations (``scenes.parquet``) of one split of a proving-ground world."""
    root = Path(data_dir)
    path = root / split / "scenes.parquet" if (root / split).is_dir() else root / "scenes.parquet"
    if not path.is_file():
        raise DataError(f"{path}: scene annotations not found (is this a proving-ground world?)")
    return read_rows(path, ("image_source", "image", "scene_type", "objects"))


def _world_field(data_dir: str | Path, read: Any, default: Any) -> Any:
    """``read(manifest)`` of a world's ``manifest.json`` (``default`` without one); a manifest that
    cannot be read that way is a :class:`DataError`."""
    import json

    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return default
    try:
        return read(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not a world manifest ({exc})") from exc


def world_render(data_dir: str | Path) -> Any:
    """The :class:`~hipp_torchprune.world.scenes.SceneConfig` a proving-ground world was rendered
    with (its manifest's ``jitter``, ``faint`` and ``noise``; each 0 when absent), so re-rendered
    training scenes look like its images."""
    from hipp_torchprune.world.scenes import SceneConfig

    return _world_field(data_dir, SceneConfig.from_manifest, SceneConfig())


def world_version(data_dir: str | Path) -> int:
    """The generator version of a proving-ground world (its manifest's ``version``; 1 for worlds
    written before versions existed, and for directories without a manifest)."""
    return _world_field(data_dir, lambda m: int(m.get("version") or str(m.get("format", "hipp-world/1"))
                                                .rpartition("/")[2]), 1)
