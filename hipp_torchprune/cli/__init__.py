"""The ``hipp`` command line. Each subcommand lives in its own module with a ``register`` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hipp_torchprune.errors import HippError

#: Subcommand modules under ``hipp_torchprune.cli``; each defines ``register(subparsers) -> None``
#: and sets ``func(args) -> int`` on its parser via ``set_defaults``.
SUBCOMMAND_MODULES: tuple[str, ...] = ("prune", "world", "demo_model", "evaluate", "calibrate", "train", "query",
                                       "lmms_tasks", "demo", "recover", "compare")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="hipp", description="HiPP-Prune for vision-language models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"hipp_torchprune.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name == f"hipp_torchprune.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input exits with status 2 and a one-line ``error:`` message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv_flags = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    try:
        return int(args.func(args) or 0)
    except HippError as exc:
        print(f"hipp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
