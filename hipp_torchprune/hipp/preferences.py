"""Preferences over (robustness, utility, compression): validation and the training sampler."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from hipp_torchprune.errors import HippError

#: The anchors: the three one-hot vertices plus the uniform point.
ANCHORS: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                                                   (1 / 3, 1 / 3, 1 / 3))
SamplerMode = Literal["mixed", "anchors", "dirichlet"]


class PreferenceError(HippError, ValueError):
    """A preference vector is malformed (wrong length, negative, NaN, or all zero)."""


def validate_preference(values: Sequence[float]) -> tuple[float, float, float]:
    """Check and normalize ``(w_rob, w_util, w_comp)`` to sum to 1."""
    w = [float(v) for v in values]
    if len(w) != 3:
        raise PreferenceError(f"a preference has 3 weights (robustness, utility, compression), got {len(w)}")
    if any(not math.isfinite(v) or v < 0 for v in w):
        raise PreferenceError(f"preference weights must be finite and non-negative, got {w}")
    total = sum(w)
    if total <= 0:
        raise PreferenceError("preference weights must not all be zero")
    return (w[0] / total, w[1] / total, w[2] / total)


def parse_preference(text: str) -> tuple[float, float, float]:
    """Parse ``"w_rob,w_util,w_comp"`` and validate it."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise PreferenceError(f"cannot parse preference {text!r}: give three numbers like 0.6,0.3,0.1") from exc
    return validate_preference(values)


def sample_preferences(n: int, mode: SamplerMode, generator: torch.Generator,
                       anchor_prob: float = 0.5) -> torch.Tensor:
    """``(n, 3)`` preferences: anchors, Dirichlet(1,1,1) draws, or a mixture of both."""
    anchors = torch.tensor(ANCHORS)
    pick = torch.randint(len(ANCHORS), (n,), generator=generator)
    gamma = -torch.log(torch.rand(n, 3, generator=generator).clamp_min(1e-12))  # Exp(1) = Gamma(1)
    dirichlet = gamma / gamma.sum(-1, keepdim=True)
    if mode == "anchors":
        return anchors[pick]
    if mode == "dirichlet":
        return dirichlet
    use_anchor = torch.rand(n, generator=generator) < anchor_prob
    return torch.where(use_anchor.unsqueeze(-1), anchors[pick], dirichlet)
