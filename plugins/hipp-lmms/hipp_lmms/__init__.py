"""lmms-eval plugins for hipp-torchprune.

* :mod:`hipp_lmms.tasks`: the ``hipp_pope_*`` and ``hipp_scienceqa_img`` task YAMLs (pass the
  directory to ``lmms-eval --include_path``; :func:`tasks_dir` returns it).
* :mod:`hipp_lmms.utils`: the task functions (prompts, per-doc records, aggregations), thin
  wrappers around :mod:`hipp_torchprune.data` and :mod:`hipp_torchprune.evaluation`.
* :mod:`hipp_lmms.models`: the ``hipp_vlm`` model wrapper, registered through the
  ``lmms_eval.models`` entry-point group.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["tasks_dir"]


def tasks_dir() -> Path:
    """The directory holding the shipped task YAMLs (for ``--include_path``)."""
    return Path(__file__).resolve().parent / "tasks"
