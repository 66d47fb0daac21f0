"""Atomic writes: a file or a directory appears whole or not at all.

What lands in place has the permissions a plain ``open``/``mkdir`` would give (the umask
applies), not the private 0600/0700 of ``tempfile`` or of writers that stage their own temporary
file (``safetensors`` does).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path


def _fresh_sibling(path: Path, tag: str, make: Callable[[Path], None]) -> Path:
    """Create a new, unused sibling of ``path`` named ``.NAME.TAG.RANDOM`` with ``make``."""
    while True:
        candidate = path.parent / f".{path.name}.{tag}.{secrets.token_hex(4)}"
        try:
            make(candidate)
        except FileExistsError:
            continue
        return candidate


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def write_atomic(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary sibling of ``path``, then rename it into place.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(path, "tmp", _create_file)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what open() gives under the umask
    try:
        write(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`write_atomic` (all or nothing)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_dir_atomic(directory: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_dir)`` to fill a new temporary sibling directory, then move it to ``directory``.

    The directory and everything in it get ordinary permissions (the umask applies).

    An existing ``directory`` is replaced; it is set aside first and deleted only once the new one
    is in place, so a crash leaves the old or the new directory, never neither. On any failure
    the temporary directory is removed and ``directory`` is left as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(directory, "tmp", lambda p: p.mkdir())
    try:
        write(tmp)
        _ordinary_modes(tmp)
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def ordinary_file_modes(directory: str | Path, names: tuple[str, ...]) -> None:
    """Give the files ``names`` in ``directory`` the mode a plain ``open`` gives under the umask.

    For writers that stage a private 0600 file and rename it into place (``safetensors``).
    """
    directory = Path(directory)
    probe = _fresh_sibling(directory / "mode", "probe", _create_file)
    try:
        mode = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink(missing_ok=True)
    for name in names:
        if (directory / name).is_file():
            os.chmod(directory / name, mode)


def _ordinary_modes(root: Path) -> None:
    """Give every file and folder under ``root`` the mode ``mkdir``/``open`` gave ``root`` under the umask."""
    dir_mode = stat.S_IMODE(root.stat().st_mode)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else dir_mode & 0o666)


def _swap_in(new: Path, directory: Path) -> None:
    """Move ``new`` to ``directory``, setting an existing ``directory`` aside until then."""
    old = None
    if directory.exists():
        old = _fresh_sibling(directory, "old", lambda p: p.mkdir())
        os.replace(directory, old / directory.name)
    try:
        os.replace(new, directory)
    except BaseException:
        if old is not None:
            os.replace(old / directory.name, directory)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
