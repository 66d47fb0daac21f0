"""Float32 arithmetic for 16-bit models on the CPU, weights left as they are.

A bf16 matrix product on a CPU without bf16 units (no AVX512-BF16 / AMX) is several times
slower than a float32 one: on this project's 2-core AVX2 machine a (600 x 4096) by (4096 x
11008) product took 15.3 s in bf16 and 2.1 s in float32 (one thread). A calibration pass over
a 7B model in bf16 is then hours long. :func:`float32_linears` makes every ``nn.Linear`` of a
16-bit CPU model compute in float32 for the duration of a ``with`` block: the input is cast up,
the weight (and bias) is read through a float32 view of the stored 16-bit parameter (a torch
parametrization, so gradients still reach the parameter), and the output is cast back to the
model's dtype, so the rest of the network sees the dtype it always sees. The stored parameters
are never converted; at most one layer's float32 copy is alive at a time.

Results differ from pure bf16 arithmetic only by the rounding of the products (float32
accumulation is what bf16 GPU kernels do too). On a GPU, or for a float32/float64 model, the
block changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Dtypes whose CPU matrix products are upcast.
LOW_PRECISION = (torch.bfloat16, torch.float16)


class _Float32View(nn.Module):
    """Parametrization: the stored tensor, read as float32 (differentiable)."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        """``stored`` in float32."""
        return stored.float()


def needs_upcast(model: nn.Module) -> bool:
    """Whether ``model`` is a 16-bit model on the CPU (the case :func:`float32_linears` acts on)."""
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cpu" and first.dtype in LOW_PRECISION


def _upcast_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].float(), *args[1:])


def _downcast_output(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)
    return hook


@contextmanager
def float32_linears(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``nn.Linear`` of a 16-bit CPU ``model`` computes in float32
    (module docstring); a no-op for other models or when not ``enabled``. Hooks and
    parametrizations are removed on exit, leaving the same parameter objects (and any gradients
    they received) in place. Under autograd each linear's float32 weight view is kept for the
    backward pass, so a block with a backward pass holds a float32 copy of every weight it used:
    callers that take gradients of a large model pass ``enabled=False``."""
    if not enabled or not needs_upcast(model):
        yield
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    handles = []
    try:
        for linear in linears:
            dtype = linear.weight.dtype
            for name in ("weight", "bias"):
                if getattr(linear, name) is not None:
                    parametrize.register_parametrization(linear, name, _Float32View(), unsafe=True)
            handles.append(linear.register_forward_pre_hook(_upcast_input))
            handles.append(linear.register_forward_hook(_downcast_output(dtype)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for linear in linears:
            for name in ("weight", "bias"):
                if parametrize.is_parametrized(linear, name):
                    parametrize.remove_parametrizations(linear, name, leave_parametrized=False)
