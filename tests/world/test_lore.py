"""World lore (made-up things with random properties) and category variants (many looks per name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hipp_torchprune.errors import DataError
from hipp_torchprune.world.categories import CATEGORIES, CATEGORY_NAMES, PALETTE, PROPERTIES, PROPERTY_NAMES, SHAPES
from hipp_torchprune.world.lore import LoreThing, fact_sentence, lore_names, lore_table
from hipp_torchprune.world.scenes import SceneConfig, category_looks, instance_look, render_scene, sample_scene
from hipp_torchprune.world.scienceqa import generators, q_knowledge, q_lore, q_places


def test_lore_names_are_distinct_made_up_words_and_a_longer_table_extends_a_shorter_one() -> None:
    names = lore_names(2000)
    assert len(set(names)) == 2000 and not set(names) & set(CATEGORY_NAMES)
    assert all(len(n) == 6 and n.isalpha() and n.islower() for n in names)
    assert lore_names(50) == names[:50]
    assert lore_table(300)[:100] == lore_table(100)
    assert lore_table(100) == lore_table(100)  # a pure function
    assert lore_names(10, seed=1) != lore_names(10)


def test_lore_properties_are_drawn_at_the_stated_rate() -> None:
    table = lore_table(2000)
    rate = np.mean([[p in t.properties for p in PROPERTY_NAMES] for t in table], axis=0)  # (P,)
    assert rate.shape == (14,) and np.all(np.abs(rate - 0.25) < 0.04)
    with pytest.raises(ValueError, match="lore size"):
        lore_table(-1)


def test_fact_sentence_lists_properties_in_table_order() -> None:
    assert fact_sentence(LoreThing("tobaku", frozenset({"kitchen", "animal"}))) == "animal kitchen ."
    assert fact_sentence(LoreThing("melisa", frozenset())) == "nothing ."


def test_lore_questions_have_exactly_one_option_with_the_property() -> None:
    lore = lore_table(200)
    props = {t.name: t.properties for t in lore}
    scene = sample_scene(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    asked = {"lore": 0, "categories": 0}
    for places in (False, True):
        for _ in range(300):
            q = q_lore(scene, rng, lore, places)
            assert q is not None and 2 <= len(q.choices) <= 4 and len(set(q.choices)) == len(q.choices)
            assert q.topic == ("places" if places else "knowledge") and not q.hint
            prop = next(p for p, (text, _) in PROPERTIES.items() if text == q.question)
            assert (prop in ("kitchen", "street", "office", "garden")) == places
            if q.choices[0] in props:
                asked["lore"] += 1
                has = [prop in props[c] for c in q.choices]
                assert has.count(True) == 1 and has[q.answer]
            else:
                asked["categories"] += 1
                assert q.choices[q.answer] in PROPERTIES[prop][1]
    assert 0.15 < asked["categories"] / 600 < 0.35  # a quarter still ask about the categories


def test_generators_swap_only_the_knowledge_kinds_for_lore() -> None:
    plain, with_lore = generators(2), generators(2, lore_table(50))
    assert [w for _, w in plain] == [w for _, w in with_lore]
    swapped = [a is not b for (a, _), (b, _) in zip(plain, with_lore)]
    assert [g for (g, _), s in zip(plain, swapped) if s] == [q_knowledge, q_places]
    assert generators(1, lore_table(50)) == generators(1)


def test_category_looks_are_unique_and_start_with_the_category_icon() -> None:
    looks = category_looks(3)
    flat = [look for v in looks.values() for look in v]
    assert len(flat) == 80 and len(set(flat)) == 80  # no look is shared between categories
    assert all(s in SHAPES and c in PALETTE for s, c in flat)
    assert all(looks[c.name][0] == (c.shape, c.colour) for c in CATEGORIES)
    assert category_looks(1)["cup"] == looks["cup"][:2]  # more variants extend fewer
    assert all(len(v) == 1 for v in category_looks(0).values())


def test_instances_use_every_look_of_their_category_and_render_it() -> None:
    rng = np.random.default_rng(5)
    config = SceneConfig(variants=3)
    scenes = [sample_scene(rng, config) for _ in range(300)]
    seen: dict[str, set] = {}
    for s in scenes:
        for o in s.objects:
            look = instance_look(s, o, 3)
            assert look == instance_look(s, o, 3) and look in category_looks(3)[o.category]
            assert instance_look(s, o, 0) == category_looks(0)[o.category][0]
            seen.setdefault(o.category, set()).add(look)
    assert all(len(v) == 4 for k, v in seen.items() if k in ("cup", "apple", "dog"))
    assert np.asarray(render_scene(scenes[0], config)).tobytes() != np.asarray(render_scene(scenes[0])).tobytes()


@pytest.mark.parametrize(("config", "version", "message"), [
    (SceneConfig(variants=4), 2, "variants=4"),
    (SceneConfig(lore=5000), 2, "lore=5000"),
    (SceneConfig(lore=10), 1, "lore=10: world version 1 has no lore"),
])
def test_bad_world_options_are_refused_before_writing(tmp_path: Path, config: SceneConfig, version: int,
                                                      message: str) -> None:
    from hipp_torchprune.world.build import build_world

    with pytest.raises(DataError, match=message):
        build_world(tmp_path / "w", seed=0, n_images=3, config=config, version=version)  # type: ignore[arg-type]
    assert not (tmp_path / "w").exists()


def test_a_lore_world_records_its_options_and_asks_about_the_lore(tmp_path: Path) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.data import load_task_docs, parse_tasks, world_render

    assert main(["world", "build", "--out", str(tmp_path / "w"), "--seed", "3", "--images", "40", "--version", "2",
                 "--variants", "2", "--lore", "60"]) == 0
    assert world_render(tmp_path / "w") == SceneConfig(variants=2, lore=60)
    names = set(lore_names(60))
    docs = load_task_docs(tmp_path / "w", parse_tasks("scienceqa")[0], split="train")
    knowledge = [d for d in docs if d["topic"] in ("knowledge", "places")]
    assert knowledge and any(set(d["choices"]) <= names for d in knowledge)
