"""lmms-eval's own POPE and ScienceQA-IMG tasks on local data (``hipp lmms-tasks --builtin``).

lmms-eval 0.7.3's ``pope`` reads ``lmms-lab-encoder/POPE`` split ``test``; ``pope_adv``,
``pope_pop`` and ``pope_random`` read the same dataset with ``dataset_name: Full`` and one split
per category; ``scienceqa_img`` reads ``lmms-lab-encoder/ScienceQA`` config ``ScienceQA-IMG``.
All are ``generate_until`` tasks scored by their own ``utils.py``.

For each, :func:`write_builtin_tasks` writes

* ``data/local_NAME.parquet``: the rows ``hipp eval`` would score for the matching hipp task
  (a POPE category; ScienceQA rows with an image), in the lmms-lab column layout, with the
  ``datasets`` feature metadata that makes ``image`` load as a PIL image (the built-in
  ``doc_to_visual`` calls ``doc["image"].convert``);
* ``local_NAME.yaml``: ``include:`` of the built-in YAML (so its prompts, generation kwargs,
  ``process_results`` and metrics run unchanged), overriding only ``task``,
  ``dataset_path: parquet``, ``dataset_name: null`` and ``dataset_kwargs.data_files`` (keyed by
  the built-in's own ``test_split``).

The local names are new because a built-in name wins over an ``--include_path`` task on a
clash. Nothing here imports lmms-eval; its task directory is found with ``importlib``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hipp_torchprune.data import TASKS, TaskSpec, resolve_task_files
from hipp_torchprune.errors import DataError, HippError


class BuiltinTaskError(HippError, FileNotFoundError):
    """lmms-eval, or one of its task YAMLs that ``--builtin`` includes, is not installed."""


@dataclass(frozen=True)
class BuiltinTask:
    """One of lmms-eval's own tasks, run on local rows.

    Attributes:
        name: the local task name (``local_...``).
        builtin: lmms-eval's own task name.
        yaml: the built-in task YAML, relative to ``lmms_eval/tasks``.
        rows: the ``hipp eval`` task whose rows it gets.
    """

    name: str
    builtin: str
    yaml: str
    rows: TaskSpec


#: Every task ``--builtin`` writes.
BUILTIN_TASKS: tuple[BuiltinTask, ...] = (
    BuiltinTask("local_pope", "pope", "pope/pope.yaml", TASKS["pope"]),
    BuiltinTask("local_pope_adv", "pope_adv", "pope/pope_adv.yaml", TASKS["pope_adversarial"]),
    BuiltinTask("local_pope_pop", "pope_pop", "pope/pope_pop.yaml", TASKS["pope_popular"]),
    BuiltinTask("local_pope_random", "pope_random", "pope/pope_random.yaml", TASKS["pope_random"]),
    BuiltinTask("local_scienceqa_img", "scienceqa_img", "scienceqa/scienceqa_img.yaml", TASKS["scienceqa_img"]),
)


def lmms_eval_tasks_dir() -> Path:
    """lmms-eval's built-in task directory (found without importing lmms-eval)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinTaskError("--builtin needs lmms-eval installed (see docs/lmms-eval.md for the recipe)")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def builtin_yaml(task: BuiltinTask) -> tuple[Path, str]:
    """The built-in task's YAML path and its ``test_split``; BuiltinTaskError when it is missing."""
    import yaml

    path = lmms_eval_tasks_dir() / task.yaml
    if not path.is_file():
        raise BuiltinTaskError(f"lmms-eval's task {task.builtin!r} has no {path} (written for lmms-eval 0.7.3)")

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    return path, str(config.get("test_split", "test")).strip()


def _keep_mask(spec: TaskSpec) -> Callable[[pa.RecordBatch], Any] | None:
    """The row filter ``hipp eval`` applies for ``spec`` (None: every row)."""
    if spec.family == "mc":
        return lambda batch: pc.is_valid(batch.column("image"))
    if spec.category is not None:
        return lambda batch: pc.equal(batch.column("category"), spec.category)
    return None


def _with_image_feature(schema: pa.Schema) -> pa.Schema:
    """``schema`` whose ``datasets`` metadata declares ``image`` an Image feature."""
    meta = dict(schema.metadata or {})
    info = json.loads(meta.get(b"huggingface", b"{}") or b"{}")
    features = (info.get("info") or {}).get("features") or {}
    if (features.get("image") or {}).get("_type") == "Image":
        return schema
    from datasets import Features, Image

    inferred = Features.from_arrow_schema(schema.remove_metadata())
    inferred["image"] = Image()
    payload = json.dumps({"info": {"features": inferred.to_dict()}}).encode()
    return schema.with_metadata({**meta, b"huggingface": payload})


def write_rows(sources: list[Path], dest: Path, spec: TaskSpec) -> int:
    """Stream the rows of ``spec`` from ``sources`` into the parquet file ``dest``; the row count.

    Reads one batch at a time, so a real POPE download never sits in memory at once.
    """
    keep = _keep_mask(spec)
    schema = _with_image_feature(pq.read_schema(sources[0]))
    count = 0
    with pq.ParquetWriter(dest, schema, compression="zstd") as writer:
        for src in sources:
            for batch in pq.ParquetFile(src).iter_batches(batch_size=256):
                kept = batch.filter(keep(batch)) if keep is not None else batch
                try:
                    writer.write_table(pa.Table.from_batches([kept]).cast(schema))
                except (pa.ArrowInvalid, ValueError) as exc:
                    raise DataError(f"{src}: its columns differ from {sources[0]} ({exc})") from exc
                count += kept.num_rows
    return count


def _task_yaml(task: BuiltinTask, include: Path, split: str, data_file: Path, source: str) -> str:
    import yaml

    config = {"include": str(include), "task": task.name, "dataset_path": "parquet", "dataset_name": None,
              "dataset_kwargs": {"data_files": {split: str(data_file)}}}
    header = (f"# Written by hipp_lmms.builtin: lmms-eval's own {task.builtin!r} (its YAML and utils, "
              f"unchanged) on local data {source}; do not edit by hand.\n")
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_builtin_tasks(staging: Path, out: Path, data_dir: str | Path, split: str = "test") -> list[Path]:
    """Write every :data:`BUILTIN_TASKS` YAML and data file under ``staging``, pointing at ``out``.

    ``staging`` is a scratch directory that the caller moves into ``out`` once everything is
    written; the paths returned are relative to it. Raises :class:`BuiltinTaskError` when
    lmms-eval's YAMLs are missing and :class:`DataError` when a task would get no rows.
    """
    plans = [(task, *builtin_yaml(task)) for task in BUILTIN_TASKS]
    source = str(Path(data_dir).resolve())
    (staging / "data").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for task, include, test_split in plans:
        sources = resolve_task_files(data_dir, task.rows.family, split)
        rel_data = Path("data") / f"{task.name}.parquet"
        if write_rows(sources, staging / rel_data, task.rows) == 0:
            raise DataError(f"{task.name}: no rows for hipp task {task.rows.name!r} in {source} (split {split!r})")
        rel_yaml = Path(f"{task.name}.yaml")
        text = _task_yaml(task, include, test_split, (out / rel_data).resolve(), source)
        (staging / rel_yaml).write_text(text, encoding="utf-8")
        written += [rel_yaml, rel_data]
    return written
