"""Removing one SwiGLU MLP's channels in place, reversibly, holding at most one layer's old weights.

Torch-Pruning decides *what* goes (:func:`~hipp_torchprune.pruning.operator.mlp_group` checks
that a channel couples exactly gate row, up row and down column); this module does the removal
itself, the same way Torch-Pruning's ``LinearPruner`` does (weights, biases and gradients
sliced, ``in_features``/``out_features`` updated), with two differences that matter at 7B:

- **memory**: each original parameter keeps only its *removed* channels once the kept ones are
  in the model, so a pruned layer costs no more than it did dense, and undoing it is exact;
- **speed**: ``down_proj`` columns are gathered with NumPy's ``take`` on CPU, several times
  faster than ``index_select`` along dimension 1 (which copies element by element).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hipp_torchprune.adapters.base import MLPProjections
from hipp_torchprune.errors import PlanError

#: Integer dtypes of the same width, to hand any float tensor to NumPy bit for bit.
_SAME_WIDTH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def split_indices(keep: Sequence[torch.Tensor], widths: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(kept, removed)`` channel indices of every layer, both sorted, from ``keep[l]``.

    Raises :class:`PlanError` unless there is one 1-D integer tensor of distinct in-range
    indices per layer.
    """
    if len(keep) != len(widths):
        raise PlanError(f"got keep indices for {len(keep)} layers, the model has {len(widths)}")
    out = []
    for i, (idx, width) in enumerate(zip(keep, widths)):
        idx = torch.as_tensor(idx).cpu()
        if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise PlanError(f"layer {i}: keep indices must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= width):
            raise PlanError(f"layer {i}: keep indices must lie in [0, {width})")
        removed = torch.ones(width, dtype=torch.bool)
        removed[idx] = False
        kept = torch.nonzero(~removed).flatten()
        if kept.numel() != idx.numel():
            raise PlanError(f"layer {i}: keep indices repeat a channel")
        out.append((kept, torch.nonzero(removed).flatten()))
    return out


def gather_channels(tensor: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``tensor.index_select(dim, idx)`` as a new contiguous tensor (``idx`` valid, sorted).

    Columns of a CPU matrix go through ``numpy.take`` on a same-width integer view (bit-exact
    for every dtype, bf16 included).
    """
    if dim == 1 and tensor.ndim == 2 and tensor.device.type == "cpu" and tensor.element_size() in _SAME_WIDTH_INT:
        as_int = _SAME_WIDTH_INT[tensor.element_size()]
        out = torch.empty(tensor.shape[0], idx.numel(), dtype=tensor.dtype)
        np.take(tensor.detach().view(as_int).numpy(), idx.numpy(), axis=1, out=out.view(as_int).numpy(), mode="clip")
        return out
    return tensor.detach().index_select(dim, idx.to(tensor.device))


def _merge(kept_part: torch.Tensor | None, removed_part: torch.Tensor | None, dim: int,
           kept: torch.Tensor, removed: torch.Tensor) -> torch.Tensor | None:
    """The full tensor again from its kept and removed channels along ``dim``."""
    if kept_part is None or removed_part is None:
        return None
    shape = list(kept_part.shape)
    shape[dim] += removed_part.shape[dim]
    full = kept_part.new_empty(shape)
    full.index_copy_(dim, kept.to(full.device), kept_part)
    full.index_copy_(dim, removed.to(full.device), removed_part)
    return full


class LayerRemoval:
    """Remove channels ``removed`` (keep ``kept``) from one MLP, and undo it exactly if asked.

    :meth:`apply` handles one parameter at a time: it builds the kept and the removed slices,
    then swaps (new ``Parameter`` with the kept channels into the module, the original keeps
    the removed ones). Nothing can fail after a swap has started, so a failure leaves each
    parameter either untouched or swapped, and :meth:`undo` puts every swapped one back; the
    original ``Parameter`` objects return, so references to them (an optimizer's) stay valid.
    """

    def __init__(self, mlp: MLPProjections, kept: torch.Tensor, removed: torch.Tensor) -> None:
        self.kept, self.removed = kept, removed
        #: (module, channel dim of its weight, (in_features, out_features), {name: original})
        self.members = [(lin, dim, (lin.in_features, lin.out_features),
                         {n: p for n, p in (("weight", lin.weight), ("bias", lin.bias))
                          if p is not None and (n == "weight" or dim == 0)})
                        for lin, dim in ((mlp.gate, 0), (mlp.up, 0), (mlp.down, 1))]
        self._swapped: set[int] = set()  # ids of the originals that hold only the removed channels

    def apply(self) -> None:
        """Remove the channels from gate rows, up rows and down columns."""
        for lin, dim, _, params in self.members:
            for name, p in params.items():
                self._swap(lin, name, p, dim if p.ndim > 1 else 0)
            if dim == 0:
                lin.out_features = self.kept.numel()
            else:
                lin.in_features = self.kept.numel()

    def _swap(self, lin: nn.Linear, name: str, p: nn.Parameter, d: int) -> None:
        data = gather_channels(p.data, d, self.kept), gather_channels(p.data, d, self.removed)
        grad = (None, None) if p.grad is None else (gather_channels(p.grad, d, self.kept),
                                                      gather_channels(p.grad, d, self.removed))
        new = nn.Parameter(data[0], requires_grad=p.requires_grad)
        new.grad = grad[0]
        setattr(lin, name, new)
        p.grad = None
        p.data, p.grad = data[1], grad[1]
        self._swapped.add(id(p))

    def undo(self) -> None:
        """Put the layer back exactly as it was before :meth:`apply`."""
        for lin, dim, (fin, fout), params in self.members:
            for name, p in params.items():
                if id(p) in self._swapped:
                    d, current = dim if p.ndim > 1 else 0, getattr(lin, name)
                    data = _merge(current.data, p.data, d, self.kept, self.removed)
                    grad = _merge(current.grad, p.grad, d, self.kept, self.removed)
                    p.grad = None
                    p.data, p.grad = data, grad
                    self._swapped.discard(id(p))
                setattr(lin, name, p)
            lin.in_features, lin.out_features = fin, fout
