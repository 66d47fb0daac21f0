"""Importance scorers as Torch-Pruning ``Importance`` subclasses.

Each scorer is called with a Torch-Pruning group rooted at a ``gate_proj`` (gate rows,
up rows, down columns) and returns one score per channel in ``group[0].idxs``. The scorers
read calibration statistics keyed by module name, so the same object works inside
Torch-Pruning's ``BasePruner`` and inside :func:`hipp_torchprune.prune_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch_pruning as tp
from torch import nn

from hipp_torchprune.adapters.base import MLPProjections
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.pruning.scores import magnitude_row_sq, taylor_scores, wanda_column_scores, wanda_row_scores

#: Channel indices of one group member: a list from a Torch-Pruning group, or ``slice(None)``
#: for every channel (the direct path of :meth:`ModuleNamedImportance.score_mlp`).
Idxs = list[int] | slice
#: A group's linear members as ``(module, is_out_channel, idxs)``.
LinearDeps = list[tuple[nn.Linear, bool, Idxs]]


def _linear_deps(group: tp.dependency.Group) -> LinearDeps:
    """The group's ``nn.Linear`` members as ``(module, is_out_channel, idxs)``.

    Handlers are bound methods, so they are compared with ``==`` (``is`` silently fails).
    """
    deps = []
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, nn.Linear):
            continue
        if dep.handler == tp.prune_linear_out_channels:
            deps.append((module, True, list(idxs)))
        elif dep.handler == tp.prune_linear_in_channels:
            deps.append((module, False, list(idxs)))
    return deps


class ModuleNamedImportance(tp.importance.Importance):
    """Base for scorers that look up per-module calibration statistics by qualified name."""

    #: Registry name, e.g. ``"wanda"``.
    name: ClassVar[str]
    #: Whether the calibration pass must backpropagate for this scorer.
    needs_grads: ClassVar[bool] = False
    #: Whether the scorer reads calibration statistics at all.
    needs_calibration: ClassVar[bool] = True

    def __init__(self, model: nn.Module, stats: CalibrationStats | None = None) -> None:
        if self.needs_calibration and stats is None:
            raise CalibrationError(f"importance '{self.name}' needs calibration statistics")
        self.stats = stats
        self._names = {m: n for n, m in model.named_modules()}

    def name_of(self, module: nn.Module) -> str:
        """Qualified name of ``module`` in the model this scorer was built for."""
        return self._names[module]

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        """One score per channel of ``group[0].idxs`` (higher is more important)."""
        deps = _linear_deps(group)
        if not deps:
            raise CalibrationError("group has no nn.Linear member to score")
        return self.score(deps)

    @torch.no_grad()
    def score_mlp(self, mlp: MLPProjections) -> torch.Tensor:
        """Every channel of one SwiGLU MLP, scored straight from its projections.

        Exactly what :meth:`__call__` returns for the full-width Torch-Pruning group rooted at
        ``mlp.gate`` (same members, same order: gate rows, up rows, down columns), without
        building that group: Torch-Pruning maps every one of the channel indices through
        every member in Python, which costs more than the scoring itself at 7B widths.
        """
        every = slice(None)
        return self.score([(mlp.gate, True, every), (mlp.up, True, every), (mlp.down, False, every)])

    def score(self, deps: LinearDeps) -> torch.Tensor:
        """Score the linear members of a group; subclasses implement it."""
        raise NotImplementedError


@dataclass(frozen=True)
class WandaConfig:
    """Options of the Wanda row scorer."""

    #: Which projections contribute: gate/up rows with MLP-input norms (the paper's eq. 10),
    #: down columns with intermediate-activation norms (Wanda-sp/FLAP), or both summed.
    parts: Literal["gate_up", "down", "all"] = "gate_up"


class WandaScorer(ModuleNamedImportance):
    """Wanda structured score ``S_j = sum_i |W_ji| * ||X_i||_2`` (paper eq. 10). By default on the
    gate/up rows against the MLP input, which is not Wanda-sp's down-input score (``wanda-sp``)."""

    name = "wanda"

    def __init__(self, model: nn.Module, stats: CalibrationStats | None = None,
                 config: WandaConfig = WandaConfig()) -> None:
        super().__init__(model, stats)
        self.config = config

    def score(self, deps: LinearDeps) -> torch.Tensor:
        parts = []
        for module, is_out, idxs in deps:
            in_sq = self.stats.in_sq[self.name_of(module)]
            if is_out and self.config.parts in ("gate_up", "all"):
                parts.append(wanda_row_scores(module.weight, in_sq)[idxs])
            elif not is_out and self.config.parts in ("down", "all"):
                parts.append(wanda_column_scores(module.weight, in_sq)[idxs])
        return torch.stack(parts).sum(0)


class MagnitudeScorer(ModuleNamedImportance):
    """Data-free group L2 norm: ``sqrt`` of the summed squares of gate row, up row, down column."""

    name = "magnitude"
    needs_calibration = False

    def score(self, deps: LinearDeps) -> torch.Tensor:
        parts = [magnitude_row_sq(m.weight, 1 if is_out else 0)[idxs] for m, is_out, idxs in deps]
        return torch.stack(parts).sum(0).sqrt()


class TaylorScorer(ModuleNamedImportance):
    """First-order group importance in LLM-Pruner's ``vectorize`` form, ``|sum (W * dL/dW)|`` over
    gate/up/down (the reference's default, element-wise, is ``taylor``:
    :class:`~hipp_torchprune.pruning.row_scorers.ElementwiseTaylorScorer`)."""

    name = "taylor-vector"
    needs_grads = True

    def score(self, deps: LinearDeps) -> torch.Tensor:
        terms = []
        for module, _, idxs in deps:
            name = self.name_of(module)
            if name not in self.stats.taylor:
                raise CalibrationError(f"no Taylor terms for {name}: calibrate with with_grads=True")
            terms.append(self.stats.taylor[name][idxs])
        return taylor_scores(terms)
