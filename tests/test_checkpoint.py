"""Pruned checkpoints: round trip, dtype and tying, the on-disk format, sharding, and bad checkpoints."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from hipp_torchprune import api
from hipp_torchprune.checkpoint import PRUNING_FILE, load_pruned, save_pruned
from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.loading import load_model, load_processor
from hipp_torchprune.models.tiny import build_tiny
from tests.conftest import PROMPTS, images


def _pruned(model):
    plan = api.make_plan(model, "random", 0.4, round_to=16, seed=2)
    api.prune_model(model, plan, api.importance("magnitude", model))
    return plan


def test_round_trip_gives_equal_logits(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    plan = _pruned(model)
    adapter = api.get_adapter(model)
    batch = adapter.encode(processor, images(2), PROMPTS[:2])
    with torch.no_grad():
        ref = model(**batch).logits
    save_pruned(model, tmp_path / "ck", processor, plan=plan.to_dict())
    loaded, proc2 = load_model(tmp_path / "ck")
    assert api.get_adapter(loaded).intermediate_widths() == list(plan.widths_after)
    batch2 = api.get_adapter(loaded).encode(proc2, images(2), PROMPTS[:2])
    assert all(torch.equal(batch[k], batch2[k]) for k in batch)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch2).logits, ref, atol=1e-6)
    meta = json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())
    assert meta["intermediate_sizes"] == list(plan.widths_after)


def test_dense_hf_directory_loads(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    loaded = load_pruned(tmp_path / "hf")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert load_processor(tmp_path / "hf") is not None


def test_weights_not_matching_widths_are_refused(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    _pruned(model)
    save_pruned(model, tmp_path / "ck", processor)
    meta_path = tmp_path / "ck" / PRUNING_FILE
    meta = json.loads(meta_path.read_text())
    meta["intermediate_sizes"][0] += 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_pruned(tmp_path / "ck")


def test_missing_tensor_is_refused(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    save_pruned(model, tmp_path / "ck", processor)
    weights = tmp_path / "ck" / "model.safetensors"
    state = load_file(weights)
    state.pop(next(k for k in state if "down_proj" in k))
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="missing"):
        load_pruned(tmp_path / "ck")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_not_a_checkpoint(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x"
    if make == "empty":
        path.mkdir()
    with pytest.raises(CheckpointError):
        load_model(path)


def test_failed_save_leaves_nothing(tiny, tmp_path: Path) -> None:
    _, model, _ = tiny

    class Broken:
        def save_pretrained(self, directory: str) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, tmp_path / "ck", Broken())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_keeps_old_checkpoint_when_swap_fails(tiny, tmp_path: Path, monkeypatch) -> None:
    import os

    from hipp_torchprune import atomic

    _, model, processor = tiny
    save_pruned(model, tmp_path / "ck", processor, plan={"version": 1})
    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the new directory's move into place
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="killed"):
        save_pruned(model, tmp_path / "ck", processor, plan={"version": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())["plan"] == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def _narrow_projector(model: torch.nn.Module, inner: int) -> None:
    """Give LLaVA's projector a hidden width the config cannot express (a non-MLP shape change)."""
    proj = model.model.multi_modal_projector
    torch.manual_seed(0)
    proj.linear_1 = torch.nn.Linear(proj.linear_1.in_features, inner)
    proj.linear_2 = torch.nn.Linear(inner, proj.linear_2.out_features)


def test_reshaped_parameters_are_recorded_and_rebuilt(tmp_path: Path) -> None:
    from hipp_torchprune.checkpoint import RESHAPED_KEY
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava")
    _pruned(model)
    _narrow_projector(model, 24)
    batch = api.get_adapter(model).encode(processor, images(2), PROMPTS[:2])
    save_pruned(model, tmp_path / "ck", processor)
    meta = json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())
    proj = "model.multi_modal_projector"
    assert meta[RESHAPED_KEY] == {f"{proj}.linear_1.weight": [24, model.config.vision_config.hidden_size],
                                  f"{proj}.linear_1.bias": [24], f"{proj}.linear_2.weight": [64, 24]}
    loaded = load_pruned(tmp_path / "ck")
    assert loaded.model.multi_modal_projector.linear_2.in_features == 24
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_plain_pruned_checkpoint_records_no_reshape(tiny, tmp_path: Path) -> None:
    from hipp_torchprune.checkpoint import RESHAPED_KEY

    _, model, processor = tiny
    _pruned(model)
    save_pruned(model, tmp_path / "ck", processor)
    assert json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())[RESHAPED_KEY] == {}


def test_config_transformers_cannot_read_is_refused_and_nothing_written(tmp_path: Path) -> None:
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava")
    model.config.text_config.hidden_size = 50  # not a multiple of the 4 heads: LlamaConfig refuses it on load
    with pytest.raises(CheckpointError, match="cannot be read back by transformers"):
        save_pruned(model, tmp_path / "ck", processor)
    assert list(tmp_path.iterdir()) == []


def test_reshape_of_unknown_parameter_is_refused(tmp_path: Path) -> None:
    from hipp_torchprune.checkpoint import RESHAPED_KEY
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava")
    save_pruned(model, tmp_path / "ck", processor)
    meta_path = tmp_path / "ck" / PRUNING_FILE
    meta = json.loads(meta_path.read_text())
    meta[RESHAPED_KEY] = {"model.nowhere.weight": [3, 3]}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="reshapes 'model.nowhere.weight', which the model does not have"):
        load_pruned(tmp_path / "ck")


# ---------------------------------------------------------------- dtype, tying, exactness


def _as_loaded_in_bf16(model, tmp_path: Path):
    """``model`` as transformers itself loads it in bf16 (``from_pretrained(dtype=bfloat16)``):
    bf16 weights, fp32 rotary ``inv_freq``."""
    model.save_pretrained(tmp_path / "hf-dense")
    loaded = type(model).from_pretrained(tmp_path / "hf-dense", dtype=torch.bfloat16).eval()
    assert loaded.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    return loaded


def _logits(model, processor, n: int = 2) -> torch.Tensor:
    adapter = api.get_adapter(model)
    with torch.no_grad():
        return model(**adapter.encode(processor, images(n), PROMPTS[:n])).logits


def test_bf16_round_trip_reproduces_logits_exactly(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    model = _as_loaded_in_bf16(model, tmp_path)
    _pruned(model)
    ref = _logits(model, processor)
    save_pruned(model, tmp_path / "ck", processor)
    loaded = load_pruned(tmp_path / "ck")
    assert loaded.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.equal(_logits(loaded, processor), ref)


def test_tiny_qwen_ties_embeddings_like_the_3b() -> None:
    model, _ = build_tiny("tiny-qwen2_5_vl")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_tied_checkpoint_reloads_tied(tmp_path: Path) -> None:
    model, processor = build_tiny("tiny-qwen2_5_vl")
    _pruned(model)
    ref = _logits(model, processor)
    save_pruned(model, tmp_path / "ck", processor)
    stored = load_file(tmp_path / "ck" / "model.safetensors")
    assert "lm_head.weight" not in stored and "model.language_model.embed_tokens.weight" in stored
    loaded = load_pruned(tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert torch.equal(_logits(loaded, processor), ref)


def test_checkpoint_keeps_dtype_and_config_tells_the_truth(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    model = _as_loaded_in_bf16(model, tmp_path)
    dense_dir = save_pruned(model, tmp_path / "dense", processor)
    plan = _pruned(model)
    save_pruned(model, tmp_path / "ck", processor)
    stored = load_file(tmp_path / "ck" / "model.safetensors")
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.bfloat16}
    size = (tmp_path / "ck" / "model.safetensors").stat().st_size
    assert size < (dense_dir / "model.safetensors").stat().st_size
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert config["text_config"]["intermediate_size"] == max(plan.widths_after) < plan.widths_before[0]
    assert config["text_config"]["hipp_intermediate_sizes"] == list(plan.widths_after)
    assert model.config.text_config.intermediate_size == plan.widths_before[0]  # the live config is untouched


def test_uniform_widths_make_a_plain_transformers_checkpoint(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    plan = api.make_plan(model, "uniform", 0.25, round_to=16)
    api.prune_model(model, plan, api.importance("magnitude", model))
    save_pruned(model, tmp_path / "ck", processor)
    assert "hipp_intermediate_sizes" not in json.loads((tmp_path / "ck" / "config.json").read_text())["text_config"]
    plain = type(model).from_pretrained(tmp_path / "ck").eval()
    assert torch.equal(_logits(plain, processor), _logits(model, processor))


def test_previous_format_still_loads(tiny, tmp_path: Path) -> None:
    """``hipp-torchprune/1``: fp32 weights under a config that says bf16, the dense intermediate_size."""
    _, model, processor = tiny
    plan = _pruned(model)
    ref = _logits(model, processor)
    old = tmp_path / "v1"
    old.mkdir()
    save_model(model, str(old / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(old)
    processor.save_pretrained(old)
    (old / PRUNING_FILE).write_text(json.dumps({"format": "hipp-torchprune/1", "architecture": type(model).__name__,
                                                "intermediate_sizes": list(plan.widths_after), "plan": {}}))
    loaded = load_pruned(old)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(_logits(loaded, processor), ref)


def test_unknown_format_is_refused(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    save_pruned(model, tmp_path / "ck", processor)
    meta_path = tmp_path / "ck" / PRUNING_FILE
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format": "hipp-torchprune/99"}))
    with pytest.raises(CheckpointError, match="hipp-torchprune/99"):
        load_pruned(tmp_path / "ck")


def test_load_pruned_spends_no_time_on_random_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every weight comes from the files; at 7B, initializing the resized MLPs alone takes over a minute."""
    model, processor = build_tiny("tiny-llava")
    _pruned(model)
    save_pruned(model, tmp_path / "ck", processor)

    def no_init(*args, **kwargs):
        raise AssertionError("random init during load_pruned")

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", no_init)
    monkeypatch.setattr(torch.nn.init, "normal_", no_init)
    load_pruned(tmp_path / "ck")


def test_load_pruned_converts_to_a_requested_dtype(tmp_path: Path) -> None:
    model, processor = build_tiny("tiny-llava")
    _pruned(model)
    save_pruned(model, tmp_path / "ck", processor)
    loaded = load_pruned(tmp_path / "ck", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.model.language_model.rotary_emb.inv_freq.dtype == torch.float32


# ---------------------------------------------------------------- sharding and permissions


def test_large_weights_are_sharded_like_transformers(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    _pruned(model)
    ref = _logits(model, processor)
    limit = 200_000
    save_pruned(model, tmp_path / "ck", processor, max_shard_size=limit)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "ck" / "model.safetensors").exists()
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    stored: dict[str, torch.Tensor] = {}
    for name in shards:
        part = load_file(tmp_path / "ck" / name)
        assert sum(t.numel() * t.element_size() for t in part.values()) <= limit or len(part) == 1
        assert all(index["weight_map"][k] == name for k in part)
        stored.update(part)
    assert set(stored) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert torch.equal(_logits(load_pruned(tmp_path / "ck"), processor), ref)


def test_sharded_dense_checkpoint_loads_in_transformers(tiny, tmp_path: Path) -> None:
    _, model, processor = tiny
    save_pruned(model, tmp_path / "ck", processor, max_shard_size="100KB")
    assert (tmp_path / "ck" / "model.safetensors.index.json").exists()
    plain = type(model).from_pretrained(tmp_path / "ck").eval()
    assert torch.equal(_logits(plain, processor), _logits(model, processor))


def test_missing_shard_is_refused(tmp_path: Path) -> None:
    model, processor = build_tiny("tiny-llava")
    save_pruned(model, tmp_path / "ck", processor, max_shard_size="100KB")
    (tmp_path / "ck" / "model-00002-of-{:05d}.safetensors".format(
        len(set(json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())["weight_map"].values())))
     ).unlink()
    with pytest.raises(CheckpointError, match="lacks shard"):
        load_pruned(tmp_path / "ck")


@pytest.mark.parametrize("size", ["lots", 0, "-5GB"])
def test_bad_max_shard_size_writes_nothing(tmp_path: Path, size: object) -> None:
    model, processor = build_tiny("tiny-llava")
    with pytest.raises(CheckpointError, match="max_shard_size"):
        save_pruned(model, tmp_path / "ck", processor, max_shard_size=size)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_directory_has_ordinary_permissions(tmp_path: Path) -> None:
    model, processor = build_tiny("tiny-llava")
    old = os.umask(0o027)
    try:
        save_pruned(model, tmp_path / "ck", processor, max_shard_size="100KB")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ck").stat().st_mode) == 0o750
    files = list((tmp_path / "ck").iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o640}


# ---------------------------------------------------------------- extension: reshapers


def _o_proj_with_bias(model, layers: list[int]) -> None:
    for i in layers:
        attn = api.get_adapter(model).decoder_layers()[i].self_attn
        old = attn.o_proj
        attn.o_proj = torch.nn.Linear(old.in_features, old.out_features, bias=True, dtype=old.weight.dtype)


def test_recorded_reshape_is_applied_on_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hipp_torchprune import checkpoint

    model, processor = build_tiny("tiny-llava")
    _o_proj_with_bias(model, [1])
    torch.nn.init.normal_(api.get_adapter(model).decoder_layers()[1].self_attn.o_proj.bias)
    ref = _logits(model, processor)
    save_pruned(model, tmp_path / "ck", processor, reshape={"o-proj-bias": [1]})
    with pytest.raises(CheckpointError, match="o-proj-bias"):
        load_pruned(tmp_path / "ck")
    monkeypatch.setitem(checkpoint.RESHAPERS, "o-proj-bias", _o_proj_with_bias)
    assert torch.equal(_logits(load_pruned(tmp_path / "ck"), processor), ref)



def _add_extra(model, payload: list[int]) -> None:
    """A reshaper: a bias-free ``nn.Linear`` ``extra`` (payload ``[out, in]``) on layer 0's MLP."""
    mlp = api.get_adapter(model).decoder_layers()[0].mlp
    like = mlp.up_proj.weight
    mlp.extra = torch.nn.Linear(payload[1], payload[0], bias=False, dtype=like.dtype, device=like.device)


def _detect_extra(model) -> list[int] | None:
    extra = getattr(api.get_adapter(model).decoder_layers()[0].mlp, "extra", None)
    return list(extra.weight.shape) if extra is not None else None


def test_detected_reshape_is_recorded_and_its_parameters_rebuilt(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from hipp_torchprune import checkpoint

    model, processor = build_tiny("tiny-llava")
    _add_extra(model, [3, 5])
    extra = api.get_adapter(model).decoder_layers()[0].mlp.extra.weight
    monkeypatch.setitem(checkpoint.RESHAPERS, "extra", _add_extra)
    monkeypatch.setitem(checkpoint.RESHAPE_DETECTORS, "extra", _detect_extra)
    save_pruned(model, tmp_path / "ck", processor)  # no reshape= given: the detector finds it
    meta = json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())
    assert meta["reshape"] == {"extra": [3, 5]} and meta["added_parameters"] == {}
    loaded = load_pruned(tmp_path / "ck")
    assert torch.equal(api.get_adapter(loaded).decoder_layers()[0].mlp.extra.weight, extra)
    assert torch.equal(_logits(loaded, processor), _logits(model, processor))


def test_reshape_that_builds_other_shapes_is_refused_before_writing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from hipp_torchprune import checkpoint

    model, processor = build_tiny("tiny-llava")
    _add_extra(model, [3, 5])
    monkeypatch.setitem(checkpoint.RESHAPERS, "extra", _add_extra)
    with pytest.raises(CheckpointError, match="other shapes"):
        save_pruned(model, tmp_path / "ck", processor, reshape={"extra": [5, 3]})
    assert not (tmp_path / "ck").exists()


def test_load_finds_a_reshaper_its_plugin_registers_with_its_methods(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from hipp_torchprune import checkpoint
    from hipp_torchprune.hookspecs import hookimpl
    from hipp_torchprune.registry import Registry, make_plugin_manager

    model, processor = build_tiny("tiny-llava")
    _add_extra(model, [3, 5])
    monkeypatch.setitem(checkpoint.RESHAPERS, "extra", _add_extra)
    save_pruned(model, tmp_path / "ck", processor, reshape={"extra": [3, 5]})
    del checkpoint.RESHAPERS["extra"]

    class Plugin:
        @hookimpl
        def hipp_pruning_methods(self) -> list[type]:
            checkpoint.register_reshaper("extra", _add_extra)
            return []

    reg = Registry(make_plugin_manager(autoload=False))
    with pytest.raises(CheckpointError, match="extra"):
        load_pruned(tmp_path / "ck", registry=reg)
    reg.pm.register(Plugin())
    assert torch.equal(_logits(load_pruned(tmp_path / "ck", registry=reg), processor), _logits(model, processor))

def test_added_bias_is_recorded_and_rebuilt(tiny, tmp_path: Path) -> None:
    """A down_proj bias the config does not build (FLAP's compensation) is saved and reloaded."""
    from hipp_torchprune.checkpoint import ADDED_KEY

    _, model, processor = tiny
    _pruned(model)
    down = api.get_adapter(model).mlp(1).down
    down.bias = torch.nn.Parameter(torch.linspace(-1, 1, down.out_features))
    name = next(n for n, m in model.named_modules() if m is down) + ".bias"
    batch = api.get_adapter(model).encode(processor, images(2), PROMPTS[:2])
    save_pruned(model, tmp_path / "ck", processor)
    assert json.loads((tmp_path / "ck" / PRUNING_FILE).read_text())[ADDED_KEY] == {name: [down.out_features]}
    loaded = load_pruned(tmp_path / "ck")
    assert torch.equal(dict(loaded.named_parameters())[name], down.bias)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


@pytest.mark.parametrize(("name", "shape"), [("model.language_model.norm.bias", [64]),
                                             ("model.language_model.layers.0.mlp.down_proj.bias", [3]),
                                             ("model.nowhere.bias", [64])])
def test_added_parameter_other_than_a_linear_bias_is_refused(name: str, shape: list[int], tmp_path: Path) -> None:
    from hipp_torchprune.checkpoint import ADDED_KEY
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava")
    save_pruned(model, tmp_path / "ck", processor)
    meta_path = tmp_path / "ck" / PRUNING_FILE
    meta = json.loads(meta_path.read_text())
    meta[ADDED_KEY] = {name: shape}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="only a missing nn.Linear bias of its output width can be added"):
        load_pruned(tmp_path / "ck")
