"""Pure row-score functions for one SwiGLU MLP's intermediate channels.

Each returns one score per channel ``j``; higher means more important. ``in_sq`` is the
per-feature sum of squared inputs from calibration, so ``||X_i||_2 = sqrt(in_sq[i])``.
"""

from __future__ import annotations

import torch


def wanda_row_scores(weight: torch.Tensor, in_sq: torch.Tensor) -> torch.Tensor:
    """Wanda score of each output row ``j`` of a projection: ``S_j = sum_i |W_ji| * ||X_i||_2``.

    ``weight`` is ``(out, in)``; ``in_sq`` is ``(in,)``. Returns ``(out,)``.
    """
    return (weight.detach().float().abs() * in_sq.float().sqrt().unsqueeze(0)).sum(1)


def wanda_column_scores(weight: torch.Tensor, in_sq: torch.Tensor) -> torch.Tensor:
    """Wanda-sp/FLAP-style score of each input column ``j`` of ``down_proj``:
    ``S_j = ||X_j||_2 * sum_o |W_oj|``. ``weight`` is ``(out, in)``; returns ``(in,)``."""
    return weight.detach().float().abs().sum(0) * in_sq.float().sqrt()


def magnitude_row_sq(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of squared weights along ``dim`` (``dim=1``: per row, ``dim=0``: per column)."""
    return weight.detach().float().pow(2).sum(dim)


def taylor_scores(signed_terms: list[torch.Tensor]) -> torch.Tensor:
    """LLM-Pruner first-order group importance ``|sum (W * dL/dW)|`` over a coupled group:
    the per-channel signed terms of gate rows, up rows and down columns are summed, then
    the absolute value is taken."""
    return torch.stack([t.float() for t in signed_terms]).sum(0).abs()
