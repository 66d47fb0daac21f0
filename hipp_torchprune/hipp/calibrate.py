"""The calibration pass HiPP trains on: activation statistics, row scores, visual sensitivity.

Run once per model and calibration set (``hipp calibrate`` caches it). The samples are cut into
the same batches whatever the process count; under several processes each rank calibrates
every ``num_processes``-th batch, the per-batch results are gathered, and every rank adds them
in batch order in float64. One process adds the same per-batch results in the same order, so
the statistics, the sensitivity and the row scores are the same bits on 1 or N processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hipp_torchprune import api
from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.hipp.distributed import map_over_ranks
from hipp_torchprune.hipp.profile import ModelProfile, build_profile
from hipp_torchprune.hipp.sensitivity import attention_to_vision
from hipp_torchprune.methods import DEFAULT_ROW_SCORE
from hipp_torchprune.pruning.calibration import CalibrationStats, collect_stats, merge_stats
from hipp_torchprune.pruning.operator import layer_scores
from hipp_torchprune.registry import Registry


def _calibrate_batch(model: nn.Module, adapter: ModelAdapter, processor: Any,
                     chunk: Sequence[tuple[Any, str]]) -> tuple[CalibrationStats, torch.Tensor]:
    """One batch's statistics and per-layer sensitivity summed over its samples ``(L,)``, float64
    and on the CPU (ready to be gathered across processes)."""
    batch = next(api.calibration_batches(adapter, processor, chunk, len(chunk)))
    with attention_to_vision(model, adapter, batch) as sums:  # one forward pass measures both
        stats = collect_stats(model, adapter, [batch])
    sens = torch.tensor(sums, dtype=torch.float64)
    return CalibrationStats(in_sq={k: v.cpu() for k, v in stats.in_sq.items()},
                            in_sum={k: v.cpu() for k, v in stats.in_sum.items()}, n_tokens=stats.n_tokens,
                            n_samples=stats.n_samples), sens


def row_scores(model: nn.Module, stats: CalibrationStats, registry: Registry | None = None) -> list[torch.Tensor]:
    """Per layer, the shared row score (:data:`~hipp_torchprune.methods.DEFAULT_ROW_SCORE`) of every
    MLP row: the rows HiPP's environment and its deployed plans remove first."""
    adapter = api.get_adapter(model, registry)
    return layer_scores(adapter, api.importance(DEFAULT_ROW_SCORE, model, stats, registry=registry))


def profile_model(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, str]], *, batch_size: int = 8,
                  state: Any = None, registry: Registry | None = None
                  ) -> tuple[ModelProfile, CalibrationStats, list[torch.Tensor]]:
    """Calibrate ``model`` and return its profile, statistics and row scores per layer (the
    shared row score every method keeps rows by, :data:`~hipp_torchprune.methods.DEFAULT_ROW_SCORE`).

    ``state`` (an ``accelerate`` state) spreads the batches over processes; the result does not
    depend on the process count (see the module docstring). ``registry`` is where the adapter and
    the scorer are looked up (default: the default registry)."""
    adapter = api.get_adapter(model, registry)
    samples = list(samples)
    if not samples:
        raise CalibrationError("the calibration set is empty: give at least one (image, prompt) sample")
    chunks = [samples[start:start + batch_size] for start in range(0, len(samples), batch_size)]
    parts = map_over_ranks(lambda chunk: _calibrate_batch(model, adapter, processor, chunk), chunks, state)
    merged = merge_stats([stats for stats, _ in parts])
    device = next(model.parameters()).device
    stats = CalibrationStats(in_sq={k: v.to(device) for k, v in merged.in_sq.items()},
                             in_sum={k: v.to(device) for k, v in merged.in_sum.items()}, n_tokens=merged.n_tokens,
                             n_samples=merged.n_samples)
    sens_sum = parts[0][1].clone()
    for _, sens in parts[1:]:
        sens_sum += sens
    sensitivity = (sens_sum / stats.n_samples).tolist()
    scores = row_scores(model, stats, registry)
    return build_profile(model, stats, sensitivity, scores, registry), stats, scores
