"""The plugin registry: hook specs, built-ins as plugins, third-party plugins, lookups."""

from __future__ import annotations

from typing import ClassVar

import pytest

from hipp_torchprune import api, hookspecs
from hipp_torchprune.errors import UnknownPluginError, UnsupportedModelError
from hipp_torchprune.pruning.allocators import AllocationRequest
from hipp_torchprune.registry import Registry, autoload_enabled, make_plugin_manager


class FirstLayerAllocator:
    """Puts the whole budget on layer 0 (a test plugin)."""

    name: ClassVar[str] = "first-layer"

    def allocate(self, request: AllocationRequest) -> list[float]:
        return [min(request.r_max, request.sparsity * len(request.widths))] + [0.0] * (len(request.widths) - 1)


class ThirdPartyPlugin:
    @hookspecs.hookimpl
    def hipp_allocators(self) -> list[type]:
        return [FirstLayerAllocator]


def test_builtins_are_registered(registry: Registry) -> None:
    assert registry.names("adapter") == ["llava", "qwen2_5_vl"]
    assert registry.names("importance") == ["magnitude", "taylor", "taylor-vector", "wanda", "wanda-mix", "wanda-sp"]
    assert registry.names("strategy") == ["hipp", "random", "uniform"]


@pytest.mark.parametrize("kind", ["adapter", "importance", "strategy", "reward task"])
def test_unknown_name_lists_valid_names(registry: Registry, kind: str) -> None:
    with pytest.raises(UnknownPluginError) as info:
        registry.get(kind, "no-such-thing")
    assert "no-such-thing" in str(info.value)
    assert all(name in str(info.value) for name in registry.names(kind))


def test_third_party_plugin_is_usable(registry: Registry, tiny) -> None:
    _, model, _ = tiny
    registry.pm.register(ThirdPartyPlugin())
    plan = api.make_plan(model, "first-layer", 0.2, round_to=16, registry=registry)
    assert plan.widths_after[0] < plan.widths_before[0] and plan.widths_after[1:] == plan.widths_before[1:]


def test_duplicate_names_are_refused(registry: Registry) -> None:
    class Clash:
        @hookspecs.hookimpl
        def hipp_allocators(self) -> list[type]:
            return [type("Other", (FirstLayerAllocator,), {"name": "uniform"})]

    registry.pm.register(Clash())
    with pytest.raises(ValueError, match="uniform"):
        registry.all("strategy")


def test_autoload_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIPP_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert not autoload_enabled()
    monkeypatch.setenv("HIPP_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert autoload_enabled()
    loaded = []
    monkeypatch.setattr("pluggy.PluginManager.load_setuptools_entrypoints", lambda self, group: loaded.append(group))
    make_plugin_manager()
    assert loaded == ["hipp_torchprune"]
    monkeypatch.setenv("HIPP_DISABLE_PLUGIN_AUTOLOAD", "1")
    make_plugin_manager()
    assert loaded == ["hipp_torchprune"]


def test_unsupported_model_names_classes(registry: Registry) -> None:
    import torch

    with pytest.raises(UnsupportedModelError) as info:
        api.get_adapter(torch.nn.Linear(2, 2), registry)
    assert "Linear" in str(info.value) and "LlavaForConditionalGeneration" in str(info.value)


def test_import_creates_no_manager() -> None:
    import subprocess
    import sys

    code = ("import hipp_torchprune, hipp_torchprune.registry as r, sys; "
            "print(r.default_registry.cache_info().currsize, 'pluggy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0"
