"""Single-layer drop profiles: which decoder layers' MLP rows each objective needs.

Proving ground v2 found that attention mass on vision tokens (the paper's visual sensitivity)
does not mark the layers that grounding depends on (``docs/demo-model.md``). What marks them by
construction is the reward itself: remove ``ratio`` of one layer's rows (the others dense) and
measure how much of the dense robustness and utility return is lost, once per layer. This is the
state feature proposed for the HiPP policy; it costs ``L + 1`` reward evaluations in mask mode.
"""

from __future__ import annotations

import torch

from hipp_torchprune.hipp.env import PlanEnvironment


def single_layer_plans(n_layers: int, ratio: float) -> list[list[float]]:
    """``n_layers`` plans, plan ``l`` pruning ``ratio`` of layer ``l`` only, then the dense plan.

    Example: ``single_layer_plans(2, 0.5) == [[0.5, 0.0], [0.0, 0.5], [0.0, 0.0]]``.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio={ratio}: must be in (0, 1)")
    return [[ratio if i == layer else 0.0 for i in range(n_layers)] for layer in range(n_layers)] + [[0.0] * n_layers]


def single_layer_drops(env: PlanEnvironment, ratio: float = 0.75) -> torch.Tensor:
    """``(L, 2)``: the robustness and utility return lost when only layer ``l`` loses ``ratio``.

    Positive = the layer matters to that objective. Rounding follows the environment's
    ``round_to`` (a single-layer plan stays single-layer: budget matching only moves pruned layers).
    """
    n_layers = len(env.widths)
    raw = env.score(single_layer_plans(n_layers, ratio)).raw  # (L + 1, 3): rob, util, comp
    return raw[-1, :2].unsqueeze(0) - raw[:-1, :2]  # (L, 2)
