"""LLM-Pruner's layer rule: the first and last decoder layers stay dense, the others share the budget.

Reference: horseee/LLM-Pruner, ``hf_prune.py`` block-wise pruning prunes the MLPs of layers
``block_mlp_layer_start .. block_mlp_layer_end - 1`` only. The shipped commands
(``README.md`` and ``scripts/llama_prune.sh``: ``--block_mlp_layer_start 4 --block_mlp_layer_end 30``
on the 32-layer LLaMA-7B) keep the first 4 and the last 2 layers dense; the argparse defaults
(3 and 31) keep 3 and 1. We follow the shipped commands, scaled to the model's depth ``L``:

``first = max(1, round(4 L / 32))``, ``last = max(1, round(2 L / 32))`` (halves round up)

so every model keeps at least its first and last layer dense (4 layers: layer 0 and layer 3;
24 layers: 0-2 and 22-23; 32 layers: 0-3 and 30-31, the reference's own split).

The reference prunes its fixed ratio in the other layers and reports the smaller total; here the
total is the target (matched comparisons), so the other layers share it at one raised ratio
``r = s * sum_l size_l / sum_{l pruned} size_l``. When that ratio would exceed ``r_max`` (few
layers, high sparsity: 4 layers at ``s > r_max / 2``), the pruned layers stop at ``r_max`` and the
dense ones take the rest of the budget at one common ratio, the smallest departure from the rule
that still meets the target (:func:`protected_ratios`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from hipp_torchprune.errors import PlanError
from hipp_torchprune.pruning.allocators import AllocationRequest

#: The reference's dense layers at its own depth: first 4 and last 2 of 32 (``scripts/llama_prune.sh``).
REFERENCE_DEPTH, REFERENCE_FIRST, REFERENCE_LAST = 32, 4, 2


def dense_end_layers(n_layers: int) -> tuple[int, ...]:
    """Indices of the layers LLM-Pruner keeps dense at depth ``n_layers`` (module docstring).

    Examples: 4 -> (0, 3); 24 -> (0, 1, 2, 22, 23); 32 -> (0, 1, 2, 3, 30, 31); 2 -> (0, 1).
    """
    if n_layers < 1:
        raise PlanError(f"a model needs at least one decoder layer, got {n_layers}")
    first = max(1, math.floor(REFERENCE_FIRST * n_layers / REFERENCE_DEPTH + 0.5))
    last = max(1, math.floor(REFERENCE_LAST * n_layers / REFERENCE_DEPTH + 0.5))
    return tuple(sorted({*range(min(first, n_layers)), *range(max(0, n_layers - last), n_layers)}))


def protected_ratios(sizes: Sequence[float], protected: Sequence[int], target: float, cap: float) -> list[float]:
    """Ratios meeting ``target`` (size-weighted) with the ``protected`` layers dense when possible.

    The other layers share ``target`` at one ratio; when it would pass ``cap`` they stop there and
    the protected layers take the remainder at one common ratio. Example: sizes ``[1, 1, 1, 1]``,
    protected ``(0, 3)``: target 0.3 -> ``[0, 0.6, 0.6, 0]``; target 0.6 with cap 0.8 ->
    ``[0.4, 0.8, 0.8, 0.4]``. :class:`PlanError` when ``target`` exceeds ``cap``.
    """
    if not 0.0 <= target <= cap:
        raise PlanError(f"target sparsity {target} is not reachable with r_max={cap}")
    total = float(sum(sizes))
    shielded = set(protected)
    rest = sum(s for i, s in enumerate(sizes) if i not in shielded)
    guarded = total - rest
    if rest > 0 and target * total <= cap * rest:
        share = target * total / rest
        return [0.0 if i in shielded else share for i in range(len(sizes))]
    spill = (target * total - cap * rest) / guarded
    return [spill if i in shielded else cap for i in range(len(sizes))]


class LLMPrunerAllocator:
    """Dense first and last layers (:func:`dense_end_layers`), one raised ratio elsewhere."""

    name: ClassVar[str] = "llm-pruner"

    def allocate(self, request: AllocationRequest) -> list[float]:
        """:func:`protected_ratios` with the layers of :func:`dense_end_layers` protected."""
        sizes = [w * p for w, p in zip(request.widths, request.row_params)]
        return protected_ratios(sizes, dense_end_layers(len(sizes)), request.sparsity, request.r_max)
