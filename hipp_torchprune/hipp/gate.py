"""SynFlow stability gate (eqs. 14-15): a quantile band over ``phi`` with warm-up annealing."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def band_loss(phi: torch.Tensor, lo: float, hi: float, kappa: float = 1.0) -> torch.Tensor:
    """``L_band = kappa * (relu(lo - phi) + relu(phi - hi))`` (eq. 14)."""
    return kappa * (torch.relu(lo - phi) + torch.relu(phi - hi))


def gate_weight(loss: torch.Tensor, beta: float) -> torch.Tensor:
    """Episode weight ``g = exp(-beta * L_band)`` in ``(0, 1]`` (eq. 15)."""
    return torch.exp(-beta * loss)


@dataclass(frozen=True)
class GateConfig:
    """Options of the stability gate."""

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
    #: Episodes to see before the band exists (the gate is 1 until then).
    min_history: int = 8
    #: Most recent ``phi`` values kept.
    history: int = 2048


class QuantileBand:
    """The acceptable ``[lo, hi]`` band for ``phi``: quantiles of the history, widened during warm-up."""

    def __init__(self, config: GateConfig = GateConfig()) -> None:
        self.config = config
        self.values: list[float] = []
        self.updates = 0

    def band(self) -> tuple[float, float] | None:
        """Current band, or ``None`` while the history is too short."""
        if len(self.values) < self.config.min_history:
            return None
        hist = torch.tensor(self.values, dtype=torch.float64)
        lo, hi = (torch.quantile(hist, q).item() for q in self.config.quantiles)
        anneal = max(0.0, 1.0 - self.updates / max(1, self.config.warmup))
        pad = anneal * self.config.warmup_widen * (hi - lo)
        return lo - pad, hi + pad

    def weights(self, phi: torch.Tensor) -> torch.Tensor:
        """Gate weights for a group's ``phi`` values under the current band (1 without a band)."""
        band = self.band()
        if band is None:
            return torch.ones_like(phi)
        return gate_weight(band_loss(phi, band[0], band[1], self.config.kappa), self.config.beta)

    def update(self, phi: torch.Tensor) -> None:
        """Add a group's ``phi`` values to the history and advance warm-up."""
        self.values = (self.values + [float(v) for v in phi.flatten()])[-self.config.history:]
        self.updates += 1

    def state_dict(self) -> dict:
        """Serializable state (for resumable checkpoints)."""
        return {"values": list(self.values), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.values, self.updates = list(state["values"]), int(state["updates"])
