"""Scoped thread counts: the caller's count comes back after the block, also when it raises."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune.threads import torch_threads


def test_thread_count_is_restored_after_the_block_and_after_an_error() -> None:
    before = torch.get_num_threads()
    other = before + 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
