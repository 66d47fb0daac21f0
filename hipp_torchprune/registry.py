"""The plugin registry: a pluggy manager plus name lookups with clear errors.

Nothing is created at import time. :func:`make_plugin_manager` builds a fresh manager (tests use
``autoload=False``); :func:`default_registry` builds the process-wide one lazily on first use.
Set ``HIPP_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry-point loading.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import pluggy

from hipp_torchprune import hookspecs
from hipp_torchprune.errors import UnknownPluginError

#: The entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = "hipp_torchprune"

Kind = Literal["adapter", "importance", "strategy", "reward task", "method"]
_HOOKS: dict[Kind, str] = {
    "adapter": "hipp_model_adapters",
    "importance": "hipp_importance_scorers",
    "strategy": "hipp_allocators",
    "reward task": "hipp_reward_tasks",
    "method": "hipp_pruning_methods",
}


def autoload_enabled() -> bool:
    """False when ``HIPP_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value."""
    return os.environ.get("HIPP_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in ("1", "true", "yes")


def make_plugin_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    """A new manager with the hook specs and the built-in plugin; entry points are loaded when
    ``autoload`` (default: :func:`autoload_enabled`)."""
    from hipp_torchprune import builtin

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="hipp_torchprune.builtin")
    if autoload_enabled() if autoload is None else autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


class Registry:
    """Name lookups over a plugin manager's adapters, scorers, strategies and reward tasks."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else make_plugin_manager()

    def all(self, kind: Kind) -> dict[str, type]:
        """Every registered class of ``kind``, by name. Duplicate names raise ``ValueError``."""
        found: dict[str, type] = {}
        for classes in getattr(self.pm.hook, _HOOKS[kind])():
            for cls in classes:
                if cls.name in found and found[cls.name] is not cls:
                    raise ValueError(f"two plugins register the {kind} name '{cls.name}'")
                found[cls.name] = cls
        return found

    def names(self, kind: Kind) -> list[str]:
        """Sorted registered names of ``kind``."""
        return sorted(self.all(kind))

    def get(self, kind: Kind, name: str) -> type:
        """The class registered as ``name``; :class:`UnknownPluginError` lists the valid names."""
        classes = self.all(kind)
        if name not in classes:
            raise UnknownPluginError(f"unknown {kind} '{name}'; valid names: {', '.join(sorted(classes))}")
        return classes[name]


@functools.cache
def default_registry() -> Registry:
    """The process-wide registry, built on first use (entry points honour the env switch)."""
    return Registry()
