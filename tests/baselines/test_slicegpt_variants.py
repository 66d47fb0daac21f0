"""SliceGPT's per-block variant (``hipp_baselines.slicegpt_blocks``) and the ``slicegpt_variant`` option."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.errors import CalibrationError, HippError
from hipp_torchprune.methods import MethodContext, mlp_param_total
from hipp_torchprune.models.tiny import build_tiny
from tests.conftest import samples

pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
from hipp_baselines import slicegpt as sg
from hipp_baselines import slicegpt_blocks as sb
from hipp_baselines.slicegpt_method import SliceGPTMethod, SliceGPTOptionError


def _model() -> tuple[torch.nn.Module, object]:
    model, processor = build_tiny("tiny-llava", seed=0)
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial norm weights, so folding is exercised
        for name, p in model.named_parameters():
            if "language_model" in name and "norm" in name:
                p.uniform_(0.5, 1.5)
    return model, processor


def _inputs(model: torch.nn.Module, processor: object) -> dict:
    s = samples(3, seed=5)
    return api.get_adapter(model).encode(processor, [x[0] for x in s], [x[1] for x in s])


def _sliced(model: torch.nn.Module, processor: object, kept: int) -> torch.nn.Module:
    out = copy.deepcopy(model)
    sb.install_shortcuts(out)
    sg.fold_norms(out)
    sb.slice_per_block(out, processor, samples(4), kept)
    return out


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_per_block_at_zero_cut_reproduces_dense_logits() -> None:
    model, processor = _model()
    batch = _inputs(model, processor)
    rotated = _sliced(model, processor, 64)
    layer = rotated.model.language_model.layers[1]
    assert isinstance(layer, sb.ShortcutLlamaDecoderLayer)
    s = layer.attn_shortcut.weight.double()  # Q_j^T Q_{j+1} unsliced: orthogonal, and not the identity
    eye = torch.eye(64, dtype=s.dtype)
    assert torch.allclose(s @ s.T, eye, atol=1e-5) and not torch.allclose(s, eye)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, rotated(**batch).logits, atol=1e-4)
    assert _count(model) - _count(rotated) == sb.per_block_removed_params(model, 0) == -2 * 4 * 64 * 64


@pytest.mark.parametrize("cut", [4, 20])
def test_per_block_shapes_and_parameter_count_match_the_conversion(cut: int) -> None:
    model, processor = _model()
    kept = 64 - cut
    sliced = _sliced(model, processor, kept)
    assert _count(model) - _count(sliced) == sb.per_block_removed_params(model, cut)
    lm = sliced.model.language_model
    assert lm.embed_tokens.weight.shape[1] == kept and sliced.model.multi_modal_projector.linear_2.out_features == kept
    assert sliced.lm_head.weight.shape == model.lm_head.weight.shape and lm.norm.weight.shape == (64,)  # head unsliced
    for i, layer in enumerate(lm.layers):
        last = i == len(lm.layers) - 1
        assert layer.self_attn.q_proj.in_features == layer.mlp.gate_proj.in_features == kept
        assert layer.attn_shortcut.weight.shape == (kept, kept) and layer.self_attn.o_proj.out_features == kept
        assert layer.mlp_shortcut.weight.shape == ((64 if last else kept), kept)
        assert layer.mlp.down_proj.out_features == (64 if last else kept)
    with torch.no_grad():
        logits = sliced(**_inputs(model, processor)).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.lm_head.out_features


def test_per_block_removed_params_by_hand() -> None:
    model, _ = _model()
    p_dim = sg.params_per_hidden_dim(model)
    p_blk = p_dim - model.lm_head.out_features - 256 - 1  # head, last down_proj's 256 inputs, final norm
    assert sb.per_block_removed_params(model, 10) == 10 * p_blk - (7 * 54 * 54 + 54 * 64)
    with pytest.raises(ValueError, match="outside"):
        sb.per_block_removed_params(model, 64)


def test_method_per_block_matches_the_budget_and_keeps_fewer_dims_than_global() -> None:
    model, processor = _model()
    total = mlp_param_total(model)
    reports = {}
    for variant in ("global", "per-block"):
        sliced = copy.deepcopy(model)
        ctx = MethodContext(processor, samples(4), None, options={"slicegpt_variant": variant})
        reports[variant] = SliceGPTMethod().prune(sliced, 0.5, ctx)
        assert _count(model) - _count(sliced) == reports[variant].details["removed_params"]
        assert reports[variant].details["variant"] == variant
    pb = reports["per-block"]
    cut = 64 - pb.details["hidden_after"]
    step = sb.per_block_removed_params(model, cut) - sb.per_block_removed_params(model, cut - 1)
    assert abs(pb.realized_sparsity - 0.5) * total <= step  # within one dimension's step of the budget
    assert pb.details["hidden_after"] < reports["global"].details["hidden_after"]
    assert pb.details["shortcut_params"] == sb.shortcut_param_count(4, 64, pb.details["hidden_after"])


@pytest.mark.parametrize("options", [{"slicegpt_variant": "per-layer"}, {"slicegpt_multiple": 0},
                                     {"slicegpt_multiple": 2.5}])
def test_bad_options_are_refused_before_the_model_is_touched(options: dict) -> None:
    model, processor = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SliceGPTOptionError) as err:
        SliceGPTMethod().prune(model, 0.3, MethodContext(processor, samples(2), None, options=options))
    assert isinstance(err.value, HippError)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_per_block_refuses_no_samples_and_qwen_untouched() -> None:
    model, processor = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CalibrationError):
        SliceGPTMethod().prune(model, 0.3, MethodContext(processor, [], None,
                                                         options={"slicegpt_variant": "per-block"}))
    assert type(model.model.language_model.layers[0]).__name__ == "LlamaDecoderLayer"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    qwen, qproc = build_tiny("tiny-qwen2_5_vl", seed=0)
    with pytest.raises(sg.SliceGPTUnsupportedError):
        SliceGPTMethod().prune(qwen, 0.3, MethodContext(qproc, samples(2), None,
                                                         options={"slicegpt_variant": "per-block"}))
    with pytest.raises(sg.SliceGPTUnsupportedError, match="LLaVA only"):
        sb.install_shortcuts(qwen)


def test_default_variant_is_per_block_and_its_checkpoint_reloads(tmp_path) -> None:
    from hipp_torchprune.checkpoint import PRUNING_FILE, load_pruned, save_pruned

    model, processor = _model()
    batch = _inputs(model, processor)
    report = SliceGPTMethod().prune(model, 0.3, MethodContext(processor, samples(4), None))
    assert report.details["variant"] == "per-block"
    save_pruned(model, tmp_path / "ck", processor)
    meta = json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())
    kept = report.details["hidden_after"]
    assert meta["reshape"] == {sb.RESHAPER: [[kept] * 4] * 3 + [[kept, kept, 64, kept]]}
    assert meta["added_parameters"] == {}  # the shortcuts are rebuilt by the reshaper, not "added"
    loaded = load_pruned(tmp_path / "ck")
    assert all(isinstance(layer, sb.ShortcutLlamaDecoderLayer) for layer in loaded.model.language_model.layers)
    assert {n: p.shape for n, p in loaded.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_rebuild_shortcuts_refuses_a_payload_that_does_not_fit() -> None:
    from hipp_torchprune.errors import CheckpointError

    model, _ = _model()
    assert sb.shortcut_shapes(model) is None  # a dense model needs no reshaper
    with pytest.raises(CheckpointError, match="one per layer"):
        sb.rebuild_shortcuts(model, [[60, 60, 60, 60]] * 3)
    with pytest.raises(CheckpointError, match="one per layer"):
        sb.rebuild_shortcuts(model, [[60, 60]] * 4)
    assert type(model.model.language_model.layers[0]).__name__ == "LlamaDecoderLayer"
