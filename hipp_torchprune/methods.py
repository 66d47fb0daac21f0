"""Whole pruning methods (the ``hipp_pruning_methods`` hook), run by ``hipp prune --method`` and
``hipp compare`` through one function, :func:`prune_with_method`.

A method prunes a model to an MLP-sparsity budget. MLP-row methods are an (allocation
strategy, importance scorer) pair and go through :func:`hipp_torchprune.api.make_plan` and
:func:`~hipp_torchprune.api.prune_model`; other methods (SliceGPT) remove the same *parameter
count* the budget names: ``sparsity * sum_l width_l * row_params_l``.

A method class has a unique ``name``, a ``kind`` and ``prune(model, sparsity, context)``; it may
also define ``needs(registry) -> MethodNeeds`` (what calibration it uses; default: samples and
statistics) and ``check(model)`` (raise a :class:`~hipp_torchprune.errors.HippError` for a model
it cannot prune, before anything is computed or changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from hipp_torchprune.errors import HippError
from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.pruning.plan import Plan
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS, GramSource, Reconstruction, collect_down_grams
from hipp_torchprune.registry import Registry, default_registry

MethodKind = Literal["mlp-rows", "slicing"]

#: The row-score candidates (importance scorer names, :mod:`hipp_torchprune.pruning.rowscores`):
#: gate/up rows against the MLP input, down_proj's input (Wanda-sp's), and both mean-normalized.
ROW_SCORES: tuple[str, ...] = ("wanda", "wanda-sp", "wanda-mix")
#: The shared row score of every method that takes it (HiPP and the random, OWL and ECoFLaP
#: baselines) unless a caller picks another: one constant for ``hipp prune --method``, ``hipp
#: compare`` and :class:`MethodContext`. Chosen on the calibration split by
#: ``benchmarks/row_score.py`` (``docs/baselines.md``).
DEFAULT_ROW_SCORE = "wanda-mix"


class MethodError(HippError, ValueError):
    """A pruning method was asked for with options that do not go with it, or without ones it needs."""


@dataclass(frozen=True)
class MethodNeeds:
    """What a method uses from calibration (so a caller computes only that)."""

    #: Calibration ``(image, prompt)`` samples and the processor.
    samples: bool = True
    #: Calibration statistics of the dense model (input norms).
    stats: bool = True
    #: The statistics' first-order Taylor terms (a backward pass per batch).
    grads: bool = False


@dataclass(frozen=True)
class MethodContext:
    """What every method gets, identical across methods in a comparison (matched calibration)."""

    #: The model's processor.
    processor: Any
    #: Calibration ``(image, prompt)`` or ``(image, prompt, answer)`` samples (with answers, every
    #: loss or gradient is the gold answers': :mod:`hipp_torchprune.pruning.answers`).
    samples: Sequence[tuple[Any, ...]]
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
    #: The shared row score (an importance name, one of :data:`ROW_SCORES`) of the methods that
    #: choose rows by it (``MLPRowMethod.shared_row_score``); the others keep their own ``importance``.
    row_score: str = DEFAULT_ROW_SCORE
    #: How every MLP-row method refits each pruned ``down_proj`` on the calibration samples
    #: (:mod:`hipp_torchprune.pruning.reconstruct`): ``none`` or ``lstsq``.
    reconstruct: Reconstruction = "none"

    def __post_init__(self) -> None:
        """Refuse a row score outside :data:`ROW_SCORES` (each of those needs statistics, no gradients)
        and an unknown reconstruction."""
        if self.row_score not in ROW_SCORES:
            raise MethodError(f"row score {self.row_score!r} is not one of {', '.join(ROW_SCORES)}")
        if self.reconstruct not in RECONSTRUCTIONS:
            raise MethodError(f"reconstruction {self.reconstruct!r} is not one of {', '.join(RECONSTRUCTIONS)}")


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
    #: The rounded plan of an MLP-row method (None for other kinds).
    plan: Plan | None = None


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
    importance: ClassVar[str] = DEFAULT_ROW_SCORE
    #: Whether the rows are chosen by the shared row score (``MethodContext.row_score`` replaces
    #: ``importance``), rather than by a score that defines the method (Wanda-sp, Taylor, FLAP).
    shared_row_score: ClassVar[bool] = False

    def row_importance(self, context: MethodContext) -> str:
        """The importance scorer that chooses the rows: ``context.row_score`` for a method that uses
        the shared row score, else ``importance``."""
        return context.row_score if self.shared_row_score else self.importance

    def needs(self, registry: Registry | None = None) -> MethodNeeds:
        """Calibration when the scorer or the strategy needs it; gradients when the scorer does."""
        registry = registry or default_registry()
        scorer = registry.get("importance", self.importance)
        calib = bool(scorer.needs_calibration or getattr(registry.get("strategy", self.strategy),
                                                         "needs_calibration", False))
        return MethodNeeds(samples=calib, stats=calib, grads=bool(calib and scorer.needs_grads))

    def strategy_options(self, context: MethodContext) -> dict[str, Any]:
        """Options passed to the strategy: calibration (stats, processor, samples) plus the context's."""
        return {"stats": context.stats, "processor": context.processor, "samples": context.samples,
                **context.options}

    def plan_r_max(self, sparsity: float, context: MethodContext) -> float:
        """The per-layer cap of this method's plans (default: the context's ``r_max``)."""
        return context.r_max

    def plan(self, model: nn.Module, sparsity: float, context: MethodContext, **options: Any) -> Any:
        """The rounded :class:`~hipp_torchprune.pruning.plan.Plan` at ``sparsity`` (``options`` are
        added to :meth:`strategy_options`)."""
        from hipp_torchprune.api import make_plan

        return make_plan(model, self.strategy, sparsity, round_to=context.round_to,
                         r_max=self.plan_r_max(sparsity, context), seed=context.seed, registry=context.registry,
                         **{**self.strategy_options(context), **options})

    def prune(self, model: nn.Module, sparsity: float, context: MethodContext) -> MethodReport:
        """Physically prune ``model`` in place at ``sparsity``."""
        return self.prune_plan(model, self.plan(model, sparsity, context), context)

    def prune_plan(self, model: nn.Module, plan: Plan, context: MethodContext,
                   details: dict[str, Any] | None = None) -> MethodReport:
        """Physically prune ``model`` in place to ``plan``, rows by :meth:`row_importance`."""
        from hipp_torchprune.api import importance, prune_model

        name = self.row_importance(context)
        grams = down_grams(model, context) if context.reconstruct == "lstsq" else None
        prune_model(model, plan, importance(name, model, context.stats, registry=context.registry),
                    registry=context.registry, grams=grams)
        return MethodReport(self.name, self.kind, plan.realized_sparsity, plan.widths_after,
                            {"strategy": self.strategy, "importance": name, "reconstruct": context.reconstruct,
                             "ratios": list(plan.realized_ratios), **(details or {})}, plan)


def down_grams(model: nn.Module, context: MethodContext) -> GramSource:
    """A source of the dense model's augmented ``down_proj`` input Grams over ``context.samples``
    (:func:`~hipp_torchprune.pruning.reconstruct.collect_down_grams`, one pass per call), for the
    least-squares refit."""
    from hipp_torchprune.api import calibration_batches, get_adapter

    if not context.samples:
        raise MethodError("least-squares reconstruction needs calibration samples: the context has none")
    adapter = get_adapter(model, context.registry)

    def grams(layers: Sequence[int]) -> list[torch.Tensor]:
        return collect_down_grams(model, adapter, calibration_batches(adapter, context.processor, context.samples),
                                  layers)
    return grams


def pair_method(strategy: str, importance: str) -> MLPRowMethod:
    """An unregistered MLP-row method for an explicit (strategy, importance) pair
    (``hipp prune --strategy S --importance I``)."""
    cls = type("PairMethod", (MLPRowMethod,), {"name": f"{strategy}+{importance}", "strategy": strategy,
                                               "importance": importance})
    return cls()


def method_needs(method: Any, registry: Registry | None = None) -> MethodNeeds:
    """``method.needs(registry)``, or samples and statistics for a method that does not say."""
    needs = getattr(method, "needs", None)
    return needs(registry) if needs is not None else MethodNeeds()


def check_method(method: Any, model: nn.Module) -> None:
    """``method.check(model)`` where defined: refuse a model the method cannot prune, untouched."""
    check = getattr(method, "check", None)
    if check is not None:
        check(model)


def prune_with_method(model: nn.Module, method: str | Any, sparsity: float, context: MethodContext) -> MethodReport:
    """Prune ``model`` in place with ``method`` (a registered name, or a method instance) at
    ``sparsity`` and return its report: the one path of ``hipp prune`` and ``hipp compare``.

    The method's :func:`check_method` runs first; a method that needs calibration statistics
    but gets none raises :class:`MethodError` before the model is touched.
    """
    registry = context.registry or default_registry()
    impl = registry.get("method", method)() if isinstance(method, str) else method
    check_method(impl, model)
    needs = method_needs(impl, registry)
    if (needs.samples and not context.samples) or (needs.stats and context.stats is None):
        raise MethodError(f"method {impl.name!r} needs calibration: give the context samples and statistics")
    report = impl.prune(model, sparsity, context)
    if not isinstance(report, MethodReport):
        raise MethodError(f"method {impl.name!r} returned {type(report).__name__}, not a MethodReport")
    return report
