"""The built-in plugin: hipp-torchprune's own adapters, scorers, strategies and method, registered
through the same hooks as any third-party plugin."""

from __future__ import annotations

from hipp_torchprune.hookspecs import hookimpl


@hookimpl
def hipp_model_adapters() -> list[type]:
    """LLaVA-1.5 and Qwen2.5-VL."""
    from hipp_torchprune.adapters import LlavaAdapter, Qwen25VLAdapter

    return [LlavaAdapter, Qwen25VLAdapter]


@hookimpl
def hipp_importance_scorers() -> list[type]:
    """``wanda``, ``wanda-sp``, ``wanda-mix``, ``magnitude``, ``taylor`` and ``taylor-vector``."""
    from hipp_torchprune.pruning.row_scorers import ElementwiseTaylorScorer, WandaMixScorer, WandaSPScorer
    from hipp_torchprune.pruning.scorers import MagnitudeScorer, TaylorScorer, WandaScorer

    return [WandaScorer, WandaSPScorer, WandaMixScorer, MagnitudeScorer, ElementwiseTaylorScorer, TaylorScorer]


@hookimpl
def hipp_allocators() -> list[type]:
    """``uniform``, ``random`` and ``hipp``."""
    from hipp_torchprune.hipp.allocator import HippAllocator
    from hipp_torchprune.pruning.allocators import RandomAllocator, UniformAllocator

    return [UniformAllocator, RandomAllocator, HippAllocator]


@hookimpl
def hipp_reward_tasks() -> list[type]:
    """``pope`` and ``scienceqa``: mean log-margins scored on prepared batches."""
    from hipp_torchprune.rewards import PopeMarginReward, ScienceQAMarginReward

    return [PopeMarginReward, ScienceQAMarginReward]


@hookimpl
def hipp_pruning_methods() -> list[type]:
    """``hipp``: a trained policy queried at a preference (the baselines are in ``hipp-baselines``)."""
    from hipp_torchprune.hipp.method import HippMethod

    return [HippMethod]
