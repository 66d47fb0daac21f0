"""Model loading: ``--dtype`` names, the checkpoint's own dtype by default, casts that keep rotary buffers."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune.errors import DtypeError, HippError
from hipp_torchprune.loading import DTYPE_CHOICES, load_model, parse_dtype


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("auto", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16),
    ("float32", torch.float32), ("float64", torch.float64), (torch.bfloat16, torch.bfloat16)])
def test_parse_dtype(value: object, expected: torch.dtype | None) -> None:
    assert parse_dtype(value) == expected


@pytest.mark.parametrize("value", ["int8", "fp32", "bf16", "", torch.int64])
def test_bad_dtype_is_a_typed_error_listing_the_choices(value: object) -> None:
    with pytest.raises(DtypeError, match="valid: " + ", ".join(DTYPE_CHOICES)) as info:
        parse_dtype(value)
    assert isinstance(info.value, HippError)


def test_demo_loads_in_its_own_bf16_on_cpu() -> None:
    model, _ = load_model("demo")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32


def test_requested_dtype_converts_weights_not_rotary_buffers() -> None:
    demo, _ = load_model("demo", dtype="float32")
    assert {p.dtype for p in demo.parameters()} == {torch.float32}
    tiny, _ = load_model("tiny-llava", dtype="bfloat16")
    assert {p.dtype for p in tiny.parameters()} == {torch.bfloat16}
    assert tiny.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert tiny.config.dtype == torch.bfloat16


def test_cast_keeps_a_tied_parameter_tied() -> None:
    model, _ = load_model("tiny-qwen2_5_vl", dtype="bfloat16")
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_bad_dtype_fails_before_loading() -> None:
    with pytest.raises(DtypeError):
        load_model("no/such/checkpoint", dtype="int8")
