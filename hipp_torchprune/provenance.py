"""What code produced a result: a fingerprint of the project's sources and its libraries' versions.

A comparison stamps every cell with :func:`code_fingerprint`, so a cell computed by other code is
never reused as if this code had computed it (``hipp compare --baselines-from``), and a resumed
run says when its cells come from more than one version of the code.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: The project's packages whose sources decide the numbers: the library and the bundled plugins.
PROJECT_MODULES: tuple[str, ...] = ("hipp_torchprune", "hipp_baselines", "hipp_owl")
#: Libraries whose versions decide the numbers (their arithmetic, models and pruning graph).
LIBRARIES: tuple[str, ...] = ("torch", "transformers", "torch-pruning", "peft")


def _sources(module: str) -> list[tuple[str, bytes]]:
    """``(path relative to the package, bytes)`` of every ``.py`` file of ``module``, sorted;
    empty when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return []
    files = []
    for root in map(Path, spec.submodule_search_locations):
        files += [(f"{module}/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in root.rglob("*.py")]
    return sorted(files)


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "absent"


def code_fingerprint(modules: Sequence[str] = PROJECT_MODULES, libraries: Sequence[str] = LIBRARIES) -> str:
    """16 hex digits over the sources of ``modules`` and the versions of ``libraries``: equal
    when, and (up to hash collisions) only when, the same code would run."""
    digest = hashlib.sha256()
    for module in modules:
        files = _sources(module)
        digest.update(f"{module}:{len(files)}\n".encode())
        for path, data in files:
            digest.update(f"{path}:{len(data)}\n".encode())
            digest.update(data)
    for name in libraries:
        digest.update(f"{name}=={_version(name)}\n".encode())
    return digest.hexdigest()[:16]
