"""SliceGPT (Ashkboos et al., 2024) for LLaVA: the shared steps and the ``global`` variant.

The ``slicegpt`` method (:mod:`hipp_baselines.slicegpt_method`) runs either this variant or the
reference's ``per-block`` one (:mod:`hipp_baselines.slicegpt_blocks`, the default: stronger on
the demo model's calibration split, ``docs/baselines.md``), at a parameter count matched to an
MLP-sparsity budget.

1. **Fold** every RMSNorm weight into the linears that read it (``q/k/v`` after
   ``input_layernorm``, ``gate/up`` after ``post_attention_layernorm``, ``lm_head`` after the
   final norm); the norms become unit-weight, hence ``RMSNorm(Q^T x) = Q^T RMSNorm(x)`` for an
   orthogonal ``Q``. Tied embeddings are untied first.
2. **PCA**: ``C = sum x x^T`` over the residual stream at every decoder layer's input and at the
   final norm's input, real tokens of the calibration samples only (image tokens included);
   ``Q`` = eigenvectors of ``C`` by decreasing eigenvalue. One ``Q`` serves the whole stream,
   so no shortcut matrices are needed in the residual connections (the paper uses one ``Q`` per
   site plus shortcut matrices: the ``per-block`` variant).
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
the global variant deletes ``k = round(s * sum_l width_l * row_params_l / P_dim)`` dimensions
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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hipp_torchprune.errors import CalibrationError, HippError


class SliceGPTUnsupportedError(HippError, TypeError):
    """SliceGPT cannot handle this model family."""


def dims_for_budget(budget_params: float, params_per_dim: int, hidden: int, multiple: int = 1) -> int:
    """Hidden dimensions to delete so that ``k * params_per_dim`` is closest to ``budget_params``,
    with the kept width ``hidden - k`` a positive multiple of ``multiple``.

    Examples: a budget of 1000 parameters at 300 per dimension -> 3 dimensions (900 removed);
    with ``hidden = 64, multiple = 4`` the kept width must be 60 or 64 -> 4 dimensions.
    """
    if params_per_dim <= 0:
        raise ValueError("params_per_dim must be positive")
    return closest_cut(budget_params, lambda k: k * params_per_dim, hidden, multiple)


def closest_cut(budget_params: float, removed: Callable[[int], float], hidden: int, multiple: int = 1) -> int:
    """Hidden dimensions ``k`` to delete so that ``removed(k)`` (parameters removed, increasing in
    ``k``) is closest to ``budget_params``, with ``hidden - k`` a positive multiple of ``multiple``
    (ties: the smaller cut)."""
    if multiple < 1:
        raise ValueError("multiple must be positive")
    kept = [h for h in range(multiple, hidden + 1, multiple)]
    if not kept:
        raise ValueError(f"no kept width is a multiple of {multiple} and at most {hidden}")
    best = min(kept, key=lambda h: (abs(removed(hidden - h) - budget_params), -h))
    return hidden - best


def llava_parts(model: nn.Module) -> dict[str, Any]:
    """The LLaVA modules SliceGPT edits (language model, its layers, embedding, final norm, head,
    projector output); :class:`SliceGPTUnsupportedError` for any other model family."""
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
    parts = llava_parts(model)
    readers, writers = _readers_writers(parts)
    n = parts["embed"].weight.shape[0]
    n += sum(lin.out_features for lin in readers)
    n += sum(lin.in_features + (lin.bias is not None) for lin in writers)
    n += 1 + 2 * len(parts["layers"])  # final norm + two norms per layer
    return n


@torch.no_grad()
def fold_norms(model: nn.Module) -> None:
    """Fold RMSNorm weights into the following linears (untying ``lm_head``); norms become 1."""
    parts = llava_parts(model)
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


class _SiteCaptured(Exception):
    """Raised by a capturing hook once the last site it needs is seen (the rest of the pass is skipped)."""


@torch.no_grad()
def stream_covariance(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, ...]],
                      modules: Sequence[nn.Module], stop_after: bool = False) -> torch.Tensor:
    """``sum x x^T`` (float64) of the first input of every module in ``modules`` (the residual
    stream where it enters them), over the real tokens of the calibration samples' prompts.

    ``stop_after``: ``modules`` is one module, and each forward pass stops once it has been seen.
    """
    from hipp_torchprune.api import calibration_batches, get_adapter

    if not samples:
        raise CalibrationError("slicegpt needs calibration samples for its PCA")
    cov: list[torch.Tensor | None] = [None]
    mask: list[torch.Tensor | None] = [None]

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        x = x[mask[0]] if mask[0] is not None and mask[0].shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
        x = x.double().cpu()
        cov[0] = x.T @ x if cov[0] is None else cov[0].add_(x.T @ x)
        if stop_after:
            raise _SiteCaptured

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    device = next(model.parameters()).device
    try:
        for batch in calibration_batches(get_adapter(model), processor, samples):
            batch = {k: v.to(device) for k, v in batch.items()}
            am = batch.get("attention_mask")
            mask[0] = am.bool() if am is not None else None
            try:
                model(**batch, use_cache=False)
            except _SiteCaptured:
                pass
    finally:
        for h in handles:
            h.remove()
    if cov[0] is None:
        raise CalibrationError("slicegpt's PCA saw no residual-stream activations")
    return cov[0]


def residual_covariance(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, ...]]) -> torch.Tensor:
    """``sum x x^T`` (float64) of the residual stream at every layer input and the final norm input."""
    parts = llava_parts(model)
    return stream_covariance(model, processor, samples, [*parts["layers"], parts["norm"]])


def pca_basis(cov: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric ``cov`` as columns, by decreasing eigenvalue (orthogonal ``Q``)."""
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, torch.argsort(vals, descending=True)]


@torch.no_grad()
def set_linear(lin: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give ``lin`` a new weight (and bias) in its own dtype; its feature counts follow."""
    old = lin.weight
    lin.weight = nn.Parameter(weight.to(old.device, old.dtype), requires_grad=old.requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(old.device, lin.bias.dtype), requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = lin.weight.shape


@torch.no_grad()
def rotate_reader(lin: nn.Linear, qk: torch.Tensor) -> None:
    """A linear that reads the stream now reads ``x Q_k``: ``W <- W Q_k`` (``Q_k``: ``d x d'``)."""
    set_linear(lin, lin.weight.double() @ qk.to(lin.weight.device), None)


@torch.no_grad()
def rotate_writer(lin: nn.Linear, qk: torch.Tensor) -> None:
    """A linear that writes the stream now writes ``y Q_k``: ``W <- Q_k^T W``, ``b <- Q_k^T b``."""
    qt = qk.T.to(lin.weight.device)
    set_linear(lin, qt @ lin.weight.double(), qt @ lin.bias.double() if lin.bias is not None else None)


@torch.no_grad()
def rotate_embedding(emb: nn.Embedding, qk: torch.Tensor) -> None:
    """Embedding rows written into the stream in the basis ``Q_k``: ``E <- E Q_k``."""
    emb.weight = nn.Parameter((emb.weight.double() @ qk.to(emb.weight.device)).to(emb.weight.dtype))
    emb.embedding_dim = qk.shape[1]


@torch.no_grad()
def resize_norm(norm: nn.Module, width: int, hidden: int) -> None:
    """A folded (unit) RMSNorm over ``width`` of ``hidden`` dims: weight ``sqrt(hidden / width)``."""
    norm.weight = nn.Parameter(torch.full((width,), math.sqrt(hidden / width), dtype=norm.weight.dtype,
                                          device=norm.weight.device))


def keep_head_dim(model: nn.Module, hidden: int) -> None:
    """Write ``head_dim`` explicitly: ``hidden_size`` stays the architecture's width (module docstring)."""
    text = model.config.text_config
    if getattr(text, "head_dim", None) is None:
        text.head_dim = hidden // text.num_attention_heads


@torch.no_grad()
def rotate_and_slice(model: nn.Module, q: torch.Tensor, new_hidden: int) -> None:
    """Rotate the residual stream by ``Q`` and keep its first ``new_hidden`` directions.

    Expects folded norms (:func:`fold_norms`). ``new_hidden == hidden`` rotates only.
    """
    parts = llava_parts(model)
    hidden = parts["embed"].weight.shape[1]
    qk = q[:, :new_hidden]
    readers, writers = _readers_writers(parts)
    for lin in readers:
        rotate_reader(lin, qk)
    for lin in writers:
        rotate_writer(lin, qk)
    rotate_embedding(parts["embed"], qk)
    for norm in [parts["norm"], *(n for layer in parts["layers"]
                                  for n in (layer.input_layernorm, layer.post_attention_layernorm))]:
        resize_norm(norm, new_hidden, hidden)
    keep_head_dim(model, hidden)
