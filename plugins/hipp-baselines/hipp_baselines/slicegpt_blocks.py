"""SliceGPT's per-block variant (the reference's): one PCA basis per residual-stream site, shortcuts.

The residual stream has ``2L + 1`` sites: the input of layer ``l``'s attention (site ``2l``), the
input of its MLP (site ``2l + 1``) and the final norm's input (site ``2L``). Sublayer ``j``
(attention for even ``j``, MLP for odd) reads site ``j`` and writes site ``j + 1``. Each site
``j < 2L`` gets its own orthonormal basis ``Q_j`` (``d x d'``, the leading principal directions
of the stream there); site ``2L`` keeps the full width in the original basis (``lm_head``
unsliced, the reference's default). Then

* the embedding rows and the projector's last linear write site 0 in ``Q_0`` (image tokens enter
  the stream through the projector);
* sublayer ``j``'s readers (q/k/v or gate/up) read ``x Q_j``; its writer (o_proj or down_proj)
  writes ``Q_{j+1}^T``-rotated outputs;
* the residual connection around sublayer ``j`` goes through the shortcut ``S_j = Q_j^T Q_{j+1}``
  (``d' x d'``; ``d' x d`` for the last one), a bias-free linear in the decoder layer
  (:class:`ShortcutLlamaDecoderLayer`);
* each sliced RMSNorm gets weight ``sqrt(d / d')`` (as in the global variant).

**Sequential PCA.** ``Q_{j+1}`` is computed after sublayers ``0..j`` are already rotated and
sliced: the stream at site ``j + 1`` is measured in the original basis (sublayer ``j``'s writer
not yet rotated, its shortcut ``Q_j^T``) so the PCA sees the error the earlier slices introduce
(the reference's ``rotate_and_slice_sequential``). Each site costs one forward pass over the
calibration prompts, stopped at the site.

**Parameters.** At a cut of ``k`` dimensions (``d' = d - k``) this variant removes
``k * P_blk - ((2L - 1) d'^2 + d' d)``: ``P_blk`` is the global variant's ``P_dim`` without the
``lm_head`` columns, the last ``down_proj``'s rows and the final norm (all unsliced here), and the
shortcuts add ``2L`` matrices (:func:`per_block_removed_params`). At 0 cut it *adds* ``2L d^2``
parameters and reproduces the dense model's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from hipp_baselines.slicegpt import (
    SliceGPTUnsupportedError,
    keep_head_dim,
    llava_parts,
    params_per_hidden_dim,
    pca_basis,
    resize_norm,
    rotate_embedding,
    rotate_reader,
    rotate_writer,
    set_linear,
    stream_covariance,
)
from hipp_torchprune.checkpoint import register_reshaper
from hipp_torchprune.errors import CalibrationError, CheckpointError

#: The checkpoint reshaper that rebuilds the shortcuts (:func:`shortcut_shapes`, :func:`rebuild_shortcuts`).
RESHAPER = "slicegpt-shortcuts"


class ShortcutLlamaDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer whose two residual connections go through linear shortcuts
    (``attn_shortcut``, ``mlp_shortcut``: bias-free ``nn.Linear``), so that the stream may change
    basis and width across the layer. Made from a :class:`LlamaDecoderLayer` by
    :func:`install_shortcuts`; still an instance of it (transformers records its outputs)."""

    attn_shortcut: nn.Linear
    mlp_shortcut: nn.Linear

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Any = None,
                use_cache: bool | None = False, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Any) -> torch.Tensor:
        """``LlamaDecoderLayer.forward`` with ``x + f(x)`` replaced by ``shortcut(x) + f(x)``."""
        attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                 position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                 position_embeddings=position_embeddings, **kwargs)
        hidden_states = self.attn_shortcut(hidden_states) + attn
        return self.mlp_shortcut(hidden_states) + self.mlp(self.post_attention_layernorm(hidden_states))


def _shortcut(shape: Sequence[int], like: torch.Tensor, identity: bool) -> nn.Linear:
    """A bias-free ``out x in`` linear in ``like``'s dtype and device (the identity, or uninitialized)."""
    out_f, in_f = (int(n) for n in shape)
    lin = nn.Linear(in_f, out_f, bias=False, dtype=like.dtype, device=like.device)
    if identity:
        with torch.no_grad():
            lin.weight.copy_(torch.eye(out_f, in_f, dtype=like.dtype, device=like.device))
    return lin


def _llama_layers(model: nn.Module) -> list[nn.Module]:
    layers = llava_parts(model)["layers"]
    wrong = sorted({type(layer).__name__ for layer in layers} - {"LlamaDecoderLayer", "ShortcutLlamaDecoderLayer"})
    if wrong:
        raise SliceGPTUnsupportedError(f"slicegpt's per-block variant needs Llama decoder layers, not {wrong}; "
                                       "the model was not changed")
    return layers


def _install(layer: nn.Module, attn: nn.Linear, mlp: nn.Linear) -> None:
    layer.attn_shortcut, layer.mlp_shortcut = attn, mlp
    layer.__class__ = ShortcutLlamaDecoderLayer


def install_shortcuts(model: nn.Module) -> None:
    """Turn every decoder layer of a LLaVA (Llama LM) into a :class:`ShortcutLlamaDecoderLayer`
    with identity shortcuts (the model computes the same logits). Checks every layer first."""
    for layer in _llama_layers(model):
        if not isinstance(layer, ShortcutLlamaDecoderLayer):
            like = layer.input_layernorm.weight
            square = (like.shape[0], like.shape[0])
            _install(layer, _shortcut(square, like, True), _shortcut(square, like, True))


def shortcut_shapes(model: nn.Module) -> list[list[int]] | None:
    """The checkpoint payload of a model with shortcuts: per layer ``[attn_out, attn_in, mlp_out,
    mlp_in]``; None for a model without (the detector of :data:`RESHAPER`)."""
    layers = getattr(getattr(getattr(model, "model", None), "language_model", None), "layers", None)
    if layers is None or not any(isinstance(layer, ShortcutLlamaDecoderLayer) for layer in layers):
        return None
    return [[*layer.attn_shortcut.weight.shape, *layer.mlp_shortcut.weight.shape] for layer in layers]


def rebuild_shortcuts(model: nn.Module, payload: list[list[int]]) -> None:
    """Give a freshly built LLaVA the shortcuts of :func:`shortcut_shapes`'s payload (uninitialized:
    the checkpoint's weights fill them). :class:`CheckpointError` when the payload does not fit."""
    layers = _llama_layers(model)
    if len(payload) != len(layers) or any(len(shapes) != 4 for shapes in payload):
        raise CheckpointError(f"{RESHAPER}: {len(payload)} entries of 4 shapes expected one per layer "
                              f"({len(layers)} layers)")
    for layer, shapes in zip(layers, payload, strict=True):
        like = layer.input_layernorm.weight
        _install(layer, _shortcut(shapes[:2], like, False), _shortcut(shapes[2:], like, False))


register_reshaper(RESHAPER, rebuild_shortcuts, detect=shortcut_shapes)


def shortcut_param_count(n_layers: int, hidden: int, kept: int) -> int:
    """Parameters of the ``2 * n_layers`` shortcuts at kept width ``kept``: ``kept x kept`` each,
    the last ``kept x hidden`` (it feeds the unsliced head)."""
    return (2 * n_layers - 1) * kept * kept + kept * hidden


def per_block_removed_params(model: nn.Module, k: int) -> int:
    """Parameters the per-block variant removes at a cut of ``k`` dims, shortcuts counted (module docstring)."""
    parts = llava_parts(model)
    hidden, n_layers = parts["embed"].weight.shape[1], len(parts["layers"])
    if not 0 <= k < hidden:
        raise ValueError(f"cut {k} outside [0, {hidden})")
    last_down = parts["layers"][-1].mlp.down_proj
    unsliced = parts["lm_head"].out_features + last_down.in_features + (last_down.bias is not None) + 1
    return k * (params_per_hidden_dim(model) - unsliced) - shortcut_param_count(n_layers, hidden, hidden - k)


def _sites(parts: dict[str, Any]) -> list[nn.Module]:
    """The norm that reads each site: ``input_layernorm``/``post_attention_layernorm`` per layer, final norm."""
    return [*(n for layer in parts["layers"] for n in (layer.input_layernorm, layer.post_attention_layernorm)),
            parts["norm"]]


def _sublayer(parts: dict[str, Any], j: int) -> tuple[list[nn.Linear], nn.Linear, nn.Linear]:
    """Sublayer ``j``'s stream readers, its stream writer and its shortcut."""
    layer = parts["layers"][j // 2]
    if j % 2 == 0:
        a = layer.self_attn
        return [a.q_proj, a.k_proj, a.v_proj], a.o_proj, layer.attn_shortcut
    m = layer.mlp
    return [m.gate_proj, m.up_proj], m.down_proj, layer.mlp_shortcut


def _site_basis(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, ...]], site: nn.Module,
                width: int) -> torch.Tensor:
    """The leading ``width`` principal directions (``d x width``, float64) of the stream entering ``site``."""
    return pca_basis(stream_covariance(model, processor, samples, [site], stop_after=True))[:, :width]


@torch.no_grad()
def slice_per_block(model: nn.Module, processor: Any, samples: Sequence[tuple[Any, ...]], new_hidden: int) -> None:
    """Rotate and slice every site of the stream to ``new_hidden`` dims with its own sequential PCA
    basis, shortcuts in the residual connections, ``lm_head`` unsliced (module docstring).

    Expects folded norms (:func:`~hipp_baselines.slicegpt.fold_norms`) and installed shortcuts
    (:func:`install_shortcuts`). ``new_hidden == hidden`` rotates only.
    """
    parts = llava_parts(model)
    hidden = parts["embed"].weight.shape[1]
    if not samples:
        raise CalibrationError("slicegpt needs calibration samples for its PCA")
    sites, n_sub = _sites(parts), 2 * len(parts["layers"])
    q = _site_basis(model, processor, samples, sites[0], new_hidden)
    rotate_embedding(parts["embed"], q)
    rotate_writer(parts["proj_out"], q)
    for j in range(n_sub):
        readers, writer, shortcut = _sublayer(parts, j)
        for lin in readers:
            rotate_reader(lin, q)
        resize_norm(sites[j], new_hidden, hidden)
        set_linear(shortcut, q, None)  # x_j Q_j^T: site j+1 back in the original basis, measured next
        q_next = (_site_basis(model, processor, samples, sites[j + 1], new_hidden) if j + 1 < n_sub
                  else torch.eye(hidden, dtype=torch.float64))
        rotate_writer(writer, q_next)
        set_linear(shortcut, (q.T @ q_next).T, None)  # weight of x -> x Q_j^T Q_{j+1}
        q = q_next
    keep_head_dim(model, hidden)
