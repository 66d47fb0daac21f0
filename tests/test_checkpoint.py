"""Pruned checkpoints: round trip, dense HF directories, and bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hipp_torchprune import api
from hipp_torchprune.checkpoint import PRUNING_FILE, load_pruned, save_pruned
from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.loading import load_model, load_processor
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

    from hipp_torchprune import checkpoint

    _, model, processor = tiny
    save_pruned(model, tmp_path / "ck", processor, plan={"version": 1})
    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the new directory's move into place
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", flaky)
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
