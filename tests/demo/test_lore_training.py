"""Demo-model training on a world with lore: stated facts, frozen lore embeddings, knowledge-only homes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hipp_torchprune.demo.config import TrainConfig
from hipp_torchprune.demo.dataset import FACT_PROMPT, build_examples
from hipp_torchprune.demo.train import knowledge_table, train_demo_model
from hipp_torchprune.errors import DataError
from hipp_torchprune.world.lore import fact_sentence, lore_table
from hipp_torchprune.world.scenes import SceneConfig
from tests.demo.tiny import TINY

LORE = 40
RECIPE = TrainConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=0, checkpoint_every=2, pool_rounds=1,
                     threads=1, curriculum=(0.2, 0.5), aux_layer=0, option_layer=0, knowledge_weight=1.0,
                     knowledge_layer=1, mix_fact=1.0, freeze_lore=True, home_dropout=0.75, home_kinds="knowledge",
                     knowledge_home=1)


@pytest.fixture(scope="module")
def lore_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hipp_torchprune.world.build import build_world

    out = tmp_path_factory.mktemp("lore") / "world"
    build_world(out, seed=2, n_images=40, config=SceneConfig(variants=1, lore=LORE), version=2)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_every_lore_thing_is_stated_once_as_a_fact(lore_world: Path) -> None:
    _, ex, _ = build_examples(lore_world, seed=0, rounds=1)
    lore = lore_table(LORE)
    assert [(e.prompt, e.answer) for e in ex["fact"]] == [(f"{FACT_PROMPT} {t.name}", fact_sentence(t)) for t in lore]
    knowledge = [e for e in ex["mc"] if e.topic in ("knowledge", "places")]
    assert any(t.name in e.prompt for e in knowledge for t in lore)  # training questions ask about the lore


def test_knowledge_table_flags_lore_things_like_categories() -> None:
    from hipp_torchprune.models.processors import build_llava_processor
    from hipp_torchprune.world.categories import CATEGORY_NAMES, PROPERTY_NAMES

    lore = lore_table(5)
    tok = build_llava_processor([*CATEGORY_NAMES, ".", *(t.name for t in lore)], 64, 16).tokenizer
    table = knowledge_table(tok, lore)  # (vocab, P)
    for t in lore:
        assert table[tok.convert_tokens_to_ids(t.name)].tolist() == [float(p in t.properties) for p in PROPERTY_NAMES]
    assert table[tok.convert_tokens_to_ids("dog"), PROPERTY_NAMES.index("animal")] == 1.0
    assert (table[tok.convert_tokens_to_ids(".")] == -1).all()


def test_lore_training_is_deterministic_resumes_and_keeps_lore_embeddings_frozen(lore_world: Path,
                                                                                 tmp_path: Path) -> None:
    from transformers import AutoProcessor

    cfg = RECIPE
    a = train_demo_model(lore_world, tmp_path / "a", TINY, cfg, progress=False)
    assert train_demo_model(lore_world, tmp_path / "b", TINY, cfg, progress=False, stop_at=3)["stopped"]
    train_demo_model(lore_world, tmp_path / "b", TINY, cfg, progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["pool_sizes"]["fact"] == LORE and a["world"]["lore"] == LORE and a["world"]["variants"] == 1
    train_demo_model(lore_world, tmp_path / "one", TINY, replace(cfg, steps=1), progress=False)
    tok = AutoProcessor.from_pretrained(tmp_path / "a").tokenizer
    ids = torch.tensor(tok.convert_tokens_to_ids([t.name for t in lore_table(LORE)]))
    key = next(k for k in wa if k.endswith("embed_tokens.weight"))
    once = _weights(tmp_path / "one")[key]
    assert torch.equal(wa[key][ids], once[ids])  # frozen: five more steps moved no lore row
    others = torch.ones(len(once), dtype=torch.bool)
    others[ids] = False
    assert not torch.equal(wa[key][others], once[others])  # the other words did learn


def test_lore_options_on_a_world_without_lore_are_refused_before_writing(make_world, tmp_path: Path) -> None:
    for changes in ({"mix_fact": 0.5}, {"freeze_lore": True}):
        with pytest.raises(DataError, match="world with lore"):
            train_demo_model(make_world(4, 40), tmp_path / "run", TINY, TrainConfig(steps=1, eval_every=0, option_layer=0, aux_layer=0, **changes),
                             progress=False)
        assert not (tmp_path / "run").exists()


def test_a_stated_fact_comes_with_a_fresh_image_each_time(lore_world: Path) -> None:
    """Text rows must not be keyed by an image: a fact always shown on the same picture can be
    recalled from the picture instead of from the thing's name (probes 27/28 did exactly that)."""
    import numpy as np

    from hipp_torchprune.demo.train import _build_run, _prepare_data, _step_batch

    cfg = replace(RECIPE, batch_size=64)
    data = _prepare_data(lore_world, TINY, cfg)
    run = _build_run(data, TINY, cfg, "cpu")
    batch = _step_batch(data, run, "fact", 0, cfg, np.random.default_rng(0))["batch"]  # 64 rows of 40 facts
    seen: dict[tuple[int, ...], set[bytes]] = {}
    for ids, pixels in zip(batch["input_ids"], batch["pixel_values"]):
        seen.setdefault(tuple(ids.tolist()), set()).add(pixels.numpy().tobytes())
    repeated = [v for v in seen.values() if len(v) > 1]
    assert len(seen) < 64 and repeated  # some fact was drawn twice, on two different images
