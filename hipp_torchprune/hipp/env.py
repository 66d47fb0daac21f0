"""The plan environment: scores many plans on one model in mask mode.

Row scores are computed once; each plan only updates the masks, runs the reward batches and
computes the SynFlow ``phi`` from cached ``|W|``. Given the dense model's ``down_proj`` input Grams,
each plan is scored with the least-squares refit of its pruned layers in place
(:mod:`~hipp_torchprune.pruning.reconstruct`: a few small solves a plan, undone after it), so the
rewards are those of the model ``--reconstruct lstsq`` deploys; ``phi`` stays the plan's structure
on the dense weights. Plans of a group are spread over processes
(``accelerate``): each rank scores its share and the results are gathered in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import HippError
from hipp_torchprune.hipp.distributed import map_over_ranks
from hipp_torchprune.hipp.normalization import compression_return
from hipp_torchprune.hipp.synflow import AbsWeights, log_synflow
from hipp_torchprune.pruning.operator import PlanMasks, score_ranks
from hipp_torchprune.pruning.plan import budget_matched_widths, realized_sparsity
from hipp_torchprune.pruning.reconstruct import DEFAULT_DAMP, held_grams, refitted, solve_downs

#: A raw objective: model (with masks applied) -> scalar return.
Objective = Callable[[nn.Module], float]


@dataclass
class PlanOutcome:
    """Scores of a batch of plans: raw objectives ``(N, 3)`` (rob, util, comp), ``phi (N,)``,
    realized sparsity ``(N,)`` and kept widths."""

    raw: torch.Tensor
    phi: torch.Tensor
    realized: torch.Tensor
    widths: list[tuple[int, ...]]


class PlanEnvironment:
    """Applies plans as masks to ``model`` and scores them (robustness, utility, compression, phi).

    With ``grams`` (the dense model's augmented ``down_proj`` input Gram of every layer,
    :func:`~hipp_torchprune.pruning.reconstruct.collect_down_grams`), every plan is applied with the
    least-squares refit (damping ``damp``) of its pruned layers."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, row_scores: Sequence[torch.Tensor],
                 objectives: dict[str, Objective], *, round_to: int, r_max: float,
                 compression_range: tuple[float, float], row_params: Sequence[int], state: Any = None,
                 grams: Sequence[torch.Tensor] | None = None, damp: float = DEFAULT_DAMP) -> None:
        self.model, self.adapter, self.objectives = model, adapter, objectives
        self.row_scores = [s.float() for s in row_scores]
        self.widths = tuple(adapter.intermediate_widths())
        self.row_params, self.round_to, self.r_max = tuple(row_params), round_to, r_max
        self.compression_range, self.state = compression_range, state
        if grams is not None and len(grams) != len(self.widths):
            raise HippError(f"{len(grams)} down_proj Grams for {len(self.widths)} layers")
        self.grams, self.damp = (None if grams is None else list(grams)), damp
        self.masks = PlanMasks(adapter)
        # ranks once, on the weights' device: each plan's mask is then one comparison per layer
        self.ranks = [score_ranks(sc).to(m.device) for sc, m in zip(self.row_scores, self.masks.masks)]
        # |W| one layer at a time, in float32 (no resident copy of the MLP weights)
        self.abs_up = AbsWeights([m.up for m in adapter.mlps()])
        self.abs_down = AbsWeights([m.down for m in adapter.mlps()])
        self.dense_log_flow = log_synflow(self.abs_up, self.abs_down)

    def widths_for(self, ratios: Sequence[float]) -> tuple[int, ...]:
        """Rounded, budget-matched kept widths of a plan."""
        return budget_matched_widths(ratios, self.widths, self.round_to, self.r_max, self.row_params)

    @contextmanager
    def applied(self, widths: tuple[int, ...]) -> Iterator[nn.Module]:
        """The model with ``widths``' masks on (rows by the environment's row scores) and, with
        Grams, the refit in place, for the block; dense again after it, also on error."""
        self.masks.set_ranked(self.ranks, widths)
        try:
            with self._refit(widths):
                yield self.model
        finally:
            self.masks.set_keep(None)

    def _refit(self, widths: tuple[int, ...]) -> AbstractContextManager[None]:
        if self.grams is None:
            return nullcontext()
        keep = [(rank < k).nonzero().flatten().cpu() for rank, k in zip(self.ranks, widths)]
        return refitted(self.adapter, keep, solve_downs(self.adapter, keep, held_grams(self.grams), self.damp))

    def _score_one(self, widths: tuple[int, ...]) -> tuple[float, float, float]:
        with self.applied(widths) as model:
            rob = self.objectives["rob"](model)
            util = self.objectives["util"](model)
        flow_masks = [(r < k).to(torch.float32) for r, k in zip(self.ranks, widths)]
        phi = (log_synflow(self.abs_up, self.abs_down, flow_masks) - self.dense_log_flow).item()
        return rob, util, phi

    def score(self, plans: Sequence[Sequence[float]]) -> PlanOutcome:
        """Score a batch of plans (per-layer ratios)."""
        return self.score_widths([self.widths_for(r) for r in plans])

    def score_widths(self, widths: Sequence[tuple[int, ...]]) -> PlanOutcome:
        """Score a batch of plans given as kept widths (another allocator's, say), rows by the
        environment's row scores."""
        widths = [tuple(int(k) for k in w) for w in widths]
        if any(len(w) != len(self.widths) or not all(0 < k <= n for k, n in zip(w, self.widths)) for w in widths):
            raise HippError(f"kept widths must be one per layer, each in 1..its width {self.widths}")
        results = map_over_ranks(self._score_one, widths, self.state)
        realized = torch.tensor([realized_sparsity(self.widths, w, self.row_params) for w in widths])
        comp = compression_return(realized, *self.compression_range)
        raw = torch.tensor([[rob, util] for rob, util, _ in results])
        return PlanOutcome(raw=torch.cat([raw, comp[:, None]], dim=1).float(),
                           phi=torch.tensor([p for _, _, p in results]), realized=realized, widths=widths)

    def close(self) -> None:
        """Remove the masks; the model is dense again."""
        self.masks.remove()

