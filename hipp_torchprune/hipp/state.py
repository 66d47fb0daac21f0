"""State builder: per-layer feature vectors, normalized per model (eq. 7's inputs).

Static features come from the :class:`~hipp_torchprune.hipp.profile.ModelProfile`; the budget
interval and the preference are appended per query. Every statistic is z-scored across the
model's layers (constant ones become 0), so one policy design fits 4 layers or 36.
:class:`StateConfig` chooses the optional features: the paper's visual sensitivity, and the
single-layer grounding drops (:mod:`hipp_torchprune.hipp.grounding`), which mark the layers
the rewards depend on where attention mass does not (``docs/demo-model.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hipp_torchprune.errors import HippError
from hipp_torchprune.hipp.profile import ModelProfile

#: Names of the static per-layer features, in column order (with every optional feature on).
STATIC_FEATURES: tuple[str, ...] = (
    "depth", "type", "visual_sensitivity", "act_norm_mean", "act_norm_std", "row_score_mean", "row_score_std",
    "gate_abs_mean", "up_abs_mean", "down_abs_mean", "gate_abs_std", "up_abs_std", "down_abs_std",
    "visual_sensitivity_raw", "grounding_drop_rob", "grounding_drop_util",
)


@dataclass(frozen=True)
class StateConfig:
    """Which optional per-layer features the policy reads."""

    #: The paper's visual sensitivity (attention mass on vision tokens), z-scored and raw;
    #: False is the "no visual sensitivity" ablation.
    visual_sensitivity: bool = True
    #: The robustness and utility return lost when one layer alone loses ``drop_ratio`` of its
    #: rows (z-scored); costs ``L + 1`` plan evaluations once per training run.
    grounding_drops: bool = True
    #: Share of a layer's rows removed for its grounding drop.
    drop_ratio: float = 0.75

    def feature_names(self) -> tuple[str, ...]:
        """The static feature columns this configuration builds, in order."""
        off = set() if self.visual_sensitivity else {"visual_sensitivity", "visual_sensitivity_raw"}
        off |= set() if self.grounding_drops else {"grounding_drop_rob", "grounding_drop_util"}
        return tuple(name for name in STATIC_FEATURES if name not in off)


#: The state of policies saved before :class:`StateConfig` existed (no grounding drops).
LEGACY_STATE = StateConfig(grounding_drops=False)


def zscore(column: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` across layers; a constant column becomes zeros."""
    std = column.std(unbiased=False)
    return torch.zeros_like(column) if std < 1e-12 else (column - column.mean()) / std


def static_features(profile: ModelProfile, config: StateConfig = LEGACY_STATE) -> torch.Tensor:
    """``(L, F)`` features named by ``config.feature_names()``: depth ``l/(L-1)``, type id, then
    z-scored statistics, the raw visual sensitivity (an absolute attention mass in [0, 1],
    comparable across models) and the z-scored grounding drops."""
    layers = profile.layers
    n = len(layers)
    if config.grounding_drops and any(layer.grounding_drop is None for layer in layers):
        raise HippError("the state needs grounding drops and the model profile has none: "
                        "compute them with hipp_torchprune.hipp.grounding.single_layer_drops")
    columns = {"depth": torch.tensor([i / max(n - 1, 1) for i in range(n)], dtype=torch.float64),
               "type": torch.zeros(n, dtype=torch.float64),
               "visual_sensitivity_raw": torch.tensor([layer.visual_sensitivity for layer in layers],
                                                      dtype=torch.float64)}
    stats = {"visual_sensitivity": [layer.visual_sensitivity for layer in layers],
             "act_norm_mean": [layer.act_norm_mean for layer in layers],
             "act_norm_std": [layer.act_norm_std for layer in layers],
             "row_score_mean": [layer.row_score_mean for layer in layers],
             "row_score_std": [layer.row_score_std for layer in layers]}
    for j, part in enumerate(("gate", "up", "down")):
        stats[f"{part}_abs_mean"] = [layer.weight_abs_mean[j] for layer in layers]
        stats[f"{part}_abs_std"] = [layer.weight_abs_std[j] for layer in layers]
    if config.grounding_drops:
        stats["grounding_drop_rob"] = [layer.grounding_drop[0] for layer in layers]  # type: ignore[index]
        stats["grounding_drop_util"] = [layer.grounding_drop[1] for layer in layers]  # type: ignore[index]
    columns |= {k: zscore(torch.tensor(v, dtype=torch.float64)) for k, v in stats.items()}
    return torch.stack([columns[name] for name in config.feature_names()], dim=1).float()


def layer_states(static: torch.Tensor, preference: torch.Tensor, budget: tuple[float, float]) -> torch.Tensor:
    """Full states ``(P, L, F + 5)``: static features, budget interval, preference per layer.

    ``preference`` is ``(3,)`` or ``(P, 3)``.
    """
    pref = preference.reshape(-1, 3).float()  # (P, 3)
    p, (n, _) = pref.shape[0], static.shape
    budget_cols = torch.tensor(budget, dtype=torch.float32).expand(p, n, 2)
    return torch.cat([static.expand(p, -1, -1), budget_cols, pref[:, None, :].expand(p, n, 3)], dim=-1)
