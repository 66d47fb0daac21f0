"""SynFlow stability gate (eqs. 14-15): a quantile band over ``phi`` with warm-up annealing.

The paper pools one two-sided band over every episode. A preference-conditioned policy samples
plans of very different sparsity, and ``phi`` falls with sparsity, so a pooled two-sided band
down-weights the least sparse plans (which robustness and utility preferences want) and the
sparsest ones (which compression wants) as much as collapsed plans. The defaults here compare a
plan's ``phi`` with plans of about the same realized sparsity (``binning="budget"``) and only
penalize the low side (``side="lower"``: a layer collapse lowers the flow, nothing raises it);
``binning="pooled", side="both"`` is the paper's band (``docs/method.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

BandBinning = Literal["pooled", "budget"]
BandSide = Literal["both", "lower"]


def band_loss(phi: torch.Tensor, lo: float, hi: float, kappa: float = 1.0) -> torch.Tensor:
    """``L_band = kappa * (relu(lo - phi) + relu(phi - hi))`` (eq. 14); ``hi = inf`` is one-sided."""
    return kappa * (torch.relu(lo - phi) + torch.relu(phi - hi))


def gate_weight(loss: torch.Tensor, beta: float) -> torch.Tensor:
    """Episode weight ``g = exp(-beta * L_band)`` in ``(0, 1]`` (eq. 15)."""
    return torch.exp(-beta * loss)


def budget_bins(realized: torch.Tensor, width: float) -> torch.Tensor:
    """The bin of each realized sparsity: ``floor(realized / width)``.

    Example: ``budget_bins(tensor([0.0, 0.049, 0.05, 0.31]), 0.05) == tensor([0, 0, 1, 6])``.
    """
    if width <= 0:
        raise ValueError(f"bin width {width}: must be positive")
    return torch.floor(realized.double() / width + 1e-9).long()


@dataclass(frozen=True)
class GateConfig:
    """Options of the stability gate."""

    #: False switches the gate off (every episode has weight 1): the "no stability gate" ablation.
    enabled: bool = True
    #: ``"budget"``: each plan's band comes from plans in its realized-sparsity bin;
    #: ``"pooled"``: one band over every plan (the paper's).
    binning: BandBinning = "budget"
    #: Width of a realized-sparsity bin (``binning="budget"``).
    bin_width: float = 0.05
    #: ``"lower"``: only ``phi`` below the band is penalized; ``"both"``: also above (the paper's).
    side: BandSide = "lower"
    #: Lower and upper quantiles of the ``phi`` history that bound the band.
    quantiles: tuple[float, float] = (0.05, 0.95)
    #: Penalty slope outside the band.
    kappa: float = 1.0
    #: Gate sharpness; tuned so only collapsed plans are suppressed early.
    beta: float = 1.0
    #: Updates over which the band's extra width anneals to zero.
    warmup: int = 20
    #: Extra width at the start of warm-up, as a multiple of the band's width.
    warmup_widen: float = 2.0
    #: Episodes to see (in a plan's bin, when binned) before its band exists (the gate is 1 until then).
    min_history: int = 8
    #: Most recent ``phi`` values kept.
    history: int = 2048


class QuantileBand:
    """The acceptable ``[lo, hi]`` band for ``phi``: quantiles of the history (of the plan's
    sparsity bin, when binned), widened during warm-up."""

    def __init__(self, config: GateConfig = GateConfig()) -> None:
        self.config = config
        self.values: list[float] = []
        self.sparsity: list[float] = []
        self.bins: list[int | None] = []  # each value's sparsity bin, computed once when it arrives
        self.updates = 0

    def _bin(self, realized: float) -> int | None:
        """The sparsity bin of one plan (``None`` for an unknown, NaN, sparsity)."""
        return None if math.isnan(realized) else int(budget_bins(torch.tensor([realized]), self.config.bin_width))

    def _history(self, realized: float | None) -> list[float]:
        if self.config.binning == "pooled" or realized is None:
            return self.values
        own = self._bin(realized)
        return [v for v, b in zip(self.values, self.bins) if b == own]

    def band(self, realized: float | None = None) -> tuple[float, float] | None:
        """Current band (for a plan of realized sparsity ``realized`` when binned), or ``None``
        while that history is too short."""
        values = self._history(realized)
        if len(values) < self.config.min_history:
            return None
        hist = torch.tensor(values, dtype=torch.float64)
        lo, hi = (torch.quantile(hist, q).item() for q in self.config.quantiles)
        anneal = max(0.0, 1.0 - self.updates / max(1, self.config.warmup))
        pad = anneal * self.config.warmup_widen * (hi - lo)
        return lo - pad, (hi + pad if self.config.side == "both" else float("inf"))

    def weights(self, phi: torch.Tensor, realized: torch.Tensor | None = None) -> torch.Tensor:
        """Gate weights ``(N,)`` for ``phi (N,)`` of plans with realized sparsity ``realized (N,)``
        (1 where there is no band yet, everywhere when the gate is off)."""
        out = torch.ones_like(phi)
        if not self.config.enabled:
            return out
        for i in range(phi.shape[0]):
            band = self.band(None if realized is None else float(realized[i]))
            if band is not None:
                out[i] = gate_weight(band_loss(phi[i], band[0], band[1], self.config.kappa), self.config.beta)
        return out

    def update(self, phi: torch.Tensor, realized: torch.Tensor | None = None) -> None:
        """Add a group's ``phi`` values (and their realized sparsity) to the history and advance warm-up."""
        spars = [float("nan")] * phi.numel() if realized is None else [float(s) for s in realized.flatten()]
        self.values = (self.values + [float(v) for v in phi.flatten()])[-self.config.history:]
        self.sparsity = (self.sparsity + spars)[-self.config.history:]
        self.bins = (self.bins + [self._bin(v) for v in spars])[-self.config.history:]
        self.updates += 1

    def state_dict(self) -> dict:
        """Serializable state (for resumable checkpoints)."""
        return {"values": list(self.values), "sparsity": list(self.sparsity), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a checkpoint without sparsities gets NaN: pooled only)."""
        self.values, self.updates = list(state["values"]), int(state["updates"])
        self.sparsity = list(state.get("sparsity") or [float("nan")] * len(self.values))
        self.bins = [self._bin(v) for v in self.sparsity]
