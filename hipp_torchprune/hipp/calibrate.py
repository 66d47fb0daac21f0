"""The calibration pass HiPP trains on: activation statistics, row scores, visual sensitivity.

Run once per model and calibration set (``hipp calibrate`` caches it). Under several processes
each rank calibrates on its share of the samples and the sums are all-reduced, so every rank
ends with the same statistics and sensitivity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hipp_torchprune import api
from hipp_torchprune.hipp.profile import ModelProfile, build_profile
from hipp_torchprune.hipp.sensitivity import visual_sensitivity
from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.pruning.operator import layer_scores


def _all_reduce_sum(tensor: torch.Tensor, state: Any) -> torch.Tensor:
    if state is None or state.num_processes == 1:
        return tensor
    import torch.distributed as dist

    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sync_stats(stats: CalibrationStats, state: Any) -> CalibrationStats:
    """Sum every rank's statistics (identity on one process)."""
    if state is None or state.num_processes == 1:
        return stats
    counts = _all_reduce_sum(torch.tensor([stats.n_tokens, stats.n_samples], dtype=torch.float64), state)
    in_sq = {k: _all_reduce_sum(v, state) for k, v in sorted(stats.in_sq.items())}
    return CalibrationStats(in_sq=in_sq, n_tokens=int(counts[0]), n_samples=int(counts[1]))


def profile_model(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, str]], *, batch_size: int = 8,
                  state: Any = None) -> tuple[ModelProfile, CalibrationStats, list[torch.Tensor]]:
    """Calibrate ``model`` and return its profile, statistics and Wanda row scores per layer."""
    adapter = api.get_adapter(model)
    if state is not None and state.num_processes > 1:
        samples = list(samples)[state.process_index::state.num_processes]
    stats = sync_stats(api.calibrate(model, processor, samples, batch_size=batch_size), state)
    local_n = len(samples)
    sens = torch.tensor(visual_sensitivity(model, adapter, api.calibration_batches(adapter, processor, samples,
                                                                                    batch_size)), dtype=torch.float64)
    total = _all_reduce_sum(torch.cat([sens * local_n, torch.tensor([float(local_n)], dtype=torch.float64)]), state)
    sensitivity = (total[:-1] / total[-1]).tolist()
    scores = layer_scores(adapter, api.importance("wanda", model, stats))
    return build_profile(model, stats, sensitivity, scores), stats, scores
