"""The structured operator: remove (physical mode) or mask (mask mode) MLP intermediate rows.

Both modes keep, in each decoder layer, the highest-scoring channels; removing channel ``j``
removes row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of ``down_proj``. Physical
mode asks Torch-Pruning's dependency graph, traced on the language model alone (its attention
groups hang Torch-Pruning 1.6.x, and the vision side is never pruned), which modules a channel
couples, and removes them with :mod:`~hipp_torchprune.pruning.removal` (exactly what
Torch-Pruning's ``LinearPruner`` does, but reversible and with one layer's old weights at most).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import HippError, PlanError
from hipp_torchprune.pruning.removal import LayerRemoval, split_indices
from hipp_torchprune.pruning.scorers import ModuleNamedImportance


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
    gate rows, up rows and down columns (everything else in it must be parameter-free, such as
    the activation and the elementwise product)."""
    mlp = adapter.mlp(index)
    group = graph.get_pruning_group(mlp.gate, tp.prune_linear_out_channels, idxs=list(idxs))
    members = {(dep.target.module, dep.handler == tp.prune_linear_out_channels)
               for dep, _ in group if isinstance(dep.target.module, nn.Linear)}
    others = [dep.target.module for dep, _ in group if not isinstance(dep.target.module, nn.Linear)]
    expected = {(mlp.gate, True), (mlp.up, True), (mlp.down, False)}
    if members != expected or not all(isinstance(m, nn.Module) and not any(True for _ in m.parameters())
                                      for m in others):
        raise GroupStructureError(f"layer {index}: MLP channels are coupled to unexpected modules")
    return group


def layer_scores(adapter: ModelAdapter, scorer: tp.importance.Importance,
                 graph: tp.DependencyGraph | None = None) -> list[torch.Tensor]:
    """Score every channel of every layer with ``scorer``.

    The built-in scorers score each MLP straight from its projections
    (:meth:`~hipp_torchprune.pruning.scorers.ModuleNamedImportance.score_mlp`, the same numbers
    as on the full Torch-Pruning group); any other Torch-Pruning ``Importance`` is called on the
    full-width group of each layer, from ``graph`` (traced here when not given).
    """
    direct = isinstance(scorer, ModuleNamedImportance) and type(scorer).__call__ is ModuleNamedImportance.__call__
    if not direct and graph is None:
        graph = build_mlp_graph(adapter)
    scores = []
    for i, (mlp, width) in enumerate(zip(adapter.mlps(), adapter.intermediate_widths())):
        s = scorer.score_mlp(mlp) if direct else scorer(mlp_group(graph, adapter, i, range(width)))
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


def prune_physical(adapter: ModelAdapter, keep: Sequence[torch.Tensor],
                   graph: tp.DependencyGraph | None = None) -> None:
    """Physically remove every channel not in ``keep[l]``, layer by layer.

    Every index set is checked, and every layer's Torch-Pruning group is built from ``graph``
    (the language model's dependency graph, traced here when not given) and checked, before
    anything is removed. Each layer's removal then holds back only its removed channels (see
    :class:`~hipp_torchprune.pruning.removal.LayerRemoval`), so pruning never needs more than one
    layer's weights beyond the dense model; if anything fails midway, every layer is put back
    exactly, so the model is never left half-pruned.
    """
    split = split_indices(keep, adapter.intermediate_widths())
    graph = graph or build_mlp_graph(adapter)
    for i, (_, removed) in enumerate(split):
        if removed.numel():
            mlp_group(graph, adapter, i, removed.tolist())
    done: list[LayerRemoval] = []
    try:
        for i, (kept, removed) in enumerate(split):
            if removed.numel():
                done.append(LayerRemoval(adapter.mlp(i), kept, removed))
                done[-1].apply()
    except BaseException:
        for removal in reversed(done):
            removal.undo()
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
