"""SliceGPT (Ashkboos et al., 2024) for LLaVA, at a parameter count matched to an MLP-sparsity budget.

1. **Fold** every RMSNorm weight into the linears that read it (``q/k/v`` after
   ``input_layernorm``, ``gate/up`` after ``post_attention_layernorm``, ``lm_head`` after the
   final norm); the norms become unit-weight, hence ``RMSNorm(Q^T x) = Q^T RMSNorm(x)`` for an
   orthogonal ``Q``. Tied embeddings are untied first.
2. **PCA**: ``C = sum x x^T`` over the residual stream at every decoder layer's input and at the
   final norm's input, real tokens of the calibration samples only (image tokens included);
   ``Q`` = eigenvectors of ``C`` by decreasing eigenvalue. One ``Q`` serves the whole stream,
   so no shortcut matrices are needed in the residual connections (the paper uses one ``Q`` per
   block plus shortcut matrices; a single global ``Q`` keeps transformers' modules unchanged and
   the checkpoint loadable; it is the weaker variant).
3. **Rotate** everything that writes into the stream by ``Q^T`` (embedding rows, ``o_proj`` and
   ``down_proj`` outputs, **the multimodal projector's output**) and everything that reads it by
   ``Q`` (``q/k/v``, ``gate/up``, ``lm_head``). Unsliced, the model computes the same logits.
4. **Slice**: keep the first ``d'`` principal directions. RMSNorm then averages over ``d'``
   instead of ``d`` dims; its weight is set to ``sqrt(d / d')`` so that ``x / rms(x)`` keeps its
   scale when the kept directions carry most of the energy.

**Budget conversion.** Deleting one hidden dimension removes ``P_dim`` parameters
(:func:`params_per_hidden_dim`: a column of every stream-reading linear, a row of every
stream-writing linear and its bias, one embedding and one ``lm_head`` column, one entry of each
norm). An MLP sparsity ``s`` removes ``s * sum_l width_l * row_params_l`` parameters, so
SliceGPT deletes ``k = round(s * sum_l width_l * row_params_l / P_dim)`` dimensions
(:func:`dims_for_budget`); its realized "sparsity" is ``k * P_dim / sum_l width_l * row_params_l``.

**Config and checkpoint.** ``text_config.hidden_size`` keeps the dense width ``d``: it is the
width the unsliced modules are built from (the projector's first layer, and the attention width
``head_dim * num_heads``), and transformers' configs refuse a hidden size that is not a multiple
of the head count. ``head_dim`` is written explicitly. The sliced width is in the modules;
:func:`~hipp_torchprune.checkpoint.save_pruned` records their shapes and
:func:`~hipp_torchprune.checkpoint.load_pruned` rebuilds them.

Qwen2.5-VL is refused (:class:`SliceGPTUnsupportedError`) before anything is touched: the
rotation would also have to be folded into its vision merger, which writes the image tokens
into the residual stream, and only LLaVA's projector is wired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hipp_torchprune.errors import CalibrationError, HippError
from hipp_torchprune.methods import MethodContext, MethodNeeds, MethodReport, mlp_param_total
from hipp_torchprune.registry import Registry


class SliceGPTUnsupportedError(HippError, TypeError):
    """SliceGPT cannot handle this model family."""


def dims_for_budget(budget_params: float, params_per_dim: int, hidden: int, multiple: int = 1) -> int:
    """Hidden dimensions to delete so that ``k * params_per_dim`` is closest to ``budget_params``,
    with the kept width ``hidden - k`` a positive multiple of ``multiple``.

    Examples: a budget of 1000 parameters at 300 per dimension -> 3 dimensions (900 removed);
    with ``hidden = 64, multiple = 4`` the kept width must be 60 or 64 -> 4 dimensions.
    """
    if params_per_dim <= 0 or multiple < 1:
        raise ValueError("params_per_dim and multiple must be positive")
    kept = [h for h in range(multiple, hidden + 1, multiple)]
    if not kept:
        raise ValueError(f"no kept width is a multiple of {multiple} and at most {hidden}")
    best = min(kept, key=lambda h: (abs((hidden - h) * params_per_dim - budget_params), -h))
    return hidden - best


def _parts(model: nn.Module) -> dict[str, Any]:
    if type(model).__name__ != "LlavaForConditionalGeneration":
        raise SliceGPTUnsupportedError(
            f"slicegpt supports LLaVA only, not {type(model).__name__}: the residual-stream rotation must also be "
            "folded into every module that writes the stream, and only LLaVA's multi-modal projector is wired "
            "(Qwen2.5-VL's vision merger is not); the model was not changed (see docs/baselines.md)")
    lm = model.model.language_model
    return {"lm": lm, "layers": list(lm.layers), "embed": lm.embed_tokens, "norm": lm.norm,
            "lm_head": model.lm_head, "proj_out": model.model.multi_modal_projector.linear_2}


def _readers_writers(parts: dict[str, Any]) -> tuple[list[nn.Linear], list[nn.Linear]]:
    readers: list[nn.Linear] = [parts["lm_head"]]
    writers: list[nn.Linear] = [parts["proj_out"]]
    for layer in parts["layers"]:
        a, m = layer.self_attn, layer.mlp
        readers += [a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj]
        writers += [a.o_proj, m.down_proj]
    return readers, writers


def params_per_hidden_dim(model: nn.Module) -> int:
    """Parameters removed with one residual-stream dimension (see the module docstring)."""
    parts = _parts(model)
    readers, writers = _readers_writers(parts)
    n = parts["embed"].weight.shape[0]
    n += sum(lin.out_features for lin in readers)
    n += sum(lin.in_features + (lin.bias is not None) for lin in writers)
    n += 1 + 2 * len(parts["layers"])  # final norm + two norms per layer
    return n


@torch.no_grad()
def fold_norms(model: nn.Module) -> None:
    """Fold RMSNorm weights into the following linears (untying ``lm_head``); norms become 1."""
    parts = _parts(model)
    if parts["lm_head"].weight is parts["embed"].weight:
        parts["lm_head"].weight = nn.Parameter(parts["embed"].weight.detach().clone())
        model.config.tie_word_embeddings = False
        model.config.text_config.tie_word_embeddings = False
    pairs = [(parts["norm"], [parts["lm_head"]])]
    for layer in parts["layers"]:
        pairs.append((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]))
        pairs.append((layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj]))
    for norm, linears in pairs:
        for lin in linears:
            lin.weight.mul_(norm.weight.to(lin.weight.dtype).unsqueeze(0))
        norm.weight.fill_(1.0)


@torch.no_grad()
def residual_covariance(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, str]]) -> torch.Tensor:
    """``sum x x^T`` (float64) of the residual stream at every layer input and the final norm input."""
    from hipp_torchprune.api import calibration_batches, get_adapter

    if not samples:
        raise CalibrationError("slicegpt needs calibration samples for its PCA")
    parts = _parts(model)
    hidden = parts["embed"].weight.shape[1]
    cov = torch.zeros(hidden, hidden, dtype=torch.float64)
    mask: list[torch.Tensor | None] = [None]

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        x = x[mask[0]] if mask[0] is not None and mask[0].shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
        x = x.double().cpu()
        cov.add_(x.T @ x)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in [*parts["layers"], parts["norm"]]]
    device = next(model.parameters()).device
    try:
        for batch in calibration_batches(get_adapter(model), processor, samples):
            batch = {k: v.to(device) for k, v in batch.items()}
            am = batch.get("attention_mask")
            mask[0] = am.bool() if am is not None else None
            model(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return cov


def pca_basis(cov: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric ``cov`` as columns, by decreasing eigenvalue (orthogonal ``Q``)."""
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, torch.argsort(vals, descending=True)]


def _new_linear(lin: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    out.weight.data.copy_(weight)
    if bias is not None:
        out.bias.data.copy_(bias)
    return out


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, module in root.named_modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)


@torch.no_grad()
def rotate_and_slice(model: nn.Module, q: torch.Tensor, new_hidden: int) -> None:
    """Rotate the residual stream by ``Q`` and keep its first ``new_hidden`` directions.

    Expects folded norms (:func:`fold_norms`). ``new_hidden == hidden`` rotates only.
    """
    parts = _parts(model)
    hidden = parts["embed"].weight.shape[1]
    qk = q[:, :new_hidden]
    readers, writers = _readers_writers(parts)
    for lin in readers:
        w = (lin.weight.double() @ qk.to(lin.weight.device)).to(lin.weight.dtype)
        _replace(model, lin, _new_linear(lin, w, lin.bias))
    for lin in writers:
        qt = qk.T.to(lin.weight.device)
        w = (qt @ lin.weight.double()).to(lin.weight.dtype)
        b = (qt @ lin.bias.double()).to(lin.bias.dtype) if lin.bias is not None else None
        _replace(model, lin, _new_linear(lin, w, b))
    emb = parts["embed"]
    emb.weight = nn.Parameter((emb.weight.double() @ qk.to(emb.weight.device)).to(emb.weight.dtype))
    emb.embedding_dim = new_hidden
    scale = math.sqrt(hidden / new_hidden)
    for norm in [parts["norm"], *(n for layer in parts["layers"]
                                  for n in (layer.input_layernorm, layer.post_attention_layernorm))]:
        norm.weight = nn.Parameter(torch.full((new_hidden,), scale, dtype=norm.weight.dtype,
                                              device=norm.weight.device))
    text = model.config.text_config  # hidden_size stays the architecture's width (module docstring)
    if getattr(text, "head_dim", None) is None:
        text.head_dim = hidden // text.num_attention_heads


class SliceGPTMethod:
    """SliceGPT at the parameter count of an MLP-sparsity budget (LLaVA).

    Context option ``slicegpt_multiple`` (default 1: the closest budget match) makes the kept
    hidden width a multiple of it. The sliced model saves with
    :func:`~hipp_torchprune.checkpoint.save_pruned` and reloads with
    :func:`~hipp_torchprune.checkpoint.load_pruned` (module docstring).
    """

    name: ClassVar[str] = "slicegpt"
    kind: ClassVar[str] = "slicing"

    def needs(self, registry: Registry | None = None) -> MethodNeeds:
        """Calibration samples for the PCA; no statistics, no gradients."""
        return MethodNeeds(samples=True, stats=False, grads=False)

    def check(self, model: nn.Module) -> None:
        """Raise :class:`SliceGPTUnsupportedError` for a model family other than LLaVA."""
        _parts(model)

    def prune(self, model: nn.Module, sparsity: float, context: MethodContext) -> MethodReport:
        """Fold, PCA on the context's calibration samples, rotate, slice ``k`` dims (budget-matched)."""
        from hipp_torchprune.api import get_adapter

        parts = _parts(model)
        hidden = parts["embed"].weight.shape[1]
        total = mlp_param_total(model, context.registry)
        per_dim = params_per_hidden_dim(model)
        k = dims_for_budget(sparsity * total, per_dim, hidden, int(context.options.get("slicegpt_multiple", 1)))
        fold_norms(model)
        q = pca_basis(residual_covariance(model, context.processor, context.samples))
        rotate_and_slice(model, q, hidden - k)
        widths = tuple(get_adapter(model, context.registry).intermediate_widths())
        return MethodReport(self.name, "slicing", k * per_dim / total, widths,
                            {"hidden_before": hidden, "hidden_after": hidden - k, "params_per_dim": per_dim,
                             "removed_params": k * per_dim})
