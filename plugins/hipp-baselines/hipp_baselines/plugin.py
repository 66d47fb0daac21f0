"""The hook implementations of the ``hipp-baselines`` package."""

from __future__ import annotations

from hipp_torchprune.hookspecs import hookimpl


@hookimpl
def hipp_allocators() -> list[type]:
    """The ``ecoflap`` strategy."""
    from hipp_baselines.ecoflap import EcoFLaPAllocator

    return [EcoFLaPAllocator]


@hookimpl
def hipp_pruning_methods() -> list[type]:
    """``random``, ``wanda``, ``llm-pruner``, ``owl``, ``ecoflap`` and ``slicegpt``."""
    from hipp_baselines.methods import METHODS
    from hipp_baselines.slicegpt import SliceGPTMethod

    return [*METHODS, SliceGPTMethod]
