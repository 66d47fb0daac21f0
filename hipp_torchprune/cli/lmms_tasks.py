"""``hipp lmms-tasks``: write lmms-eval task YAMLs pointing at a local data directory.

The hipp tasks (``hipp_pope_*``, ``hipp_scienceqa_img``) always; with ``--builtin`` also
lmms-eval's own ``pope``, ``pope_adv``, ``pope_pop``, ``pope_random`` and ``scienceqa_img`` on the
same rows, as ``local_pope``, ``local_pope_adv``, ``local_pope_pop``, ``local_pope_random`` and
``local_scienceqa_img`` (see ``hipp_lmms.builtin``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hipp_torchprune.errors import HippError


class PluginMissingError(HippError, ImportError):
    """The ``hipp-lmms`` plugin package (``plugins/hipp-lmms``) is not installed."""


def _write(args: argparse.Namespace) -> int:
    try:
        from hipp_lmms.taskgen import write_tasks
    except ModuleNotFoundError as exc:
        if exc.name not in ("hipp_lmms", "hipp_lmms.taskgen"):
            raise
        raise PluginMissingError("the hipp-lmms plugin is not installed; run `make test` once or "
                                 "`pip install -e plugins/hipp-lmms` (see docs/lmms-eval.md)") from exc
    from hipp_torchprune.data import POPE_COLUMNS, SCIENCEQA_COLUMNS, check_columns, resolve_task_files

    for family, columns in (("pope", POPE_COLUMNS), ("mc", SCIENCEQA_COLUMNS)):
        for path in resolve_task_files(args.data, family, args.split):
            check_columns(path, columns)
    written = write_tasks(args.out, args.data, split=args.split, builtin=args.builtin)
    tasks = [p.stem for p in written if p.suffix == ".yaml"]
    print(json.dumps({"out": str(args.out), "tasks": tasks}) if args.json
          else "\n".join(str(p) for p in written))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``lmms-tasks`` command."""
    p = subparsers.add_parser("lmms-tasks", help="write lmms-eval task YAMLs for a local data directory")
    p.add_argument("--data", required=True, help="proving-ground world, split dir or lmms-lab download")
    p.add_argument("--out", required=True, help="directory for the YAMLs (pass it to lmms-eval --include_path)")
    p.add_argument("--split", default="test", help="split of a world directory (default test)")
    p.add_argument("--builtin", action="store_true",
                   help="also write lmms-eval's own pope, pope_adv, pope_pop, pope_random and scienceqa_img "
                        "on this data, as local_pope, local_pope_adv, ... (their YAMLs and utils unchanged)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_write)
