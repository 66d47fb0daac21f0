"""What produced a result: a fingerprint of the project's sources and its libraries' versions, and
of the world it was measured on.

A comparison stamps every cell with :func:`code_fingerprint`, so a cell computed by other code is
never reused as if this code had computed it (``hipp compare --baselines-from``), and a resumed
run says when its cells come from more than one version of the code. It records the world's
:func:`world_fingerprint` too, and refuses to resume or borrow cells across different worlds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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


def world_fingerprint(data_dir: str | Path) -> str | None:
    """The ``content_hash`` a proving-ground world's ``manifest.json`` records for its files (equal
    when, and only when, the world's rows and images are the same), or ``None`` for a directory
    without one (an lmms-lab download). A comparison records it, so a resume or a
    ``--baselines-from`` over a rebuilt world that came out different is refused, not mixed in."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("content_hash")
    except (json.JSONDecodeError, AttributeError):
        return None
