"""The hook implementations of the ``hipp-baselines`` package."""

from __future__ import annotations

from hipp_torchprune.hookspecs import hookimpl


@hookimpl
def hipp_allocators() -> list[type]:
    """The ``ecoflap``, ``llm-pruner`` and ``flap`` strategies."""
    from hipp_baselines.ecoflap import EcoFLaPAllocator
    from hipp_baselines.flap import FlapAllocator
    from hipp_baselines.llm_pruner import LLMPrunerAllocator

    return [EcoFLaPAllocator, LLMPrunerAllocator, FlapAllocator]


@hookimpl
def hipp_importance_scorers() -> list[type]:
    """The ``flap`` importance (FLAP's fluctuation metric)."""
    from hipp_baselines.flap import FlapScorer

    return [FlapScorer]


@hookimpl
def hipp_pruning_methods() -> list[type]:
    """``random``, ``wanda``, ``llm-pruner``, ``owl``, ``ecoflap``, ``flap`` and ``slicegpt``."""
    from hipp_baselines.methods import METHODS
    from hipp_baselines.slicegpt_method import SliceGPTMethod

    return [*METHODS, SliceGPTMethod]
