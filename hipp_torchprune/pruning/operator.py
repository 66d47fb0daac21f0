"""The structured operator: remove (physical mode) or mask (mask mode) MLP intermediate rows.

Both modes keep, in each decoder layer, the highest-scoring channels; removing channel ``j``
removes row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of ``down_proj``. Physical
mode asks Torch-Pruning's dependency graph, traced on the language model alone (its attention
groups hang Torch-Pruning 1.6.x, and the vision side is never pruned) and on a weightless
meta-device twin of it, which modules a channel couples, and removes them with
:mod:`~hipp_torchprune.pruning.removal` (exactly what Torch-Pruning's ``LinearPruner`` does,
but reversible and with one layer's old weights at most).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from hipp_torchprune.adapters.base import MLPProjections, ModelAdapter
from hipp_torchprune.errors import HippError, PlanError
from hipp_torchprune.pruning.removal import LayerRemoval, split_indices
from hipp_torchprune.pruning.scorers import ModuleNamedImportance


class GroupStructureError(HippError, RuntimeError):
    """Torch-Pruning coupled an MLP channel to something other than gate/up/down."""


def _trace(lm: nn.Module, example_inputs: dict[str, torch.Tensor]) -> tp.DependencyGraph:
    norms = [(p, 0) for name, p in lm.named_parameters() if name.endswith("norm.weight")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            lm, example_inputs=example_inputs, unwrapped_parameters=norms,
            output_transform=lambda out: out.last_hidden_state,
        )


def build_mlp_graph(adapter: ModelAdapter) -> tp.DependencyGraph:
    """Trace the language model's dependency graph from a text-only input."""
    return _trace(adapter.language_model(), adapter.text_example_inputs())


def meta_twin(adapter: ModelAdapter) -> tuple[nn.Module, list[MLPProjections]]:
    """A weightless copy of the language model on the meta device (same class, config and
    current MLP widths) and its MLPs, in layer order."""
    lm = adapter.language_model()
    with torch.device("meta"):
        twin = type(lm)._from_config(lm.config, dtype=next(lm.parameters()).dtype)
        layers = list(twin.layers)
        if len(layers) != len(adapter.decoder_layers()):
            raise GroupStructureError("the language model's twin has another number of layers")
        for layer, real in zip(layers, adapter.mlps()):
            for name, lin in (("gate_proj", real.gate), ("up_proj", real.up), ("down_proj", real.down)):
                setattr(layer.mlp, name, nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                                   dtype=lin.weight.dtype))
    return twin, [MLPProjections(gate=layer.mlp.gate_proj, up=layer.mlp.up_proj, down=layer.mlp.down_proj)
                  for layer in layers]


def check_mlp_coupling(adapter: ModelAdapter, layers: Sequence[int], graph: tp.DependencyGraph | None = None) -> None:
    """Raise :class:`GroupStructureError` unless, in each of ``layers``, Torch-Pruning couples an
    MLP channel to exactly its gate row, up row and down column.

    Without the real ``graph``, the graph is traced on :func:`meta_twin` (same modules, same
    shapes, no arithmetic: at 7B the real trace is a bf16 forward through every weight, the
    slowest part of bare Torch-Pruning on CPU); an architecture the twin cannot reproduce is
    traced for real.
    """
    mlps = adapter.mlps()
    if graph is None:
        try:
            twin, mlps = meta_twin(adapter)
            graph = _trace(twin, {k: v.to("meta") for k, v in adapter.text_example_inputs().items()})
        except Exception:  # noqa: BLE001 - any failure of the shortcut falls back to the real trace
            graph, mlps = build_mlp_graph(adapter), adapter.mlps()
    for i in layers:
        _coupled_group(graph, mlps[i], i, [0])  # the coupling of one channel is that of every channel


def mlp_group(graph: tp.DependencyGraph, adapter: ModelAdapter, index: int,
              idxs: Sequence[int]) -> tp.dependency.Group:
    """The Torch-Pruning group of layer ``index``'s channels ``idxs``, checked to couple exactly
    gate rows, up rows and down columns (everything else in it must be parameter-free, such as
    the activation and the elementwise product)."""
    return _coupled_group(graph, adapter.mlp(index), index, idxs)


def _coupled_group(graph: tp.DependencyGraph, mlp: MLPProjections, index: int,
                   idxs: Sequence[int]) -> tp.dependency.Group:
    group = graph.get_pruning_group(mlp.gate, tp.prune_linear_out_channels, idxs=list(idxs))
    members = {(dep.target.module, dep.handler == tp.prune_linear_out_channels)
               for dep, _ in group if isinstance(dep.target.module, nn.Linear)}
    others = [dep.target.module for dep, _ in group if not isinstance(dep.target.module, nn.Linear)]
    expected = {(mlp.gate, True), (mlp.up, True), (mlp.down, False)}
    if members != expected or not all(isinstance(m, nn.Module) and not any(True for _ in m.parameters())
                                      for m in others):
        raise GroupStructureError(f"layer {index}: MLP channels are coupled to unexpected modules")
    return group


def scores_directly(scorer: tp.importance.Importance) -> bool:
    """Whether ``scorer`` scores an MLP from its projections alone (the built-in scorers), so
    that :func:`layer_scores` needs no dependency graph for it."""
    return isinstance(scorer, ModuleNamedImportance) and type(scorer).__call__ is ModuleNamedImportance.__call__


def layer_scores(adapter: ModelAdapter, scorer: tp.importance.Importance,
                 graph: tp.DependencyGraph | None = None) -> list[torch.Tensor]:
    """Score every channel of every layer with ``scorer``.

    The built-in scorers score each MLP straight from its projections
    (:meth:`~hipp_torchprune.pruning.scorers.ModuleNamedImportance.score_mlp`, the same numbers
    as on the full Torch-Pruning group); any other Torch-Pruning ``Importance`` is called on the
    full-width group of each layer, from ``graph`` (traced here when not given).
    """
    direct = scores_directly(scorer)
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

    Every index set and every pruned layer's coupling (:func:`check_mlp_coupling`, on ``graph``
    when the caller traced the real one already) is checked before anything is removed. Each layer's removal then holds back only its removed channels
    (see :class:`~hipp_torchprune.pruning.removal.LayerRemoval`), so pruning never needs more
    than one layer's weights beyond the dense model; if anything fails midway, every layer is
    put back exactly, so the model is never left half-pruned.
    """
    split = split_indices(keep, adapter.intermediate_widths())
    check_mlp_coupling(adapter, [i for i, (_, removed) in enumerate(split) if removed.numel()], graph)
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
