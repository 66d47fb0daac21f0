"""Pure row-score functions for one SwiGLU MLP's intermediate channels.

Each returns one score per channel ``j``; higher means more important. ``in_sq`` is the
per-feature sum of squared inputs from calibration, so ``||X_i||_2 = sqrt(in_sq[i])``.

The weights are read block by block: each block is copied to float32, reduced, and dropped, so
no full-size float32 copy of a weight is ever made (at 7B shapes that copy is 180 MB per
projection and dominated scoring time). The results are bit-identical to reducing the whole
float32 weight at once: a row's reduction runs along its own contiguous row, and a column block
(a multiple of the widest vector-lane group, see :data:`COLUMN_BLOCK`) reduces each column over
all rows in the same order as the full tensor does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

#: float32 elements per temporary row block (1 MiB, about an L2 cache).
ROW_BLOCK_ELEMENTS = 1 << 18
#: Columns per block for column reductions; a multiple of 64 so that every block boundary falls
#: on a boundary of ATen's vectorized column groups (AVX2 and AVX-512 alike).
COLUMN_BLOCK = 128


def _row_blocks(weight: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, float32 copy of weight[rows])`` for consecutive row blocks of a 2-D weight."""
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, weight.shape[1]))
    for start in range(0, weight.shape[0], step):
        rows = slice(start, start + step)
        yield rows, weight.detach()[rows].to(torch.float32, copy=True)


def _column_blocks(weight: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(columns, float32 copy of weight[:, columns])`` for consecutive column blocks."""
    for start in range(0, weight.shape[1], COLUMN_BLOCK):
        cols = slice(start, start + COLUMN_BLOCK)
        yield cols, weight.detach()[:, cols].to(torch.float32, copy=True)


def _reduce(weight: torch.Tensor, dim: int, transform: Callable[[torch.Tensor], object]) -> torch.Tensor:
    """``transform`` each float32 block in place, then sum it along ``dim``: one value per row
    (``dim=1``, shape ``(out,)``) or per column (``dim=0``, shape ``(in,)``)."""
    out = torch.empty(weight.shape[1 - dim], dtype=torch.float32, device=weight.device)
    for where, block in (_row_blocks(weight) if dim == 1 else _column_blocks(weight)):
        transform(block)
        torch.sum(block, dim, out=out[where])
    return out


def wanda_row_scores(weight: torch.Tensor, in_sq: torch.Tensor) -> torch.Tensor:
    """Wanda score of each output row ``j`` of a projection: ``S_j = sum_i |W_ji| * ||X_i||_2``.

    ``weight`` is ``(out, in)``; ``in_sq`` is ``(in,)``. Returns ``(out,)``.
    """
    norms = in_sq.to(device=weight.device, dtype=torch.float32).sqrt().unsqueeze(0)
    return _reduce(weight, 1, lambda block: block.abs_().mul_(norms))


def wanda_column_scores(weight: torch.Tensor, in_sq: torch.Tensor) -> torch.Tensor:
    """Wanda-sp/FLAP-style score of each input column ``j`` of ``down_proj``:
    ``S_j = ||X_j||_2 * sum_o |W_oj|``. ``weight`` is ``(out, in)``; returns ``(in,)``."""
    norms = in_sq.to(device=weight.device, dtype=torch.float32).sqrt()
    return _reduce(weight, 0, torch.Tensor.abs_) * norms


def magnitude_row_sq(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of squared weights along ``dim`` (``dim=1``: per row, ``dim=0``: per column)."""
    square = lambda block: block.mul_(block)  # noqa: E731 - x * x is what pow(2) computes
    return _reduce(weight, dim, square)


def taylor_scores(signed_terms: list[torch.Tensor]) -> torch.Tensor:
    """LLM-Pruner first-order group importance ``|sum (W * dL/dW)|`` over a coupled group:
    the per-channel signed terms of gate rows, up rows and down columns are summed, then
    the absolute value is taken."""
    return torch.stack([t.float() for t in signed_terms]).sum(0).abs()
