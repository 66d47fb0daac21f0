"""Log-domain synaptic flow of the MLP stack (eq. 13).

``R = 1^T (prod_l M_l) 1`` with ``M_l = |W_down| diag(m_l) |W_up|`` the flow of layer ``l``'s
SwiGLU block on its kept rows ``m_l`` (the gate is ignored). The product is pushed through as
a vector, renormalized at every layer and the log scale factors summed, so it never overflows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import torch
from torch import nn


def log_synflow(abs_up: Sequence[torch.Tensor], abs_down: Sequence[torch.Tensor],
                masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """``log R`` for the stack; ``abs_up[l]`` is ``|W_up|`` ``(d_ff, h)``, ``abs_down[l]`` is
    ``|W_down|`` ``(h, d_ff)``, ``masks[l]`` a 0/1 ``(d_ff,)`` or a batch ``(P, d_ff)`` of plans.

    Returns a scalar, or ``(P,)`` for batched masks.
    """
    batched = masks is not None and masks[0].dim() == 2
    p = masks[0].shape[0] if batched else 1
    h = abs_up[0].shape[1]
    v = torch.ones(p, h, dtype=abs_up[0].dtype, device=abs_up[0].device)  # (P, h)
    log_r = torch.zeros(p, dtype=torch.float64, device=v.device)
    for i, (up, down) in enumerate(zip(abs_up, abs_down)):
        inter = v @ up.T  # (P, d_ff)
        if masks is not None:
            inter = inter * (masks[i] if batched else masks[i].unsqueeze(0)).to(inter.dtype)
        v = inter @ down.T  # (P, h)
        scale = v.sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        log_r = log_r + scale.squeeze(-1).double().log()
        v = v / scale
    return log_r if batched else log_r[0]


def phi(abs_up: Sequence[torch.Tensor], abs_down: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``phi = log R(pruned) - log R(dense)`` (at most 0)."""
    return log_synflow(abs_up, abs_down, masks) - log_synflow(abs_up, abs_down)


class AbsWeights(Sequence[torch.Tensor]):
    """``|W|`` of each linear, in float32, computed when indexed and never kept.

    :func:`log_synflow` walks the stack one layer at a time, so at most one layer's float32 copy
    is alive during a pass, instead of a resident copy of every MLP weight (float64 copies of
    ``|W_up|`` and ``|W_down|`` were about 23 GB at LLaVA-7B, more than the bf16 model's 13 GB).
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        self.linears = list(linears)

    def __len__(self) -> int:
        return len(self.linears)

    @overload
    def __getitem__(self, i: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, i: slice) -> list[torch.Tensor]: ...
    def __getitem__(self, i: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.linears[i].weight.detach().abs().float()
