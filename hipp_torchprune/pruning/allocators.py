"""Layer-allocation strategies: how a global sparsity target splits across decoder layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hipp_torchprune.pruning.plan import waterfill


@dataclass(frozen=True)
class AllocationRequest:
    """What an allocator is asked: split ``sparsity`` over layers of the given widths."""

    #: Current intermediate width of each layer.
    widths: tuple[int, ...]
    #: Parameters per intermediate channel of each layer (gate row + up row + down column).
    row_params: tuple[int, ...]
    #: Target fraction of prunable MLP parameters to remove.
    sparsity: float
    #: Per-layer cap on the removal ratio.
    r_max: float
    #: Seed for stochastic strategies.
    seed: int = 0
    #: Strategy-specific options (e.g. the HiPP policy and preference).
    options: dict[str, Any] = field(default_factory=dict)
    #: The caller's plugin registry (a ``Registry``; None: the default one), so an allocator that
    #: looks at the model finds the adapter the caller registered.
    registry: Any = None


def calibrated_inputs(request: AllocationRequest, strategy: str) -> tuple[Any, Any]:
    """``(model, stats)`` from a calibrated strategy's options (``make_plan`` adds ``model``; the
    caller passes ``stats=``); :class:`~hipp_torchprune.errors.CalibrationError` when either is missing."""
    from hipp_torchprune.errors import CalibrationError

    model, stats = request.options.get("model"), request.options.get("stats")
    if model is None or stats is None:
        raise CalibrationError(f"strategy {strategy!r} needs calibration: pass the stats= option")
    return model, stats


class UniformAllocator:
    """Every layer removes the same ratio (Wanda-sp, LLM-Pruner)."""

    name: ClassVar[str] = "uniform"

    def allocate(self, request: AllocationRequest) -> list[float]:
        """``[sparsity] * L``."""
        return [request.sparsity] * len(request.widths)


class RandomAllocator:
    """Random layer ratios with the same total: Dirichlet weights, water-filled under ``r_max``.

    ``options["concentration"]`` (default 1.0) sets the Dirichlet concentration; smaller values
    spread the ratios further.
    """

    name: ClassVar[str] = "random"

    def allocate(self, request: AllocationRequest) -> list[float]:
        """Seeded random ratios whose parameter-weighted mean is ``sparsity``."""
        n = len(request.widths)
        concentration = float(request.options.get("concentration", 1.0))
        gen = torch.Generator().manual_seed(request.seed)
        gamma = torch._standard_gamma(torch.full((n,), concentration, dtype=torch.float64), generator=gen)
        weights = (gamma / gamma.sum()).tolist()
        sizes = [w * p for w, p in zip(request.widths, request.row_params)]
        return list(waterfill(weights, sizes, request.sparsity, request.r_max))


def sensitivity_ratios(drops: list[float] | tuple[float, ...], sizes: list[float] | tuple[float, ...],
                       sparsity: float, r_max: float, floor: float = 0.01) -> tuple[float, ...]:
    """Layer ratios from measured single-layer sensitivity: prune the least harmful layers most.

    ``drops[l]`` is the metric lost when layer ``l`` alone is pruned (e.g. POPE points as a
    fraction, at a fixed single-layer ratio). Weights ``1 / (max(drop, 0) + floor)`` are
    water-filled under ``r_max`` to the parameter-weighted ``sparsity``; ``floor`` keeps layers
    whose drop is zero or negative (noise) finite.
    """
    weights = [1.0 / (max(d, 0.0) + floor) for d in drops]
    return waterfill(weights, sizes, sparsity, r_max)
