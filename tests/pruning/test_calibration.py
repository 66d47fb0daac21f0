"""Calibration statistics add up in a fixed order: per-batch statistics merged in batch order are
the bits one pass over every batch gives (what lets N processes reproduce one)."""

from __future__ import annotations

import torch

from hipp_torchprune import api
from hipp_torchprune.pruning.calibration import collect_stats, merge_stats
from tests.conftest import samples


def test_per_batch_statistics_merged_in_order_equal_one_pass(tiny) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    batches = list(api.calibration_batches(adapter, processor, samples(7), batch_size=3))
    assert len(batches) == 3
    whole = collect_stats(model, adapter, batches)
    merged = merge_stats([collect_stats(model, adapter, [b]) for b in batches])
    assert merged.in_sq.keys() == whole.in_sq.keys() and len(whole.in_sq) == 3 * len(adapter.mlps())
    assert all(v.dtype == torch.float64 and torch.equal(merged.in_sq[k], v) for k, v in whole.in_sq.items())
    assert (merged.n_tokens, merged.n_samples) == (whole.n_tokens, whole.n_samples) and whole.n_samples == 7


def test_merge_adds_taylor_terms_and_leaves_the_parts_alone(tiny) -> None:
    _, model, processor = tiny
    parts = [api.calibrate(model, processor, samples(2, seed=s), with_grads=True) for s in (0, 1)]
    before = {k: v.clone() for k, v in parts[0].in_sq.items()}
    merged = merge_stats(parts)
    assert all(torch.equal(parts[0].in_sq[k], v) for k, v in before.items())  # no in-place adds into a part
    for key, value in parts[0].taylor.items():
        assert torch.equal(merged.taylor[key], value + parts[1].taylor[key])
    assert merged.n_samples == 4
