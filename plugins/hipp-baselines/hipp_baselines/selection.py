"""Hyper-parameters chosen on the calibration split: OWL's ``(lam, m)`` and ECoFLaP's ``eps``.

For every candidate option set the method's rounded plan is applied in mask mode (rows by the
method's row score, scored once) and scored by the mean calibration loss of
:mod:`hipp_torchprune.pruning.answers` on the method context's calibration samples (the gold
answers' loss when they carry answers): the candidate with the lowest loss wins, the earlier one
on a tie. Candidates whose plans keep the same widths are scored once. The model is left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from hipp_torchprune.methods import MethodContext, MLPRowMethod
from hipp_torchprune.pruning.plan import Plan


def select_plan(method: MLPRowMethod, model: nn.Module, sparsity: float, context: MethodContext,
                grid: Sequence[Mapping[str, Any]]) -> tuple[Plan, dict[str, Any], list[float]]:
    """``(best plan, its options, the loss of every candidate in grid order)``."""
    from hipp_torchprune.api import get_adapter, importance
    from hipp_torchprune.pruning.answers import loss_batches, mean_calibration_loss
    from hipp_torchprune.pruning.operator import PlanMasks, keep_indices, layer_scores

    if not grid:
        raise ValueError("select_plan needs at least one candidate")
    adapter = get_adapter(model, context.registry)
    scorer = importance(method.row_importance(context), model, context.stats, registry=context.registry)
    scores = layer_scores(adapter, scorer)
    batches = loss_batches(adapter, context.processor, context.samples)
    plans = [method.plan(model, sparsity, context, **options) for options in grid]
    seen: dict[tuple[int, ...], float] = {}
    was_training = model.training
    model.eval()
    masks = PlanMasks(adapter)
    try:
        for plan in plans:
            if plan.widths_after not in seen:
                masks.set_keep([keep_indices(s, k) for s, k in zip(scores, plan.widths_after)])
                seen[plan.widths_after] = mean_calibration_loss(model, adapter, batches)
    finally:
        masks.remove()
        model.train(was_training)
    losses = [seen[p.widths_after] for p in plans]
    best = min(range(len(plans)), key=lambda i: (losses[i], i))
    return plans[best], dict(grid[best]), losses


def given_or_grid(context: MethodContext, keys: Sequence[str], grid: Sequence[Mapping[str, Any]]
                  ) -> Sequence[Mapping[str, Any]]:
    """The grid, or the one candidate the context's options fix when they name every key."""
    if all(k in context.options for k in keys):
        return [{k: context.options[k] for k in keys}]
    return grid
