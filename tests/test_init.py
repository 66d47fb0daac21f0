"""The package's lazy public API: every exported name resolves, unknown names raise AttributeError."""

from __future__ import annotations

import pytest

import hipp_torchprune as hipp


@pytest.mark.parametrize("name", hipp.__all__)
def test_every_export_resolves(name: str) -> None:
    assert getattr(hipp, name) is not None


def test_method_api_is_exported() -> None:
    from hipp_torchprune.methods import MethodContext, prune_with_method

    assert hipp.prune_with_method is prune_with_method and hipp.MethodContext is MethodContext


def test_unknown_name() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hipp.nope  # noqa: B018
