"""Model adapters on every tiny family: layout, vision positions, prompting."""

from __future__ import annotations

import torch

from hipp_torchprune import api
from tests.conftest import PROMPTS, images


def test_adapter_finds_language_model_mlps(tiny) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    lm = model.model.language_model
    assert adapter.language_model() is lm
    assert len(adapter.decoder_layers()) == len(lm.layers) == 4
    for layer, mlp in zip(lm.layers, adapter.mlps()):
        assert mlp.gate is layer.mlp.gate_proj and mlp.up is layer.mlp.up_proj and mlp.down is layer.mlp.down_proj
    vision_ids = {id(m) for m in adapter.vision_module().modules()}
    assert not any(id(p) in vision_ids for m in adapter.mlps() for p in (m.gate, m.up, m.down))


def test_vision_positions_match_image_tokens(tiny) -> None:
    name, model, processor = tiny
    adapter = api.get_adapter(model)
    batch = adapter.encode(processor, images(2), PROMPTS[:2])
    positions = adapter.vision_positions(batch["input_ids"])
    expected = 16 if name == "tiny-llava" else 4  # 32px/patch 8; 56px/patch 14 merged 2x2
    assert positions.sum(1).tolist() == [expected, expected]
    with torch.no_grad():
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_chat_template_and_answers(tiny) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    plain = adapter.encode(processor, images(1), PROMPTS[:1])
    answered = adapter.encode(processor, images(1), PROMPTS[:1], answers=[" Yes"])
    assert answered["input_ids"].shape[1] == plain["input_ids"].shape[1] + 1
