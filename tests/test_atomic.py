"""Atomic writes: whole or nothing, with the permissions a plain open()/mkdir() gives."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hipp_torchprune.atomic import ordinary_file_modes, write_atomic, write_dir_atomic, write_text_atomic


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_gets_the_umask_mode_even_when_the_writer_stages_its_own(tmp_path: Path, umask_027: None) -> None:
    text = write_atomic(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    weights = write_atomic(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
    assert _mode(text) == _mode(weights) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "w.safetensors"]


def test_failed_file_write_leaves_nothing(tmp_path: Path) -> None:
    def broken(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "a.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_text_replaces_an_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("old")
    assert write_text_atomic(tmp_path / "a.json", '{"new": 1}') == tmp_path / "a.json"
    assert (tmp_path / "a.json").read_text() == '{"new": 1}' and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_directory_and_contents_get_the_umask_modes(tmp_path: Path, umask_027: None) -> None:
    def fill(tmp: Path) -> None:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("x")
        save_file({"w": torch.zeros(2)}, tmp / "w.safetensors")

    out = write_dir_atomic(tmp_path / "d", fill)
    assert _mode(out) == _mode(out / "sub") == 0o750
    assert _mode(out / "sub" / "a.txt") == _mode(out / "w.safetensors") == 0o640


def test_directory_replaces_an_old_one_whole(tmp_path: Path) -> None:
    write_dir_atomic(tmp_path / "d", lambda tmp: (tmp / "old.txt").write_text("1"))
    write_dir_atomic(tmp_path / "d", lambda tmp: (tmp / "new.txt").write_text("2"))
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_ordinary_file_modes_fixes_a_private_safetensors_file(tmp_path: Path, umask_027: None) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "keep.txt").write_text("x")
    os.chmod(tmp_path / "keep.txt", 0o600)
    ordinary_file_modes(tmp_path, ("model.safetensors", "missing.bin"))
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "keep.txt").stat().st_mode) == 0o600  # only the named files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "model.safetensors"]  # no probe left
