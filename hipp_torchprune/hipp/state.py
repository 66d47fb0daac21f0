"""State builder: per-layer feature vectors, normalized per model (eq. 7's inputs).

Static features come from the :class:`~hipp_torchprune.hipp.profile.ModelProfile`; the budget
interval and the preference are appended per query. Every statistic is z-scored across the
model's layers (constant ones become 0), so one policy design fits 4 layers or 36.
"""

from __future__ import annotations

import torch

from hipp_torchprune.hipp.profile import ModelProfile

#: Names of the static per-layer features, in column order.
STATIC_FEATURES: tuple[str, ...] = (
    "depth", "type", "visual_sensitivity", "act_norm_mean", "act_norm_std", "row_score_mean", "row_score_std",
    "gate_abs_mean", "up_abs_mean", "down_abs_mean", "gate_abs_std", "up_abs_std", "down_abs_std",
    "visual_sensitivity_raw",
)


def zscore(column: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` across layers; a constant column becomes zeros."""
    std = column.std(unbiased=False)
    return torch.zeros_like(column) if std < 1e-12 else (column - column.mean()) / std


def static_features(profile: ModelProfile) -> torch.Tensor:
    """``(L, F)`` features: depth ``l/(L-1)``, type id, then z-scored statistics, plus the raw
    visual sensitivity (an absolute attention mass in [0, 1], comparable across models)."""
    layers = profile.layers
    n = len(layers)
    depth = torch.tensor([i / max(n - 1, 1) for i in range(n)])
    stats = torch.tensor([[layer.visual_sensitivity, layer.act_norm_mean, layer.act_norm_std, layer.row_score_mean,
                           layer.row_score_std, *layer.weight_abs_mean, *layer.weight_abs_std] for layer in layers],
                         dtype=torch.float64)
    normalized = torch.stack([zscore(stats[:, j]) for j in range(stats.shape[1])], dim=1).float()
    raw_sens = torch.tensor([layer.visual_sensitivity for layer in layers])
    return torch.cat([depth[:, None], torch.zeros(n, 1), normalized, raw_sens[:, None]], dim=1)


def layer_states(static: torch.Tensor, preference: torch.Tensor, budget: tuple[float, float]) -> torch.Tensor:
    """Full states ``(P, L, F + 5)``: static features, budget interval, preference per layer.

    ``preference`` is ``(3,)`` or ``(P, 3)``.
    """
    pref = preference.reshape(-1, 3).float()  # (P, 3)
    p, (n, _) = pref.shape[0], static.shape
    budget_cols = torch.tensor(budget, dtype=torch.float32).expand(p, n, 2)
    return torch.cat([static.expand(p, -1, -1), budget_cols, pref[:, None, :].expand(p, n, 3)], dim=-1)
