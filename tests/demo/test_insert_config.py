"""The insertion config (``hipp_torchprune.demo.insert_config``): every bad field is refused with
a ConfigError that names it, and a YAML file loads into the dataclass with its choices checked."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hipp_torchprune.config import ConfigError
from hipp_torchprune.demo.insert_config import InsertConfig, check_insert_config, read_insert_config


@pytest.mark.parametrize(("changes", "message"), [
    ({"layer": 2}, "layer 2"), ({"layer": -1}, "layer -1"), ({"attention_upto": 2}, "attention_upto"),
    ({"attention_upto": -2}, "attention_upto"), ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"), ({"pope_share": -0.1}, "pope_share"),
    ({"keep_weight": -1.0}, "weights"), ({"keep_answer_weight": -0.5}, "weights"), ({"hidden_weight": 0.0, "answer_weight": 0.0, "name_weight": 0.0}, "weights"),
    ({"embedding_scale": 0.0}, "embedding_scale"), ({"related_share": 1.0}, "related_share"),
    ({"related_share": -0.1}, "related_share"), ({"prior_mix": 1.0}, "prior_mix"), ({"prior_keeps_yes": True}, "prior_mix"),
    ({"scene_batch": -1}, "scene_batch"), ({"scene_batch": 4, "related_share": 0.5}, "scene_batch"),
    ({"scene_batch": 4, "related_share": 0.5, "related_to": "scene", "scene_weight": -1.0}, "scene_batch"),
    ({"scene_batch": 4}, "scene_batch"), ({"lore_layer": 1}, "lore_layer 1"),
    ({"lore_layer": 2}, "lore_layer 2"), ({"lore_layer": 0, "lore_read_layers": 2}, "lore_read_layers"),
    ({"lore_read_layers": 1}, "lore_read_layers"), ({"lore_layer": 0, "lore_batch": 0}, "lore_batch"),
    ({"lore_layer": 0, "lore_answer_weight": -1.0}, "lore weights"), ({"lore_isolated": True}, "lore_isolated"),
    ({"lore_things": -1}, "lore_things"), ({"lore_embedding_scale": 0.0}, "lore_embedding_scale"),
    ({"lore_rekey": "zeros"}, "lore_rekey"), ({"keep_lore_weight": 1.0}, "keep_lore_weight"),
    ({"lore_layer": 0, "keep_lore_weight": -1.0}, "keep_lore_weight"), ({"lore_only": True}, "lore_only"),
    ({"lore_only": True, "lore_layer": 0, "lore_read_layers": 1}, "lore_only"),
    ({"keep_asked": "written"}, "keep_asked"), ({"keep_asked": "alias"}, "keep_asked")])
def test_bad_insert_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_insert_config(replace(InsertConfig(), **changes), n_layers=2)


def test_config_file_fields_and_choices_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("layer: 0\nattention_parts: qk\n")
    assert read_insert_config(good) == replace(InsertConfig(), layer=0, attention_parts="qk")
    for text, message in (("lyer: 1\n", "unknown field"), ("attention_parts: v\n", "attention_parts")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_insert_config(bad)
