"""FLAP (An et al., 2024), MLP rows: fluctuation metric, adaptive widths, bias compensation.

Reference: CASIA-IVA-Lab/FLAP, ``lib/prune.py`` (``prune_flap``, ``compress``) and
``lib/layerwrapper.py`` (``BiasGPT``), with its defaults ``--metrics WIFV --structure AL-AM``.

* **Metric** (WIFV, :func:`fluctuation_scores`): channel ``j`` of a layer scores
  ``Var_tokens(h_j) * sum_o W_down[o, j]^2``, ``h`` = down_proj's input over the calibration
  tokens, taken once on the dense model (as the reference does).
* **Adaptive widths** (:func:`global_removals`): each layer's scores are standardized,
  ``(s - mean) / std``; the channels with the lowest standardized scores are removed across all
  layers until the budget is met (the reference's ``AL-*`` global threshold), no layer past ``r_max``.
* **Bias compensation** (:func:`compensation_bias`): the removed channels' mean contribution
  ``sum_{j removed} mean(h_j) W_down[:, j]`` becomes a down_proj bias, so the layer's output keeps
  its mean. The checkpoint carries the bias (``save_pruned`` records the added parameter).

Kept deviations: only MLP channels are pruned (the reference's ``AL-AM`` also removes attention
heads against the same threshold); the budget is parameter-matched and widths round to
``round_to``; the variance is the exact ``E[h^2] - E[h]^2`` over real tokens, where the reference's
running estimator skips the first sample's deviations and counts samples rather than tokens
(a per-layer scale, removed by the standardization, plus a first-sample difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.methods import MethodContext, MethodReport, MLPRowMethod
from hipp_torchprune.pruning.allocators import AllocationRequest, calibrated_inputs
from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.pruning.reconstruct import add_bias
from hipp_torchprune.pruning.scorers import ModuleNamedImportance


def fluctuation(in_sq: torch.Tensor, in_sum: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Per-feature variance over ``n_tokens`` tokens, ``E[h^2] - E[h]^2`` (float64, at least 0)."""
    if n_tokens < 1:
        raise CalibrationError("FLAP's fluctuation needs at least one calibration token")
    mean = in_sum.double() / n_tokens
    return (in_sq.double() / n_tokens - mean * mean).clamp_min(0.0)


def fluctuation_scores(w_down: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """WIFV: ``variance_j * sum_o W_down[o, j]^2`` per input channel ``j`` of down_proj."""
    return variance.double() * w_down.detach().double().pow(2).sum(0)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """``(s - mean) / std`` (unbiased std, as ``torch.std``); all zeros when ``std`` is 0."""
    std = scores.std()
    return torch.zeros_like(scores) if not std > 0 else (scores - scores.mean()) / std


def global_removals(standardized: Sequence[torch.Tensor], row_params: Sequence[int], budget: float,
                    caps: Sequence[int]) -> list[int]:
    """Channels removed per layer: the lowest standardized scores of all layers, lowest first, while
    each removal brings the removed parameters closer to ``budget`` (one global threshold: it stops
    at the first channel that would overshoot); layer ``l`` gives at most ``caps[l]``.

    Example: layers ``[-1, 1]`` and ``[-2, 0, 2]``, one parameter per row, budget 2 -> ``[1, 1]``.
    """
    flat = torch.cat([s.double() for s in standardized])
    layer_of = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(standardized)])
    removed = [0] * len(standardized)
    done = 0.0
    for idx in torch.argsort(flat, stable=True).tolist():
        layer = int(layer_of[idx])
        if removed[layer] >= caps[layer]:
            continue
        if abs(budget - done - row_params[layer]) >= abs(budget - done):
            break
        removed[layer] += 1
        done += row_params[layer]
    return removed


def compensation_bias(w_down: torch.Tensor, mean: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``sum_{j not in keep} mean_j * W_down[:, j]`` (float64), the removed channels' mean output."""
    removed = torch.ones(w_down.shape[1], dtype=torch.bool)
    removed[keep.cpu()] = False
    return w_down.detach().double().cpu()[:, removed] @ mean.double().cpu()[removed]


def _down_stats(stats: CalibrationStats, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in stats.in_sum or name not in stats.in_sq:
        raise CalibrationError(f"FLAP needs the calibration sums of {name}'s input: calibrate with "
                               "hipp_torchprune.api.calibrate")
    return stats.in_sq[name], stats.in_sum[name]


class FlapScorer(ModuleNamedImportance):
    """FLAP's WIFV channel score on the group's down_proj columns (:func:`fluctuation_scores`)."""

    name = "flap"

    def score(self, deps: list[tuple[nn.Linear, bool, Any]]) -> torch.Tensor:
        """The down member's fluctuation score (gate/up rows do not enter the reference's metric)."""
        for module, is_out, idxs in deps:
            if not is_out:
                in_sq, in_sum = _down_stats(self.stats, self.name_of(module))
                variance = fluctuation(in_sq, in_sum, self.stats.n_tokens)
                return fluctuation_scores(module.weight, variance)[idxs].float()
        raise CalibrationError("FLAP scores down_proj columns: the group has no down_proj member")


class FlapAllocator:
    """Adaptive widths from the global threshold on standardized FLAP scores (:func:`global_removals`)."""

    name: ClassVar[str] = "flap"
    needs_calibration: ClassVar[bool] = True

    def allocate(self, request: AllocationRequest) -> list[float]:
        """Each layer's removed fraction at the threshold that meets the target."""
        from hipp_torchprune.api import get_adapter

        model, stats = calibrated_inputs(request, self.name)
        scorer = FlapScorer(model, stats)
        every = slice(None)
        scores = [standardize(scorer.score([(mlp.down, False, every)])) for mlp in get_adapter(model, request.registry).mlps()]
        budget = request.sparsity * sum(w * p for w, p in zip(request.widths, request.row_params))
        caps = [int(request.r_max * w) for w in request.widths]
        removed = global_removals(scores, request.row_params, budget, caps)
        return [r / w for r, w in zip(removed, request.widths)]


class FlapMethod(MLPRowMethod):
    """FLAP: fluctuation scores, adaptive widths, bias compensation (module docstring)."""

    name: ClassVar[str] = "flap"
    strategy: ClassVar[str] = "flap"
    importance: ClassVar[str] = "flap"

    def prune(self, model: nn.Module, sparsity: float, context: MethodContext) -> MethodReport:
        """Prune to the FLAP plan, then fold the removed channels' mean output into down_proj biases
        (under ``context.reconstruct == "lstsq"`` the shared least-squares refit replaces that step)."""
        from hipp_torchprune.api import get_adapter, importance
        from hipp_torchprune.pruning.operator import keep_indices, layer_scores

        plan = self.plan(model, sparsity, context)
        if context.reconstruct == "lstsq":  # the least-squares refit subsumes the mean-bias compensation
            return self.prune_plan(model, plan, context, {"bias_compensation": False})
        adapter = get_adapter(model, context.registry)
        scorer = importance(self.importance, model, context.stats, registry=context.registry)
        keep = [keep_indices(s, k) for s, k in zip(layer_scores(adapter, scorer), plan.widths_after)]
        biases = []
        for mlp, kept in zip(adapter.mlps(), keep):
            _, in_sum = _down_stats(context.stats, scorer.name_of(mlp.down))
            biases.append(compensation_bias(mlp.down.weight, in_sum / context.stats.n_tokens, kept))
        report = self.prune_plan(model, plan, context, {"bias_compensation": True})
        for mlp, bias in zip(adapter.mlps(), biases):
            add_bias(mlp.down, bias)
        return report
