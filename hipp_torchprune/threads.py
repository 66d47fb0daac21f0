"""Scoped torch CPU thread counts: code that needs a thread count sets it for its own work only,
so a library call or an in-process CLI command never changes what the caller runs with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op CPU threads (``None``: leave the count alone), and
    put the caller's count back afterwards, also when the block raises."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
