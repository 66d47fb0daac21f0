"""Work spread over ``accelerate`` processes with results that do not depend on the process count.

Every rank takes the items ``i`` with ``i % num_processes == process_index``, and the results
are gathered back into item order on every rank. Whatever a caller reduces from that list is
then reduced in item order, so one process and many compute the same bits as long as each
item's work is itself deterministic (same inputs, same thread count).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def map_over_ranks(fn: Callable[[Any], T], items: Sequence[Any], state: Any = None) -> list[T]:
    """``[fn(x) for x in items]``, split round-robin over ``state``'s processes and gathered in
    item order on every rank (``state`` None or one process: a plain list comprehension).

    Results travel pickled, so tensors in them should be on the CPU."""
    if state is None or state.num_processes == 1:
        return [fn(x) for x in items]
    from accelerate.utils import gather_object

    mine = [(i, fn(x)) for i, x in enumerate(items) if i % state.num_processes == state.process_index]
    return [value for _, value in sorted(gather_object(mine), key=lambda pair: pair[0])]
