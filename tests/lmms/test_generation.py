"""``generation_kwargs`` → ``generate`` arguments, stop strings and generated-token counts (no model)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")

import torch  # noqa: E402
from hipp_lmms.generation import (  # noqa: E402
    GenerationArgsError,
    GenerationSettings,
    cut_at_stop,
    generated_lengths,
    generation_settings,
)

from hipp_torchprune.errors import HippError  # noqa: E402


@pytest.mark.parametrize("kwargs,want", [
    ({}, {"max_new_tokens": 32, "do_sample": False, "num_beams": 1}),
    # lmms-eval's POPE YAML: temperature 0 and top_p 0 mean greedy; top_p never reaches generate
    ({"max_new_tokens": 128, "temperature": 0, "top_p": 0, "num_beams": 1, "do_sample": False},
     {"max_new_tokens": 128, "do_sample": False, "num_beams": 1}),
    ({"temperature": 0, "do_sample": True}, {"max_new_tokens": 32, "do_sample": False, "num_beams": 1}),
    ({"temperature": 0.7}, {"max_new_tokens": 32, "do_sample": True, "temperature": 0.7, "num_beams": 1}),
    ({"temperature": 0.7, "top_p": 0.9, "num_beams": 2},
     {"max_new_tokens": 32, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "num_beams": 2}),
    ({"do_sample": "true", "top_p": 0.5}, {"max_new_tokens": 32, "do_sample": True, "top_p": 0.5, "num_beams": 1}),
    ({"do_sample": False, "temperature": 0.7}, {"max_new_tokens": 32, "do_sample": False, "num_beams": 1}),
    ({"num_beams": "3", "max_new_tokens": "5"}, {"max_new_tokens": 5, "do_sample": False, "num_beams": 3}),
])
def test_generate_kwargs_honour_sampling_keys(kwargs: dict, want: dict) -> None:
    assert generation_settings(kwargs, 32).generate_kwargs() == want


def test_settings_are_batch_keys() -> None:
    a = generation_settings({"until": "\n", "max_new_tokens": 4}, 32)
    assert a == generation_settings({"until": ["\n"], "max_new_tokens": 4}, 32)
    assert a != generation_settings({"until": ["\n"], "max_new_tokens": 5}, 32)
    assert a != generation_settings({"until": ["."], "max_new_tokens": 4}, 32)
    assert len({a, generation_settings({"until": "\n", "max_new_tokens": 4}, 32)}) == 1
    assert generation_settings(None, 7) == GenerationSettings(max_new_tokens=7)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -1}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"num_beams": 0}, "num_beams"),
    ({"max_new_tokens": "many"}, "max_new_tokens"), ({"do_sample": "maybe"}, "do_sample"),
    ({"until": [1, 2]}, "until"),
])
def test_bad_generation_kwargs_are_typed_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(GenerationArgsError, match=match) as info:
        generation_settings(kwargs, 32)
    assert isinstance(info.value, HippError)


def test_unknown_keys_are_logged_not_dropped_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hipp_lmms.generation"):
        generation_settings({"image_aspect_ratio_test_only": "pad"}, 32)
    assert "image_aspect_ratio_test_only" in caplog.text


def test_cut_at_stop_uses_the_earliest_stop() -> None:
    assert cut_at_stop("a. b\nc", ["\n", "."]) == "a"
    assert cut_at_stop("abc", []) == "abc"
    assert cut_at_stop("abc", ["x", ""]) == "abc"


def test_generated_lengths_count_through_the_first_stop() -> None:
    new = torch.tensor([[5, 6, 3, 0, 0], [5, 6, 7, 8, 9], [3, 0, 0, 0, 0]])
    assert generated_lengths(new, {3}) == [3, 5, 1]
