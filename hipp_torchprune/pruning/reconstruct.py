"""Least-squares reconstruction of each pruned ``down_proj`` from calibration activations.

Removing MLP channels drops their columns of ``down_proj``. The kept columns were fitted with the
removed ones present, so the layer's output moves. With ``h`` the dense ``down_proj`` input on a
calibration token, ``K`` the kept channels and ``z = [h_K; 1]``, the kept columns and a new bias
are refitted to the dense output ``W h``:

    [W'  b] = argmin sum_t || W h_t - W' h_{t,K} - b ||^2
            = W [G_{:,K}  s] (A + lambda * mean(diag A) * I)^{-1},   A = [[G_KK, s_K], [s_K^T, n]]

with ``G = sum_t h_t h_t^T``, ``s = sum_t h_t`` and ``n`` the number of tokens (all in the one
augmented Gram ``sum_t [h_t; 1][h_t; 1]^T``; ``lambda`` is the damping, as SparseGPT's
``percdamp``). FLAP's bias compensation is the special case ``W' = W_K`` (only the bias is
refitted, to the removed channels' mean output); this also refits the kept columns, so what the
removed channels carried that correlates with the kept ones is moved onto them.

The Grams are collected on the dense model (as FLAP's statistics are), in float64 on the CPU,
``8 (d + 1)^2`` bytes a layer: 0.97 GB at LLaVA-1.5-7B (d = 11008), 31 GB for its 32 layers, and
0.5 MB for the whole demo model. So they are collected a group of layers at a time, at most
``DEFAULT_GRAM_BYTES`` (4 GiB) held at once: eight calibration passes at 7B, one on the demo model.
Each group is solved at once and kept in the model's dtype (the kept down columns: at most one
copy of the down weights) until the model is pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import CalibrationError, PlanError
from hipp_torchprune.pruning.compute import float32_linears

#: How a pruned ``down_proj`` is refitted: ``none`` (kept columns as they are) or ``lstsq``
#: (kept columns and a bias, least squares against the dense output; module docstring).
Reconstruction = Literal["none", "lstsq"]
RECONSTRUCTIONS: tuple[str, ...] = ("none", "lstsq")
#: Damping of the augmented Gram, relative to its mean diagonal.
DEFAULT_DAMP = 0.01
#: Gram memory held at a time (float64); more layers take more calibration passes.
DEFAULT_GRAM_BYTES = 4 * 2**30
#: The augmented Grams of some layers (by index), from one calibration pass of the dense model.
GramSource = Callable[[Sequence[int]], list[torch.Tensor]]
#: A refitted layer: kept ``down_proj`` columns and bias.
Solution = tuple[torch.Tensor, torch.Tensor]


def augmented_gram(inputs: torch.Tensor) -> torch.Tensor:
    """``sum_t [h_t; 1][h_t; 1]^T`` of ``inputs`` ``(tokens, d)``, float64 ``(d + 1, d + 1)``."""
    z = torch.cat([inputs.double(), torch.ones(inputs.shape[0], 1, dtype=torch.float64, device=inputs.device)], 1)
    return z.T @ z


def lstsq_down(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor,
               damp: float = DEFAULT_DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """The refitted kept columns ``(out, |keep|)`` and bias ``(out,)`` of ``weight`` ``(out, d)``
    (module docstring), float64, from the augmented Gram ``(d + 1, d + 1)`` of its dense input."""
    d = weight.shape[1]
    if gram.shape != (d + 1, d + 1):
        raise PlanError(f"the Gram of a down_proj with {d} inputs must be {(d + 1, d + 1)}, got {tuple(gram.shape)}")
    if gram[d, d] <= 0:
        raise CalibrationError("least-squares reconstruction needs at least one calibration token")
    gram = gram.double().cpu()
    idx = torch.cat([keep.cpu().long(), torch.tensor([d])])  # kept channels, then the constant 1
    a = gram[idx][:, idx]  # (k + 1, k + 1)
    a = a + damp * a.diagonal().mean() * torch.eye(len(idx), dtype=torch.float64)
    cross = gram[:d][:, idx]  # (d, k + 1)
    solved = torch.linalg.solve(a, (weight.detach().double().cpu() @ cross).T).T  # (out, k + 1), A symmetric
    return solved[:, :-1], solved[:, -1]


@contextmanager
def _gram_hooks(modules: Sequence[nn.Module], grams: list[torch.Tensor | None],
                token_mask: list[torch.Tensor | None]) -> Iterator[None]:
    def hook_for(i: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            mask = token_mask[0]
            x = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            part = augmented_gram(x.float()).cpu()
            grams[i] = part if grams[i] is None else grams[i] + part
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def collect_down_grams(model: nn.Module, adapter: ModelAdapter, batches: Iterable[dict[str, torch.Tensor]],
                       layers: Sequence[int] | None = None) -> list[torch.Tensor]:
    """One calibration pass (no gradients, linears in float32 as the statistics pass) collecting the
    augmented ``down_proj`` input Gram of each of ``layers`` (default: all) over real (attention-masked) tokens."""
    mlps = adapter.mlps()
    downs = [mlps[i].down for i in (range(len(mlps)) if layers is None else layers)]
    grams: list[torch.Tensor | None] = [None] * len(downs)
    token_mask: list[torch.Tensor | None] = [None]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _gram_hooks(downs, grams, token_mask), float32_linears(model), torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask = batch.get("attention_mask")
                token_mask[0] = mask.bool() if mask is not None else None
                model(**batch, use_cache=False)
    finally:
        model.train(was_training)
    if any(g is None for g in grams):
        raise CalibrationError("least-squares reconstruction needs calibration samples: none were given")
    return [g for g in grams if g is not None]


def gram_bytes(width: int) -> int:
    """Bytes of a float64 augmented Gram of a ``down_proj`` with ``width`` inputs: ``8 (width + 1)^2``."""
    return 8 * (width + 1) ** 2


def gram_chunks(widths: Sequence[int], max_bytes: int = DEFAULT_GRAM_BYTES) -> list[list[int]]:
    """Consecutive index groups of ``widths`` whose float64 augmented Grams (``8 (w + 1)^2`` bytes
    each) fit in ``max_bytes`` together; a Gram larger than that is a group of its own.

    Example: widths ``[3, 3, 1]``, 200 bytes (128 + 128 + 32) -> ``[[0], [1, 2]]``.
    """
    chunks: list[list[int]] = []
    used = max_bytes + 1
    for i, width in enumerate(widths):
        size = gram_bytes(width)
        if used + size > max_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += size
    return chunks


def solve_downs(adapter: ModelAdapter, keep: Sequence[torch.Tensor], grams: GramSource,
                damp: float = DEFAULT_DAMP, max_bytes: int = DEFAULT_GRAM_BYTES) -> list[Solution | None]:
    """Each layer's :func:`lstsq_down` solution for its ``keep``, in the model's dtype (None where
    nothing is removed), solved on the dense model before anything is pruned. ``grams`` is called
    once per :func:`gram_chunks` group of the pruned layers, so at most ``max_bytes`` of Grams are
    held at a time (one calibration pass a group)."""
    widths = adapter.intermediate_widths()
    if len(keep) != len(widths):
        raise PlanError(f"{len(keep)} kept-row sets for {len(widths)} layers")
    pruned = [i for i, (k, w) in enumerate(zip(keep, widths)) if k.numel() < w]
    solutions: list[Solution | None] = [None] * len(widths)
    mlps = adapter.mlps()
    for chunk in gram_chunks([widths[i] for i in pruned], max_bytes):
        layers = [pruned[j] for j in chunk]
        for i, gram in zip(layers, grams(layers), strict=True):
            dtype = mlps[i].down.weight.dtype
            weight, bias = lstsq_down(mlps[i].down.weight, gram, keep[i], damp)
            solutions[i] = (weight.to(dtype), bias.to(dtype))
    return solutions


def held_grams(grams: Sequence[torch.Tensor]) -> GramSource:
    """A :data:`GramSource` over Grams already held, one per layer (the plan environment's)."""
    return lambda layers: [grams[i] for i in layers]


@contextmanager
def refitted(adapter: ModelAdapter, keep: Sequence[torch.Tensor],
             solutions: Sequence[Solution | None]) -> Iterator[None]:
    """The model with :func:`solve_downs`' ``solutions`` in place for the block: each pruned
    ``down_proj``'s kept columns (``keep[l]``) overwritten and its bias added by a forward hook; the
    dense weights are put back bit for bit after it, also on error. For mask mode, where the removed
    columns see a zero input, so the block computes exactly what :func:`write_downs` on the
    physically pruned model does. Holds the overwritten columns' old values (at most one copy of
    the down weights)."""
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    handles = []
    try:
        with torch.no_grad():
            for mlp, kept, solution in zip(adapter.mlps(), keep, solutions, strict=True):
                if solution is None:
                    continue
                weight, idx = mlp.down.weight, kept.to(mlp.down.weight.device)
                saved.append((weight, idx, weight[:, idx].clone()))
                weight[:, idx] = solution[0].to(device=weight.device, dtype=weight.dtype)
                handles.append(mlp.down.register_forward_hook(_bias_hook(solution[1].to(weight.device, weight.dtype))))
        yield
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for weight, idx, old in saved:
                weight[:, idx] = old


def _bias_hook(bias: torch.Tensor) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output + bias
    return hook


def write_downs(adapter: ModelAdapter, solutions: Sequence[Solution | None]) -> None:
    """Write :func:`solve_downs`' solutions into the pruned ``down_proj`` layers (the model's dtype),
    adding each bias (a bias parameter is created where the layer has none)."""
    for mlp, solution in zip(adapter.mlps(), solutions):
        if solution is None:
            continue
        weight, bias = solution
        with torch.no_grad():
            mlp.down.weight.copy_(weight.to(device=mlp.down.weight.device, dtype=mlp.down.weight.dtype))
        add_bias(mlp.down, bias)


def add_bias(linear: nn.Linear, bias: torch.Tensor) -> None:
    """Add ``bias`` to ``linear``'s output, creating the bias parameter (model dtype) if it has none."""
    weight = linear.weight
    if linear.bias is None:
        linear.bias = nn.Parameter(bias.to(device=weight.device, dtype=weight.dtype),
                                   requires_grad=weight.requires_grad)
    else:
        with torch.no_grad():
            linear.bias.add_(bias.to(device=linear.bias.device, dtype=linear.bias.dtype))
