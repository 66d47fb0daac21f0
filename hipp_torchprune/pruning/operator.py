"""The structured operator: remove (physical mode) or mask (mask mode) MLP intermediate rows.

Both modes keep, in each decoder layer, the highest-scoring channels; removing channel ``j``
removes row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of ``down_proj``. Physical
mode goes through Torch-Pruning's dependency graph, traced on the language model alone (its
attention groups hang Torch-Pruning 1.6.x, and the vision side is never pruned).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import HippError, PlanError


class GroupStructureError(HippError, RuntimeError):
    """Torch-Pruning coupled an MLP channel to something other than gate/up/down."""


def build_mlp_graph(adapter: ModelAdapter) -> tp.DependencyGraph:
    """Trace the language model's dependency graph from a text-only input."""
    lm = adapter.language_model()
    norms = [(p, 0) for name, p in lm.named_parameters() if name.endswith("norm.weight")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            lm, example_inputs=adapter.text_example_inputs(), unwrapped_parameters=norms,
            output_transform=lambda out: out.last_hidden_state,
        )


def mlp_group(graph: tp.DependencyGraph, adapter: ModelAdapter, index: int,
              idxs: Sequence[int]) -> tp.dependency.Group:
    """The Torch-Pruning group of layer ``index``'s channels ``idxs``, checked to couple exactly
    gate rows, up rows and down columns."""
    mlp = adapter.mlp(index)
    group = graph.get_pruning_group(mlp.gate, tp.prune_linear_out_channels, idxs=list(idxs))
    members = {(dep.target.module, dep.handler == tp.prune_linear_out_channels)
               for dep, _ in group if isinstance(dep.target.module, nn.Linear)}
    expected = {(mlp.gate, True), (mlp.up, True), (mlp.down, False)}
    if members != expected:
        raise GroupStructureError(f"layer {index}: MLP channels are coupled to unexpected modules")
    return group


def layer_scores(adapter: ModelAdapter, scorer: tp.importance.Importance,
                 graph: tp.DependencyGraph | None = None) -> list[torch.Tensor]:
    """Score every channel of every layer with ``scorer`` (called on full Torch-Pruning groups)."""
    graph = graph or build_mlp_graph(adapter)
    scores = []
    for i, width in enumerate(adapter.intermediate_widths()):
        s = scorer(mlp_group(graph, adapter, i, range(width)))
        if s is None or s.shape != (width,):
            raise PlanError(f"importance returned {None if s is None else tuple(s.shape)} for layer {i}, "
                            f"expected ({width},)")
        scores.append(s.detach().float().cpu())
    return scores


def keep_indices(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Sorted indices of the ``kept`` highest scores (ties broken by lower index)."""
    order = torch.argsort(-scores.double(), stable=True)
    return order[:kept].sort().values


def score_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every row, 0 = highest score (ties broken by lower index).

    ``keep_indices(scores, k)`` are exactly the rows whose rank is below ``k``, so a plan's mask
    is one comparison per layer once the ranks are known (no sort per plan).
    """
    order = torch.argsort(-scores.double(), stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks


def _snapshot(adapter: ModelAdapter) -> list[tuple[nn.Linear, nn.Parameter, nn.Parameter | None, int, int]]:
    return [(lin, lin.weight, lin.bias, lin.in_features, lin.out_features)
            for m in adapter.mlps() for lin in (m.gate, m.up, m.down)]


def _restore(snapshot: list[tuple[nn.Linear, nn.Parameter, nn.Parameter | None, int, int]]) -> None:
    for lin, weight, bias, fin, fout in snapshot:
        lin.weight, lin.bias, lin.in_features, lin.out_features = weight, bias, fin, fout


def prune_physical(adapter: ModelAdapter, keep: Sequence[torch.Tensor]) -> None:
    """Physically remove every channel not in ``keep[l]`` through Torch-Pruning groups.

    All groups are built and checked before anything is removed; if removal fails midway,
    the original parameters are put back, so the model is never left half-pruned.
    """
    widths = adapter.intermediate_widths()
    if len(keep) != len(widths):
        raise PlanError(f"got keep indices for {len(keep)} layers, the model has {len(widths)}")
    graph = build_mlp_graph(adapter)
    groups = []
    for i, (idx, width) in enumerate(zip(keep, widths)):
        removed = sorted(set(range(width)) - set(idx.tolist()))
        groups.append(mlp_group(graph, adapter, i, removed) if removed else None)
    snapshot = _snapshot(adapter)
    try:
        for group in groups:
            if group is not None:
                group.prune()
    except Exception:
        _restore(snapshot)
        raise
    _record_widths(adapter)


def _record_widths(adapter: ModelAdapter) -> None:
    """Write the per-layer widths where the model's config and MLP modules advertise them."""
    widths = adapter.intermediate_widths()
    for layer, width in zip(adapter.decoder_layers(), widths):
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = width
    adapter.text_config().hipp_intermediate_sizes = list(widths)


class PlanMasks:
    """Mask mode: the same plan applied as reversible channel masks, without weight copies.

    A forward pre-hook on every ``down_proj`` multiplies the intermediate activation by a 0/1
    mask, which is exactly what removing those channels does. Masks are updated in place by
    :meth:`set_keep`, so policy search can try many plans on one model. Use as a context manager
    or call :meth:`remove`.
    """

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.masks: list[torch.Tensor] = []
        self._handles = []
        for mlp in adapter.mlps():
            mask = torch.ones(mlp.down.in_features, dtype=mlp.down.weight.dtype, device=mlp.down.weight.device)
            self.masks.append(mask)
            self._handles.append(mlp.down.register_forward_pre_hook(self._hook(mask)))

    @staticmethod
    def _hook(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (args[0] * mask,) + tuple(args[1:])
        return hook

    def set_keep(self, keep: Sequence[torch.Tensor] | None) -> None:
        """Keep only ``keep[l]`` in layer ``l``; ``None`` restores the dense model."""
        if keep is not None and len(keep) != len(self.masks):
            raise PlanError(f"got keep indices for {len(keep)} layers, the model has {len(self.masks)}")
        for i, mask in enumerate(self.masks):
            if keep is None:
                mask.fill_(1)
            else:
                mask.zero_()
                mask[keep[i].to(mask.device)] = 1

    def set_ranked(self, ranks: Sequence[torch.Tensor], kept: Sequence[int]) -> None:
        """Keep the ``kept[l]`` best rows of layer ``l``, given :func:`score_ranks` of its scores.

        Equivalent to ``set_keep([keep_indices(s, k) ...])`` but sort-free; with ``ranks`` already
        on the model's device it costs one comparison per layer and no host synchronization.
        """
        if len(ranks) != len(self.masks) or len(kept) != len(self.masks):
            raise PlanError(f"got {len(ranks)} rank tensors and {len(kept)} widths for {len(self.masks)} layers")
        for mask, rank, k in zip(self.masks, ranks, kept):
            mask.copy_(rank.to(mask.device) < k)

    def remove(self) -> None:
        """Remove the hooks; the model is dense and untouched again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> PlanMasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
