"""Calibration pass: forward hooks that collect the statistics the importance scorers need.

For every language-model MLP projection the pass accumulates the per-feature sum of squares
of its *input* over real (non-padding) tokens, so that ``||X_i||_2 = sqrt(in_sq[i])``, and the
per-feature sum (FLAP's fluctuation and bias compensation read it for ``down_proj``). Each
batch's sums are added in float64, batch after batch, so :func:`merge_stats` of per-batch
statistics in batch order gives exactly what one pass over all batches gives (this is how
several processes reach the statistics of one). With ``with_grads=True`` it also backpropagates
the calibration loss (:func:`hipp_torchprune.pruning.answers.calibration_loss`: the gold answer's
loss when the samples carry answers) and keeps, per projection and intermediate channel, the
first-order Taylor terms ``sum(W * dL/dW)`` and their element-wise form ``sum |W * dL/dW|``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat

import torch
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning.answers import Targets, calibration_loss
from hipp_torchprune.pruning.compute import float32_linears


@dataclass
class CalibrationStats:
    """Per-module statistics keyed by the module's qualified name in the full model.

    ``in_sq[name]`` is the sum over tokens of the squared input features ``(in_features,)``,
    float64; ``in_sum[name]`` is the sum over tokens of the input features ``(in_features,)``, float64;
    ``taylor[name]`` is the signed first-order term per intermediate channel ``(d_ff,)``;
    ``taylor_abs[name]`` its element-wise form ``sum |W * dL/dW|`` per channel ``(d_ff,)``;
    ``n_tokens`` counts the tokens seen, ``n_samples`` the (image, prompt) samples.
    """

    in_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    taylor: dict[str, torch.Tensor] = field(default_factory=dict)
    in_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    taylor_abs: dict[str, torch.Tensor] = field(default_factory=dict)
    n_tokens: int = 0
    n_samples: int = 0

    def input_norms(self, name: str) -> torch.Tensor:
        """``||X_i||_2`` over calibration tokens for the input features of module ``name``."""
        return self.in_sq[name].sqrt()


def mlp_module_names(model: nn.Module, adapter: ModelAdapter) -> dict[nn.Module, str]:
    """Map each LM MLP projection to its qualified name in ``model``."""
    wanted = {id(p): p for m in adapter.mlps() for p in (m.gate, m.up, m.down)}
    return {module: name for name, module in model.named_modules() if id(module) in wanted}


@contextmanager
def _input_sq_hooks(modules: dict[nn.Module, str], stats: CalibrationStats,
                    token_mask: list[torch.Tensor | None]) -> Iterator[None]:
    """Register hooks that add each module's squared inputs (masked to real tokens) to ``stats``."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach()
        mask = token_mask[0]
        x = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
        sq = x.float().pow(2).sum(0).double()  # float64 across batches, added in batch order
        name = modules[module]
        stats.in_sq[name] = stats.in_sq[name] + sq if name in stats.in_sq else sq
        total = x.float().sum(0).double()
        stats.in_sum[name] = stats.in_sum[name] + total if name in stats.in_sum else total

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def merge_stats(parts: Sequence[CalibrationStats]) -> CalibrationStats:
    """The statistics of all ``parts`` together, added in the given order. Merging per-batch
    statistics in batch order gives exactly the ``in_sq`` that :func:`collect_stats` computes
    over those batches at once (Taylor terms are linear in the gradient, so they add too, up to
    rounding)."""
    merged = CalibrationStats()
    for part in parts:
        for total, values in ((merged.in_sq, part.in_sq), (merged.in_sum, part.in_sum),
                              (merged.taylor, part.taylor), (merged.taylor_abs, part.taylor_abs)):
            for name, value in values.items():
                total[name] = total[name] + value if name in total else value.clone()
        merged.n_tokens += part.n_tokens
        merged.n_samples += part.n_samples
    return merged


def _taylor_terms(adapter: ModelAdapter, names: dict[nn.Module, str], stats: CalibrationStats) -> None:
    """Per-channel signed ``sum(W * grad)`` and element-wise ``sum |W * grad|`` of each projection
    (rows for gate/up, columns for down) into ``stats``."""
    for mlp in adapter.mlps():
        for module, dim in ((mlp.gate, 1), (mlp.up, 1), (mlp.down, 0)):
            if module.weight.grad is not None:
                product = (module.weight.detach() * module.weight.grad).float()
                stats.taylor[names[module]] = product.sum(dim)
                stats.taylor_abs[names[module]] = product.abs().sum(dim)


def collect_stats(model: nn.Module, adapter: ModelAdapter, batches: Iterable[dict[str, torch.Tensor]],
                  with_grads: bool = False, targets: Iterable[Targets] | None = None) -> CalibrationStats:
    """Run the calibration pass over ``batches`` (processor outputs) and return its statistics.

    ``targets`` gives each batch's gold answer token ids (:func:`~hipp_torchprune.pruning.answers.
    batch_targets`); the gradients then come from the answers' loss, else from the text tokens'.
    Raises :class:`CalibrationError` when ``batches`` is empty. Gradients, when requested, are
    cleared again afterwards, so the model leaves this function as it came in.
    """
    names = mlp_module_names(model, adapter)
    stats = CalibrationStats()
    token_mask: list[torch.Tensor | None] = [None]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if with_grads:
        model.zero_grad(set_to_none=True)
    try:
        # float32 linears only without gradients: autograd would keep every layer's float32 weight
        # copy for the backward pass, a float32 twin of the whole model
        with _input_sq_hooks(names, stats, token_mask), float32_linears(model, enabled=not with_grads):
            for batch, answers in zip(batches, targets if targets is not None else repeat(None)):
                batch = {k: v.to(device) for k, v in batch.items()}
                mask = batch.get("attention_mask")
                token_mask[0] = mask.bool() if mask is not None else None
                stats.n_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
                stats.n_samples += batch["input_ids"].shape[0]
                if with_grads:
                    calibration_loss(model, adapter, batch, answers).backward()
                else:
                    with torch.no_grad():
                        model(**batch, use_cache=False)
        if stats.n_samples == 0:
            raise CalibrationError("the calibration set is empty: give at least one (image, prompt) sample")
        if with_grads:
            _taylor_terms(adapter, names, stats)
    finally:
        if with_grads:
            model.zero_grad(set_to_none=True)
        model.train(was_training)
    return stats
