"""The matched comparison on the proving ground (issue 6): Tables 1, 3, 4 and the figure.

Builds the proving-ground world when it is missing, then runs ``hipp compare`` with the
settings documented in docs/results.md; any extra arguments are passed through (and win)::

    python benchmarks/compare.py                                  # demo model + demo policy
    python benchmarks/compare.py --seeds 0,1 --steps 60           # a shorter run
    python benchmarks/compare.py --sampler-policy mixed=P1 --sampler-policy anchors=P2 \\
        --sampler-policy dirichlet=P3                             # with Table 4

Interrupted runs resume from ``OUT/results.json`` (finished cells are skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hipp_torchprune.cli import main

#: Defaults of the documented run; command-line arguments override them.
DEFAULTS: dict[str, str] = {
    "--model": "demo", "--data": "out/compare/world", "--out": "out/compare",
    "--seeds": "0,1,2", "--steps": "100", "--calib-n": "64",
}
#: World seed (differs from the demo model's training world) and size.
WORLD_SEED, WORLD_IMAGES = 7, 1000


def build_argv(extra: list[str]) -> list[str]:
    """``compare`` argv: defaults, the shipped demo policy, then ``extra`` (which wins)."""
    from hipp_torchprune.demo_job import DEMO_POLICY_DIR

    given = {a.split("=")[0] for a in extra if a.startswith("--")}
    argv = ["compare"]
    for flag, value in {**DEFAULTS, "--policy": str(DEMO_POLICY_DIR)}.items():
        if flag not in given:
            argv += [flag, value]
    return argv + extra


def ensure_world(argv: list[str]) -> None:
    """Build the world named by ``--data`` when it does not exist yet, like the one ``--model``
    was trained on (generator version and rendering options; ``hipp world build --like``)."""
    from hipp_torchprune.demo_job import demo_world

    demo_world(argv[argv.index("--model") + 1], Path(argv[argv.index("--data") + 1]), WORLD_SEED, WORLD_IMAGES)


if __name__ == "__main__":
    args = build_argv(sys.argv[1:])
    ensure_world(args)
    sys.exit(main(args))
