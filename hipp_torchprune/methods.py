"""Whole pruning methods for matched comparisons (the ``hipp_pruning_methods`` hook).

A method prunes a model to an MLP-sparsity budget. MLP-row methods are an (allocation
strategy, importance scorer) pair and go through :func:`hipp_torchprune.api.make_plan` and
:func:`~hipp_torchprune.api.prune_model`; other methods (SliceGPT) remove the same *parameter
count* the budget names: ``sparsity * sum_l width_l * row_params_l``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.registry import Registry

MethodKind = Literal["mlp-rows", "slicing"]


@dataclass(frozen=True)
class MethodContext:
    """What every method gets, identical across methods in a comparison (matched calibration)."""

    #: The model's processor.
    processor: Any
    #: Calibration ``(image, prompt)`` samples.
    samples: Sequence[tuple[Any, str]]
    #: Calibration statistics of the dense model (input norms, and Taylor terms when collected).
    stats: CalibrationStats | None
    #: Kept MLP widths round to this multiple.
    round_to: int = 64
    #: Per-layer cap on the removal ratio.
    r_max: float = 0.8
    #: Seed for stochastic strategies.
    seed: int = 0
    #: Plugin registry (None: the default one).
    registry: Registry | None = None
    #: Extra strategy options (e.g. the HiPP policy and preference).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodReport:
    """What a method did: realized MLP-sparsity (or parameter-equivalent), widths, details."""

    method: str
    kind: MethodKind
    #: Fraction of the prunable MLP parameters removed, or for slicing methods the removed
    #: parameter count divided by the prunable MLP parameter count.
    realized_sparsity: float
    widths: tuple[int, ...]
    details: dict[str, Any] = field(default_factory=dict)


def mlp_param_total(model: nn.Module, registry: Registry | None = None) -> int:
    """Prunable MLP parameters of ``model``: ``sum_l width_l * row_params_l``."""
    from hipp_torchprune.api import get_adapter, row_params

    adapter = get_adapter(model, registry)
    return sum(w * p for w, p in zip(adapter.intermediate_widths(), row_params(adapter)))


class MLPRowMethod:
    """An (allocation ``strategy``, ``importance``) pair; subclasses set the three names."""

    name: ClassVar[str] = ""
    kind: ClassVar[MethodKind] = "mlp-rows"
    strategy: ClassVar[str] = "uniform"
    importance: ClassVar[str] = "wanda"

    def strategy_options(self, context: MethodContext) -> dict[str, Any]:
        """Options passed to the strategy: calibration (stats, processor, samples) plus the context's."""
        return {"stats": context.stats, "processor": context.processor, "samples": context.samples,
                **context.options}

    def plan(self, model: nn.Module, sparsity: float, context: MethodContext) -> Any:
        """The rounded :class:`~hipp_torchprune.pruning.plan.Plan` at ``sparsity``."""
        from hipp_torchprune.api import make_plan

        return make_plan(model, self.strategy, sparsity, round_to=context.round_to, r_max=context.r_max,
                         seed=context.seed, registry=context.registry, **self.strategy_options(context))

    def prune(self, model: nn.Module, sparsity: float, context: MethodContext) -> MethodReport:
        """Physically prune ``model`` in place at ``sparsity``."""
        from hipp_torchprune.api import importance, prune_model

        plan = self.plan(model, sparsity, context)
        prune_model(model, plan, importance(self.importance, model, context.stats, registry=context.registry),
                    registry=context.registry)
        return MethodReport(self.name, self.kind, plan.realized_sparsity, plan.widths_after,
                            {"strategy": self.strategy, "importance": self.importance,
                             "ratios": list(plan.realized_ratios)})
