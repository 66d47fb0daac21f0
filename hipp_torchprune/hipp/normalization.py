"""Reward shaping (eqs. 11-12): the compression ramp and running normalization with clipping."""

from __future__ import annotations

import torch


def compression_return(sparsity: torch.Tensor, s_lo: float, s_hi: float) -> torch.Tensor:
    """``R_comp = clip((s - s_lo) / (s_hi - s_lo), 0, 1)``."""
    return ((sparsity - s_lo) / max(s_hi - s_lo, 1e-12)).clamp(0.0, 1.0)


def reference_scales(dense: torch.Tensor, pruned: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Per-objective scales ``(3,)``: ``|dense - pruned|`` (floored), the raw objectives of the dense
    plan and of a reference pruned plan (uniform at the budget's upper end). Dividing raw
    objectives by them makes a preference-weighted sum independent of each reward's units.

    Example: ``reference_scales(tensor([4.0, -0.2, 0.0]), tensor([3.0, -0.4, 1.0]))`` is ``[1.0, 0.2, 1.0]``.
    """
    return (dense - pruned).abs().clamp_min(floor)


def cap_at_dense(raw: torch.Tensor, dense: torch.Tensor, columns: int = 2) -> torch.Tensor:
    """The first ``columns`` returns of ``raw (N, 3)`` capped at the dense plan's (``dense (3,)``):
    robustness and utility with ``columns=2``, robustness alone with ``columns=1``; compression
    (column 2) is never capped.

    A pruned plan that scores above the dense model on the reward rows has found something about
    those rows (a sharper yes/no, say), not robustness it did not have: with the cap such plans
    tie, and the other objectives decide between them (``docs/method.md``, "Dense cap").

    Example: ``cap_at_dense(tensor([[-0.2, -0.5, 0.3]]), tensor([-0.25, -0.3, 0.0]))`` is
    ``[[-0.25, -0.5, 0.3]]``.
    """
    if columns not in (1, 2):
        raise ValueError(f"columns must be 1 or 2, got {columns}")
    capped = raw.clone()
    capped[:, :columns] = torch.minimum(raw[:, :columns], dense[:columns].to(raw.dtype))
    return capped


class RunningNorm:
    """Online mean/std per objective, updated from each group's raw scores, then clip to ``[-c, c]``.

    Uses the parallel (Chan et al.) update of count, mean and sum of squared deviations.
    """

    def __init__(self, dim: int, clip: float = 3.0, eps: float = 1e-6) -> None:
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dtype=torch.float64)
        self.clip, self.eps = clip, eps

    @property
    def std(self) -> torch.Tensor:
        """Population std of everything seen so far (1 before anything is seen)."""
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / self.count).sqrt()

    def update(self, batch: torch.Tensor) -> None:
        """Fold a ``(N, dim)`` batch of raw scores into the statistics."""
        batch = batch.double().reshape(-1, self.mean.numel())
        n = batch.shape[0]
        b_mean = batch.mean(0)
        b_m2 = ((batch - b_mean) ** 2).sum(0)
        delta = b_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + b_m2 + delta**2 * self.count * n / total
        self.count = total

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``clip((x - mean) / (std + eps), -c, c)`` in float32."""
        out = (batch.double() - self.mean) / (self.std + self.eps)
        return out.clamp(-self.clip, self.clip).float()

    def state_dict(self) -> dict:
        """Serializable state."""
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.count = int(state["count"])
        self.mean = torch.tensor(state["mean"], dtype=torch.float64)
        self.m2 = torch.tensor(state["m2"], dtype=torch.float64)
