"""Write the hipp task YAMLs: the shipped ones (Hugging Face data) and local variants.

One function, :func:`task_configs`, defines every task; :func:`write_tasks` writes them. The
shipped directory ``hipp_lmms/tasks`` is its output with no data directory (reading
``lmms-lab/POPE`` and ``lmms-lab/ScienceQA``); ``hipp lmms-tasks --data DIR --out TASKS_DIR``
writes the same task names pointing at local parquet files (``dataset_path: parquet`` with
``dataset_kwargs.data_files``), which lmms-eval reads offline; ``--builtin`` adds lmms-eval's
own tasks on the same data (:mod:`hipp_lmms.builtin`).

Nothing here imports lmms-eval.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hipp_torchprune.data import resolve_task_files
from hipp_torchprune.errors import DataError

#: POPE task names and the category each one keeps.
POPE_TASKS: dict[str, str] = {
    "hipp_pope_random": "random",
    "hipp_pope_popular": "popular",
    "hipp_pope_adversarial": "adversarial",
}
#: The group over the three POPE tasks.
POPE_GROUP = "hipp_pope"
#: The ScienceQA (image questions) task.
SCIENCEQA_TASK = "hipp_scienceqa_img"
#: Every task and group name written by :func:`write_tasks`.
TASK_NAMES: tuple[str, ...] = (*POPE_TASKS, POPE_GROUP, SCIENCEQA_TASK)

HF_POPE = {"dataset_path": "lmms-lab/POPE", "dataset_kwargs": {"token": True}}
HF_SCIENCEQA = {"dataset_path": "lmms-lab/ScienceQA", "dataset_name": "ScienceQA-IMG",
                "dataset_kwargs": {"token": True}}

_U = "hipp_lmms.utils."


class _Function(str):
    """A ``!function`` reference in a task YAML."""


def _metrics(prefix: str, names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"metric": n, "aggregation": _Function(f"{_U}{prefix}_{n}"), "higher_is_better": n != "yes_ratio"}
            for n in names]


def _local_source(files: list[Path]) -> dict[str, Any]:
    return {"dataset_path": "parquet",
            "dataset_kwargs": {"data_files": {"test": [str(f.resolve()) for f in files]}}}


def task_configs(data_dir: str | Path | None = None, split: str = "test") -> dict[str, dict[str, Any]]:
    """Every task config keyed by file stem; ``data_dir`` None reads the Hugging Face datasets.

    ``data_dir`` may be a proving-ground world, one of its split directories or an lmms-lab
    download (see :func:`hipp_torchprune.data.resolve_task_files`); ``split`` picks the split of
    a world. Raises :class:`DataError` when a POPE or ScienceQA parquet is missing.
    """
    from hipp_lmms.utils import MC_METRICS, POPE_METRICS

    if data_dir is None:
        pope_src, sqa_src = HF_POPE, HF_SCIENCEQA
    else:
        pope_src = _local_source(resolve_task_files(data_dir, "pope", split))
        sqa_src = _local_source(resolve_task_files(data_dir, "mc", split))
    configs: dict[str, dict[str, Any]] = {}
    for name, category in POPE_TASKS.items():
        configs[name] = {
            **pope_src, "task": name, "test_split": "test", "output_type": "multiple_choice",
            "process_docs": _Function(f"{_U}pope_{category}_docs"),
            "doc_to_visual": _Function(f"{_U}pope_doc_to_visual"),
            "doc_to_text": _Function(f"{_U}pope_doc_to_text"),
            "doc_to_choice": _Function(f"{_U}pope_doc_to_choice"),
            "doc_to_target": _Function(f"{_U}pope_doc_to_target"),
            "target_delimiter": " ",
            "process_results": _Function(f"{_U}pope_process_results"),
            "metric_list": _metrics("pope", POPE_METRICS),
            "metadata": {"version": 1.0},
        }
    configs[POPE_GROUP] = {"group": POPE_GROUP, "task": list(POPE_TASKS)}
    configs[SCIENCEQA_TASK] = {
        **sqa_src, "task": SCIENCEQA_TASK, "test_split": "test", "output_type": "multiple_choice",
        "process_docs": _Function(f"{_U}scienceqa_img_docs"),
        "doc_to_visual": _Function(f"{_U}scienceqa_doc_to_visual"),
        "doc_to_text": _Function(f"{_U}scienceqa_doc_to_text"),
        "doc_to_choice": _Function(f"{_U}scienceqa_doc_to_choice"),
        "doc_to_target": _Function(f"{_U}scienceqa_doc_to_target"),
        "target_delimiter": " ",
        "process_results": _Function(f"{_U}scienceqa_process_results"),
        "metric_list": _metrics("scienceqa", MC_METRICS),
        "metadata": {"version": 1.0},
    }
    return configs


def dump_yaml(config: dict[str, Any]) -> str:
    """YAML text of one task config, ``!function`` references included."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Function, lambda d, v: d.represent_scalar("!function", str(v)))
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


HEADER = "# Written by hipp_lmms.taskgen ({source}); do not edit by hand.\n"


def _publish(staging: Path, out: Path, files: list[Path]) -> list[Path]:
    """Move ``files`` (relative to ``staging``) into ``out``, each with one atomic rename."""
    moved = []
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, out / rel)
        moved.append(out / rel)
    return moved


def write_tasks(out: str | Path, data_dir: str | Path | None = None, split: str = "test",
                builtin: bool = False) -> list[Path]:
    """Write every task YAML into ``out`` (created); returns the files written.

    ``builtin`` also writes lmms-eval's own POPE and ScienceQA-IMG tasks on the local data
    (:mod:`hipp_lmms.builtin`; needs ``data_dir``). Everything is written to a scratch
    directory inside ``out`` first, so a failure leaves ``out`` as it was.
    """
    if builtin and data_dir is None:
        raise DataError("--builtin needs local data (--data DIR)")
    configs = task_configs(data_dir, split)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    source = "Hugging Face datasets" if data_dir is None else f"local data {Path(data_dir).resolve()}"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        files = []
        for stem, config in configs.items():
            (staging / f"{stem}.yaml").write_text(HEADER.format(source=source) + dump_yaml(config), encoding="utf-8")
            files.append(Path(f"{stem}.yaml"))
        if builtin:
            from hipp_lmms.builtin import write_builtin_tasks

            files += write_builtin_tasks(staging, out, data_dir, split)
        return _publish(staging, out, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
