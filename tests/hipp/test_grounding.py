"""Single-layer drop profiles, checked on objectives whose dependence on each layer is known."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.grounding import single_layer_drops, single_layer_plans


def test_single_layer_plans_by_hand() -> None:
    assert single_layer_plans(2, 0.5) == [[0.5, 0.0], [0.0, 0.5], [0.0, 0.0]]
    with pytest.raises(ValueError):
        single_layer_plans(3, 1.0)


def test_drops_mark_exactly_the_layer_each_objective_reads(tiny) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    widths = adapter.intermediate_widths()
    env = PlanEnvironment(model, adapter, [torch.rand(w) for w in widths], {}, round_to=8, r_max=0.8,
                          compression_range=(0.2, 0.5), row_params=[1] * len(widths))
    # rob: the share of layer 1's rows kept; util: the share of the last layer's rows kept
    env.objectives = {"rob": lambda m: float(env.masks.masks[1].float().mean()),
                      "util": lambda m: float(env.masks.masks[-1].float().mean())}
    try:
        drops = single_layer_drops(env, 0.5)  # (L, 2)
    finally:
        env.close()
    expected = torch.zeros(len(widths), 2)
    expected[1, 0] = 1 - env.widths_for([0.0, 0.5] + [0.0] * (len(widths) - 2))[1] / widths[1]
    expected[-1, 1] = 0.5
    assert torch.allclose(drops, expected, atol=1e-6)
    assert api.get_adapter(model).intermediate_widths() == widths  # masks only, nothing removed
