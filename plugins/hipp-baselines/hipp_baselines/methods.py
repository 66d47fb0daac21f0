"""The MLP-row baselines as (allocation strategy, importance) pairs, with their references' defaults
(``docs/baselines.md`` has the fidelity table).

=============  ============  ==========  ====================================================
method         strategy      importance  what it is
=============  ============  ==========  ====================================================
``random``     random        wanda-mix*  random layer ratios, same total
``wanda``      uniform       wanda-sp    Wanda-sp: uniform ratio, ``||h_j|| * sum_o |W_down[o, j]|``
``llm-pruner`` llm-pruner    taylor      dense first/last layers, element-wise Taylor
``owl``        owl           wanda-mix*  outlier-weighted ratios, ``(lam, m)`` chosen on calibration
``ecoflap``    ecoflap       wanda-mix*  zeroth-order scores, floor + proportional, cap target + 0.1
``flap``       flap          flap        fluctuation, adaptive widths, bias compensation
=============  ============  ==========  ====================================================

``*``: the shared row score (``MethodContext.row_score``, default
:data:`~hipp_torchprune.methods.DEFAULT_ROW_SCORE`, replaces it). ``hipp prune --method NAME``
selects them by name; ``hipp prune --strategy S --importance I`` selects a pair by its parts
(without the calibration-split selection and caps the methods add).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from hipp_baselines.ecoflap import CAP_MARGIN, EPS_GRID
from hipp_baselines.flap import FlapMethod
from hipp_baselines.selection import given_or_grid, select_plan
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, MethodReport, MLPRowMethod

#: OWL's candidates: ``lam`` x ``m`` around the reference's defaults (README: 0.08 and 5; argparse: m 3).
OWL_GRID: tuple[dict[str, float], ...] = tuple({"lam": lam, "m": m} for lam in (0.02, 0.05, 0.08, 0.1, 0.2)
                                               for m in (3.0, 5.0, 7.0, 10.0))


class RandomMethod(MLPRowMethod):
    """Random per-layer ratios with the same total; rows by the shared row score."""

    name: ClassVar[str] = "random"
    strategy: ClassVar[str] = "random"
    importance: ClassVar[str] = DEFAULT_ROW_SCORE
    shared_row_score: ClassVar[bool] = True


class WandaMethod(MLPRowMethod):
    """Wanda-sp (FLAP repo, ``lib/prune.py``, ``prune_wanda_sp``): the same ratio in every layer, rows
    by the down-input score. (The gate/up-row Wanda pair is ``--strategy uniform --importance wanda``.)"""

    name: ClassVar[str] = "wanda"
    strategy: ClassVar[str] = "uniform"
    importance: ClassVar[str] = "wanda-sp"


class LLMPrunerMethod(MLPRowMethod):
    """LLM-Pruner block-wise: dense first and last layers, element-wise first-order Taylor rows."""

    name: ClassVar[str] = "llm-pruner"
    strategy: ClassVar[str] = "llm-pruner"
    importance: ClassVar[str] = "taylor"


class SelectedMethod(MLPRowMethod):
    """A method whose strategy options are chosen on the calibration split from ``grid``."""

    #: Candidate strategy options, tried in order.
    grid: ClassVar[tuple[dict[str, float], ...]] = ()

    def prune(self, model: nn.Module, sparsity: float, context: MethodContext) -> MethodReport:
        """Select on the calibration split (:func:`~hipp_baselines.selection.select_plan`), then prune."""
        candidates = given_or_grid(context, sorted(self.grid[0]), self.grid)
        if len(candidates) == 1:
            return self.prune_plan(model, self.plan(model, sparsity, context, **candidates[0]), context,
                                   {"selected": dict(candidates[0])})
        plan, chosen, losses = select_plan(self, model, sparsity, context, candidates)
        return self.prune_plan(model, plan, context, {"selected": chosen, "selection_losses": losses})


class OWLMethod(SelectedMethod):
    """OWL layer ratios (needs the ``hipp-owl`` plugin), ``(lam, m)`` from :data:`OWL_GRID`."""

    name: ClassVar[str] = "owl"
    strategy: ClassVar[str] = "owl"
    importance: ClassVar[str] = DEFAULT_ROW_SCORE
    shared_row_score: ClassVar[bool] = True
    grid = OWL_GRID


class EcoFLaPMethod(SelectedMethod):
    """ECoFLaP layer ratios, every layer within ``target + 0.1``, ``eps`` from the reference's sweep."""

    name: ClassVar[str] = "ecoflap"
    strategy: ClassVar[str] = "ecoflap"
    importance: ClassVar[str] = DEFAULT_ROW_SCORE
    shared_row_score: ClassVar[bool] = True
    grid = tuple({"eps": eps} for eps in EPS_GRID)

    def plan_r_max(self, sparsity: float, context: MethodContext) -> float:
        """``min(r_max, target + 0.1)``: rounding cannot push a layer past the reference's cap."""
        return min(context.r_max, sparsity + CAP_MARGIN)


#: Every MLP-row baseline.
METHODS: tuple[type[MLPRowMethod], ...] = (RandomMethod, WandaMethod, LLMPrunerMethod, OWLMethod, EcoFLaPMethod,
                                           FlapMethod)
