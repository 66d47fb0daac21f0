"""The separately installed ``hipp-owl`` plugin: found through the entry point, and its math."""

from __future__ import annotations

import importlib.metadata

import pytest

from hipp_torchprune import api
from hipp_torchprune.registry import Registry, make_plugin_manager
from tests.conftest import samples

owl = pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")


def test_entry_point_registers_owl() -> None:
    eps = importlib.metadata.entry_points(group="hipp_torchprune")
    assert "owl" in {ep.name for ep in eps}
    assert "owl" in Registry(make_plugin_manager(autoload=True)).names("strategy")
    assert "owl" not in Registry(make_plugin_manager(autoload=False)).names("strategy")


def test_owl_ratios_by_hand() -> None:
    # outliers 0.1 (min) -> S + lam, 0.3 (max) -> S - lam, 0.2 -> S
    assert owl.owl_ratios([0.1, 0.2, 0.3], 0.5, 0.1) == pytest.approx([0.6, 0.5, 0.4])
    assert owl.owl_ratios([0.2, 0.2], 0.3, 0.1) == [0.3, 0.3]


def test_owl_plan_matches_budget(tiny) -> None:
    _, model, processor = tiny
    registry = Registry(make_plugin_manager(autoload=False))
    registry.pm.register(owl)
    stats = api.calibrate(model, processor, samples(3))
    plan = api.make_plan(model, "owl", 0.4, round_to=16, registry=registry, stats=stats)
    assert abs(plan.realized_sparsity - 0.4) < 0.03
    assert len(set(plan.widths_after)) > 1  # not uniform
