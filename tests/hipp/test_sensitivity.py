"""Visual sensitivity: hand-built attention, and a model whose attention is known by construction."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.hipp import sensitivity
from hipp_torchprune.hipp.sensitivity import attention_mass_to_vision, eager_attention, visual_sensitivity
from hipp_torchprune.models.tiny import build_tiny
from tests.conftest import PROMPTS, images


def test_attention_mass_by_hand() -> None:
    attn = torch.zeros(1, 2, 4, 4)
    # positions 0,1 are vision; 2,3 text. head 0: token 2 puts 0.6 on vision, token 3 puts 0.2
    attn[0, 0, 2] = torch.tensor([0.5, 0.1, 0.4, 0.0])
    attn[0, 0, 3] = torch.tensor([0.1, 0.1, 0.4, 0.4])
    attn[0, 1, 2] = torch.tensor([0.0, 0.2, 0.8, 0.0])  # 0.2 on vision
    attn[0, 1, 3] = torch.tensor([0.3, 0.3, 0.2, 0.2])  # 0.6 on vision
    vision = torch.tensor([[True, True, False, False]])
    text = ~vision
    # A(2) = (0.6 + 0.2)/2 = 0.4, A(3) = (0.2 + 0.6)/2 = 0.4 -> max 0.4; then break the tie
    assert torch.allclose(attention_mass_to_vision(attn, vision, text), torch.tensor([0.4]))
    attn[0, 1, 3] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # A(3) = (0.2 + 1.0)/2 = 0.6
    assert torch.allclose(attention_mass_to_vision(attn, vision, text), torch.tensor([0.6]))
    assert attention_mass_to_vision(attn, vision, torch.zeros_like(text)).item() == 0.0


def test_uniform_attention_model_gives_known_sensitivity(tiny) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    for layer in adapter.decoder_layers():  # q = k = 0 -> uniform causal attention in every layer
        layer.self_attn.q_proj.weight.data.zero_()
        layer.self_attn.k_proj.weight.data.zero_()
    # two samples of different lengths: the shorter one is padded, and padded keys get no attention
    batch = adapter.encode(processor, images(2), ["Is there a red object in the image?", "Red?"])
    per_sample = []
    for ids, real in zip(batch["input_ids"], batch["attention_mask"].bool()):
        vision = adapter.vision_positions(ids[None])[0] & real
        language = real & ~adapter.non_text_positions(ids[None])[0]  # Qwen's <|vision_end|> is not language
        # uniform over the real keys 0..t: A(t) = #vision keys / #real keys; the max over language tokens
        per_sample.append(max(vision[: t + 1].sum().item() / real[: t + 1].sum().item()
                              for t in range(len(ids)) if language[t]))
    assert not batch["attention_mask"].bool().all()  # the padded path is exercised
    expected = sum(per_sample) / 2  # s_l is averaged over samples
    before = model.config._attn_implementation
    values = visual_sensitivity(model, adapter, [batch])
    assert len(values) == len(adapter.decoder_layers())
    assert all(abs(v - expected) < 1e-5 for v in values)
    assert model.config._attn_implementation == before  # SDPA users get their attention back


def _sensitivity_from_all_layers_at_once(model, adapter, batch) -> list[float]:
    """The previous implementation: every layer's attention returned, then reduced."""
    with eager_attention(model), torch.no_grad():
        out = model(**batch, output_attentions=True, use_cache=False)
    vision = adapter.vision_positions(batch["input_ids"])
    text = batch["attention_mask"].bool() & ~adapter.non_text_positions(batch["input_ids"])
    per_layer = torch.stack([attention_mass_to_vision(a, vision, text) for a in out.attentions])
    return (per_layer.sum(1) / per_layer.shape[1]).tolist()


def test_sensitivity_holds_one_layers_attention_and_matches_all_layers_at_once(tiny, monkeypatch) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    batch = adapter.encode(processor, images(3, seed=4), PROMPTS)
    expected = _sensitivity_from_all_layers_at_once(model, adapter, batch)
    seq = batch["input_ids"].shape[1]
    alive = []
    real_reduce = sensitivity.attention_mass_to_vision

    def counting_reduce(attn, vision, text):  # count the (B, H, T, T) maps alive at each reduction
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        alive.append(sum(1 for t in maps if t.ndim == 4 and t.shape[1] > 1 and t.shape[-2:] == (seq, seq)))  # not the (B, 1, T, T) mask
        return real_reduce(attn, vision, text)

    monkeypatch.setattr(sensitivity, "attention_mass_to_vision", counting_reduce)
    assert visual_sensitivity(model, adapter, [batch]) == expected  # bit for bit
    assert len(alive) == len(adapter.decoder_layers()) and max(alive) == 1


def test_calibration_measures_sensitivity_in_its_statistics_pass(tiny) -> None:
    """``profile_model`` runs one forward pass per batch (statistics and attention together) and
    its sensitivity is the separate pass's."""
    from hipp_torchprune.hipp.calibrate import profile_model

    _, model, processor = tiny
    adapter = api.get_adapter(model)
    samples = list(zip(images(5, seed=4), [PROMPTS[i % len(PROMPTS)] for i in range(5)]))
    calls = []
    handle = adapter.language_model().register_forward_hook(lambda *a: calls.append(1))
    try:
        profile, _, _ = profile_model(model, processor, samples, batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == 3  # batches of 2, 2 and 1
    separate = visual_sensitivity(model, adapter, api.calibration_batches(adapter, processor, samples, 2))
    assert [layer.visual_sensitivity for layer in profile.layers] == pytest.approx(separate, rel=1e-6)


def test_profile_uses_the_callers_registry(registry) -> None:
    """A model class only a custom registry knows can be profiled (for ``hipp train``)."""
    from hipp_torchprune import hookspecs
    from hipp_torchprune.adapters.llava import LlavaAdapter
    from hipp_torchprune.errors import UnsupportedModelError
    from hipp_torchprune.hipp.calibrate import profile_model

    model, processor = build_tiny("tiny-llava")
    model.__class__ = type("InHouseLlava", (type(model),), {})
    adapter_cls = type("InHouseAdapter", (LlavaAdapter,), {"name": "in-house", "model_class_names": ("InHouseLlava",)})

    class InHouse:
        @hookspecs.hookimpl
        def hipp_model_adapters(self) -> list[type]:
            return [adapter_cls]

    with pytest.raises(UnsupportedModelError):
        profile_model(model, processor, [(images(1)[0], "Red?")])
    registry.pm.register(InHouse())
    profile, _, scores = profile_model(model, processor, [(images(1)[0], "Red?")], registry=registry)
    assert profile.model_class == "InHouseLlava" and len(scores) == len(profile.widths) == 4
