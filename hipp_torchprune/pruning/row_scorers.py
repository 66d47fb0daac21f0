"""The row-score options as registered importance scorers (``wanda-sp``, ``wanda-mix``) and
LLM-Pruner's element-wise Taylor importance (``taylor``); the math is in
:mod:`hipp_torchprune.pruning.rowscores`.

``wanda`` (gate/up rows against the MLP input, :class:`~hipp_torchprune.pruning.scorers.WandaScorer`)
stays the default row score until the choice is measured; these are the alternatives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.pruning.rowscores import elementwise_taylor_scores, mean_normalized_sum
from hipp_torchprune.pruning.scorers import ModuleNamedImportance, WandaConfig, WandaScorer


class WandaSPScorer(WandaScorer):
    """Wanda-sp (FLAP repo, ``lib/prune.py``, ``prune_wanda_sp``): ``S_j = ||h_j|| * sum_o |W_down[o, j]|``
    on down_proj's input ``h`` (after the gating). The reference averages over ``o`` instead of
    summing: the same ranking inside a layer."""

    name = "wanda-sp"

    def __init__(self, model: nn.Module, stats: CalibrationStats | None = None,
                 config: WandaConfig = WandaConfig(parts="down")) -> None:
        super().__init__(model, stats, config)


class WandaMixScorer(ModuleNamedImportance):
    """The gate/up Wanda score and the down-input (Wanda-sp) score, each rescaled to mean 1 over
    the scored channels, summed (:func:`~hipp_torchprune.pruning.rowscores.mean_normalized_sum`)."""

    name = "wanda-mix"

    def __init__(self, model: nn.Module, stats: CalibrationStats | None = None) -> None:
        super().__init__(model, stats)
        self.parts = [WandaScorer(model, stats, WandaConfig(parts="gate_up")),
                      WandaScorer(model, stats, WandaConfig(parts="down"))]

    def score(self, deps: list[tuple[nn.Linear, bool, Any]]) -> torch.Tensor:
        """The two parts on the group's members, normalized and summed."""
        return mean_normalized_sum([part.score(deps) for part in self.parts])


class ElementwiseTaylorScorer(ModuleNamedImportance):
    """LLM-Pruner's default first-order group importance, element-wise: ``sum |W * dL/dW|`` over
    gate row, up row and down column (``LLMPruner/pruner/hf_llama_pruner.py``, ``TaylorImportance``
    with ``taylor="param_first"``, ``group_reduction="sum"``). ``taylor-vector`` is the
    ``|sum W * dL/dW|`` form."""

    name = "taylor"
    needs_grads = True

    def score(self, deps: list[tuple[nn.Linear, bool, Any]]) -> torch.Tensor:
        """Sum of the members' element-wise terms (raises without them)."""
        terms = []
        for module, _, idxs in deps:
            name = self.name_of(module)
            if name not in self.stats.taylor_abs:
                raise CalibrationError(f"no element-wise Taylor terms for {name}: calibrate with with_grads=True")
            terms.append(self.stats.taylor_abs[name][idxs])
        return elementwise_taylor_scores(terms)
