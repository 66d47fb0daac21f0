"""Pure row-score functions beyond :mod:`hipp_torchprune.pruning.scores`: the candidates for the
shared row score, and LLM-Pruner's element-wise Taylor aggregation.

Row scores (one value per intermediate channel ``j`` of a SwiGLU MLP, higher = more important):

* ``gate_up`` (the ``wanda`` scorer): ``sum_i |W_gate[j, i]| ||x_i|| + sum_i |W_up[j, i]| ||x_i||``
  on the MLP's *input* ``x``; it never sees the gating;
* ``down`` (the ``wanda-sp`` scorer; Wanda-sp, FLAP repo ``lib/prune.py``, ``prune_wanda_sp``):
  ``||h_j|| * sum_o |W_down[o, j]|`` on down_proj's input ``h = act(gate x) * up x``, the
  channel's real contribution after the gating (:func:`~hipp_torchprune.pruning.scores.wanda_column_scores`);
* a normalized combination (the ``wanda-mix`` scorer): :func:`mean_normalized_sum` of the two,
  so neither dominates by scale; the shared row score's default
  (:data:`~hipp_torchprune.methods.DEFAULT_ROW_SCORE`, measured in ``docs/baselines.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mean_normalized_sum(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_p s_p / mean(s_p)``: each part rescaled to mean 1 over the channels, then summed.

    A part whose mean is 0 contributes nothing. Example: ``[1, 3]`` and ``[10, 30]`` both become
    ``[0.5, 1.5]``; their sum is ``[1, 3]``.
    """
    if not parts:
        raise ValueError("mean_normalized_sum needs at least one part")
    out = torch.zeros_like(parts[0], dtype=torch.float32)
    for part in parts:
        mean = part.float().mean()
        if mean != 0:
            out += part.float() / mean
    return out


def elementwise_taylor_scores(abs_terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """LLM-Pruner's default (``--taylor param_first``) group importance: the per-channel
    element-wise terms ``sum |W * dL/dW|`` of gate rows, up rows and down columns, summed over
    the group (``group_reduction="sum"``; ``LLMPruner/pruner/hf_llama_pruner.py``,
    ``TaylorImportance``). Example: gate ``[2]``, up ``[3]``, down ``[0.5]`` -> ``[5.5]``."""
    return torch.stack([t.float() for t in abs_terms]).sum(0)
