"""``code_fingerprint``: the same code gives the same stamp, any change in it another; ``world_fingerprint``:
the same world gives the same hash."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hipp_torchprune.provenance import code_fingerprint, world_fingerprint


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throwaway importable package ``stampme`` with two modules."""
    root = tmp_path / "stampme"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "math.py").write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    sys.modules.pop("stampme", None)


def test_the_stamp_follows_the_sources_and_the_library_versions(package: Path) -> None:
    stamp = code_fingerprint(["stampme"], ["torch"])
    assert stamp == code_fingerprint(["stampme"], ["torch"]) and len(stamp) == 16
    (package / "sub" / "math.py").write_text("def f(x):\n    return x + 2\n")  # one character of code
    edited = code_fingerprint(["stampme"], ["torch"])
    assert edited != stamp
    (package / "sub" / "extra.py").write_text("")  # a new (empty) module counts too
    assert code_fingerprint(["stampme"], ["torch"]) != edited
    assert code_fingerprint(["stampme"], ["torch"]) != code_fingerprint(["stampme"], ["no-such-library"])


def test_a_missing_package_is_stamped_as_absent_not_refused() -> None:
    assert code_fingerprint(["no_such_package_here"], []) != code_fingerprint([], [])
    assert code_fingerprint(["hipp_torchprune"], []) != code_fingerprint(["no_such_package_here"], [])


def test_a_world_is_fingerprinted_by_its_content(make_world, tmp_path: Path) -> None:
    from hipp_torchprune.world import build_world

    world = make_world(0, 8)
    again = build_world(tmp_path / "again", seed=0, n_images=8) and tmp_path / "again"
    assert world_fingerprint(world) == world_fingerprint(again) and len(world_fingerprint(world)) == 64
    assert world_fingerprint(make_world(1, 8)) != world_fingerprint(world)
    assert world_fingerprint(tmp_path) is None  # no manifest: an lmms-lab download
    (tmp_path / "manifest.json").write_text("{not json")
    assert world_fingerprint(tmp_path) is None
