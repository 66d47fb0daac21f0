"""The public Python API: adapters, allocation, importance, calibration and pruning."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import CalibrationError, PlanError, UnsupportedModelError
from hipp_torchprune.pruning.allocators import AllocationRequest
from hipp_torchprune.pruning.calibration import CalibrationStats, collect_stats
from hipp_torchprune.pruning.operator import (
    PlanMasks,
    build_mlp_graph,
    keep_indices,
    layer_scores,
    prune_physical,
    scores_directly,
)
from hipp_torchprune.pruning.plan import Plan, budget_matched_widths, torch_pruning_ratio, validate_ratios
from hipp_torchprune.pruning.reconstruct import GramSource, solve_downs, write_downs
from hipp_torchprune.registry import Registry, default_registry

#: Default multiple that kept widths round to (fast GEMM shapes on GPUs).
DEFAULT_ROUND_TO = 64
#: Default per-layer cap on the removal ratio.
DEFAULT_R_MAX = 0.8


def get_adapter(model: nn.Module, registry: Registry | None = None) -> ModelAdapter:
    """The registered adapter that handles ``model``; :class:`UnsupportedModelError` names the
    model's class and the supported ones otherwise."""
    registry = registry or default_registry()
    adapters = registry.all("adapter").values()
    for cls in adapters:
        if cls.handles(model):
            return cls(model)
    supported = sorted(name for cls in adapters for name in cls.model_class_names)
    raise UnsupportedModelError(
        f"no adapter for model class {type(model).__name__}; supported: {', '.join(supported)}")


def row_params(adapter: ModelAdapter) -> tuple[int, ...]:
    """Parameters per intermediate channel of each layer: gate row + up row + down column."""
    out = []
    for m in adapter.mlps():
        n = m.gate.in_features + m.up.in_features + m.down.out_features
        n += int(m.gate.bias is not None) + int(m.up.bias is not None)
        out.append(n)
    return tuple(out)


def plan_from_ratios(model: nn.Module, ratios: Sequence[float], *, round_to: int = DEFAULT_ROUND_TO,
                     r_max: float = DEFAULT_R_MAX, registry: Registry | None = None) -> Plan:
    """Round a per-layer ratio vector into a :class:`Plan` for ``model`` (validated, budget-matched)."""
    adapter = get_adapter(model, registry)
    widths = tuple(adapter.intermediate_widths())
    params = row_params(adapter)
    values = validate_ratios(ratios, len(widths), r_max)
    kept = budget_matched_widths(values, widths, round_to, r_max, params)
    return Plan(ratios=values, widths_before=widths, widths_after=kept, row_params=params)


def make_plan(model: nn.Module, strategy: str = "uniform", sparsity: float = 0.225, *,
              round_to: int = DEFAULT_ROUND_TO, r_max: float = DEFAULT_R_MAX, seed: int = 0,
              registry: Registry | None = None, **options: Any) -> Plan:
    """Ask the allocation ``strategy`` for per-layer ratios at ``sparsity`` and round them."""
    registry = registry or default_registry()
    if not 0.0 <= sparsity <= r_max:
        raise PlanError(f"sparsity {sparsity} must lie in [0, r_max={r_max}]")
    allocator = registry.get("strategy", strategy)()
    adapter = get_adapter(model, registry)
    request = AllocationRequest(widths=tuple(adapter.intermediate_widths()), row_params=row_params(adapter),
                                sparsity=sparsity, r_max=r_max, seed=seed, options={"model": model, **options},
                                registry=registry)
    ratios = allocator.allocate(request)
    return plan_from_ratios(model, ratios, round_to=round_to, r_max=r_max, registry=registry)


def allocate(model: nn.Module, strategy: str = "uniform", sparsity: float = 0.225, *,
             round_to: int = DEFAULT_ROUND_TO, r_max: float = DEFAULT_R_MAX, seed: int = 0,
             registry: Registry | None = None, **options: Any) -> dict[nn.Module, float]:
    """A Torch-Pruning ``pruning_ratio_dict``, keyed by each layer's ``gate_proj``.

    Torch-Pruning then keeps exactly the plan's rounded widths (see
    :func:`~hipp_torchprune.pruning.plan.torch_pruning_ratio`). Pass the adapter's
    ``non_mlp_modules()`` as ``ignored_layers``.
    """
    plan = make_plan(model, strategy, sparsity, round_to=round_to, r_max=r_max, seed=seed,
                     registry=registry, **options)
    adapter = get_adapter(model, registry)
    # every layer is listed (0.0 for dense ones): a missing key would fall back to the pruner's
    # global default ratio (0.5) in Torch-Pruning
    return {mlp.gate: torch_pruning_ratio(b, a)
            for mlp, b, a in zip(adapter.mlps(), plan.widths_before, plan.widths_after)}


def importance(name: str, model: nn.Module, stats: CalibrationStats | None = None, *,
               registry: Registry | None = None, **options: Any) -> tp.importance.Importance:
    """The importance scorer registered as ``name``, bound to ``model`` and its calibration stats."""
    cls = (registry or default_registry()).get("importance", name)
    return cls(model, stats, **options)


def calibration_batches(adapter: ModelAdapter, processor: Any, samples: Sequence[tuple[Any, ...]],
                        batch_size: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """Encode ``(image, prompt)`` samples into model inputs, ``batch_size`` at a time (the prompt
    only: a sample's gold answer, its third element when present, is not encoded)."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        yield adapter.encode(processor, [s[0] for s in chunk], [s[1] for s in chunk])


def calibrate(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, ...]], *, batch_size: int = 8,
              with_grads: bool = False, registry: Registry | None = None) -> CalibrationStats:
    """Run the calibration pass over ``(image, prompt)`` or ``(image, prompt, answer)`` samples;
    with answers, the gradients (``with_grads``) come from the gold answers' loss."""
    from hipp_torchprune.pruning.answers import batch_targets

    if len(samples) == 0:
        raise CalibrationError("the calibration set is empty: give at least one (image, prompt) sample")
    adapter = get_adapter(model, registry)
    targets = batch_targets(processor.tokenizer, samples, batch_size) if with_grads else None
    return collect_stats(model, adapter, calibration_batches(adapter, processor, samples, batch_size), with_grads,
                         targets)


@dataclass
class PruneResult:
    """What :func:`prune_model` did: the realized plan and, in mask mode, the live masks."""

    plan: Plan
    masks: PlanMasks | None = None


def prune_model(model: nn.Module, plan: Plan, scorer: tp.importance.Importance, *,
                mode: Literal["physical", "mask"] = "physical", registry: Registry | None = None,
                grams: GramSource | None = None) -> PruneResult:
    """Apply ``plan`` to ``model``, keeping the highest-scoring channels of each layer.

    ``physical`` removes rows through Torch-Pruning; ``mask`` installs reversible masks (call
    ``result.masks.remove()`` to undo). With ``grams`` (a source of the dense model's augmented
    ``down_proj`` input Grams, :data:`~hipp_torchprune.pruning.reconstruct.GramSource`), each pruned
    ``down_proj``'s kept columns and a bias are refitted by least squares (physical mode only).
    Everything is validated, scored and solved before the model is touched.
    """
    adapter = get_adapter(model, registry)
    if tuple(adapter.intermediate_widths()) != plan.widths_before:
        raise PlanError(f"plan was made for widths {plan.widths_before}, model has {adapter.intermediate_widths()}")
    if mode not in ("physical", "mask"):
        raise PlanError(f"mode must be 'physical' or 'mask', got {mode!r}")
    if grams is not None and mode == "mask":
        raise PlanError("least-squares reconstruction rewrites down_proj: it needs mode='physical'")
    # a scorer that needs Torch-Pruning groups gets the real graph, traced once and reused below
    graph = None if scores_directly(scorer) else build_mlp_graph(adapter)
    scores = layer_scores(adapter, scorer, graph)
    keep = [keep_indices(s, k) for s, k in zip(scores, plan.widths_after)]
    if mode == "mask":
        masks = PlanMasks(adapter)
        masks.set_keep(keep)
        return PruneResult(plan=plan, masks=masks)
    solutions = None if grams is None else solve_downs(adapter, keep, grams)
    prune_physical(adapter, keep, graph)
    if solutions is not None:
        write_downs(adapter, solutions)
    adapter.text_config().hipp_plan = list(plan.ratios)
    return PruneResult(plan=plan)
