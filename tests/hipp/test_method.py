"""``method="hipp"``: registered built in, and refused without a policy and a preference."""

from __future__ import annotations

import pytest

from hipp_torchprune import api
from hipp_torchprune.hipp.method import HippMethod
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, MethodError, prune_with_method
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.registry import Registry
from tests.conftest import samples


def test_hipp_is_a_builtin_method(registry: Registry) -> None:
    assert registry.get("method", "hipp") is HippMethod
    assert (HippMethod.strategy, HippMethod.importance) == ("hipp", DEFAULT_ROW_SCORE)
    assert HippMethod.shared_row_score


@pytest.mark.parametrize("options", [{}, {"policy": "some/dir"}, {"preference": (1.0, 1.0, 1.0)}])
def test_hipp_without_policy_and_preference_is_refused(registry: Registry, options: dict) -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    stats = api.calibrate(model, processor, samples(2), registry=registry)
    widths = api.get_adapter(model, registry).intermediate_widths()
    context = MethodContext(processor, samples(2), stats, round_to=16, registry=registry, options=options)
    with pytest.raises(MethodError, match="'hipp' needs a trained policy and a preference"):
        prune_with_method(model, "hipp", 0.3, context)
    assert api.get_adapter(model, registry).intermediate_widths() == widths

