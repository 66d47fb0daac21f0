"""The demo model's training examples: how absent objects of yes/no questions are picked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hipp_torchprune.demo.config import TrainConfig
from hipp_torchprune.demo.dataset import (
    QuestionMix,
    build_examples,
    kept_pope_rows,
    negative_rule,
    scene_from_row,
    yes_no_examples,
)
from hipp_torchprune.world.pope import CooccurrenceStats, adversarial_negatives
from tests.demo.tiny import TINY


def test_equal_weights_draw_rules_exactly_as_before_the_weights_existed() -> None:
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [negative_rule(a, (2.0, 2.0, 2.0)) for _ in range(50)] == [int(b.integers(3)) for _ in range(50)]


@pytest.mark.parametrize(("weights", "expected"), [((1.0, 0.0, 0.0), {0}), ((0.0, 0.0, 1.0), {2}),
                                                   ((0.0, 1.0, 1.0), {1, 2})])
def test_a_zero_weight_rule_is_never_drawn(weights: tuple[float, float, float], expected: set[int]) -> None:
    rng = np.random.default_rng(0)
    assert {negative_rule(rng, weights) for _ in range(300)} == expected


def test_unequal_weights_draw_rules_in_proportion() -> None:
    rng = np.random.default_rng(1)
    counts = Counter(negative_rule(rng, (3.0, 1.0, 0.0)) for _ in range(4000))
    assert 0.72 < counts[0] / 4000 < 0.78 and counts[2] == 0


def _scenes(world: Path) -> list:
    from hipp_torchprune.data import load_scenes

    return [scene_from_row(r) for r in load_scenes(world, "train")]


def test_adversarial_only_questions_ask_about_the_likeliest_absent_objects(make_world) -> None:
    scenes = _scenes(make_world(4, 40, 2))
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    rng = np.random.default_rng(0)
    checked = 0
    for i, s in enumerate(scenes):
        present = list(s.all_categories)
        if len(present) > 5:  # more absent objects than the rule's five: the rest fall back to random
            continue
        asked = {e.prompt.split(" ")[3] for e in yes_no_examples(i, s, stats, rng, None, QuestionMix((0.0, 0.0, 1.0)))
                 if e.answer == "No"}
        assert len(asked) == len(present) and asked <= set(adversarial_negatives(present, stats, 5))
        checked += 1
    assert checked >= 10


def test_kept_pope_rows_keep_each_rule_by_its_weight_over_the_largest() -> None:
    docs = [{"category": c, "i": i} for i in range(600) for c in ("random", "popular", "adversarial")]
    assert kept_pope_rows(docs, (1.0, 1.0, 1.0), 0) == docs
    kept = kept_pope_rows(docs, (2.0, 1.0, 0.0), 0)
    counts = Counter(d["category"] for d in kept)
    assert counts["random"] == 600 and counts["adversarial"] == 0 and 260 < counts["popular"] < 340
    assert kept == kept_pope_rows(docs, (2.0, 1.0, 0.0), 0) != kept_pope_rows(docs, (2.0, 1.0, 0.0), 1)


def test_random_only_examples_drop_the_worlds_other_rules_and_stay_balanced(make_world) -> None:
    world = make_world(4, 40, 2)
    _, equal, _ = build_examples(world, seed=0, rounds=1)
    _, rand, _ = build_examples(world, seed=0, rounds=1, mix=QuestionMix((1.0, 0.0, 0.0)))
    for ex in (equal, rand):
        answers = Counter(e.answer for e in ex["pope"])
        assert answers["Yes"] == answers["No"] > 0
    assert len(rand["pope"]) < len(equal["pope"])
    assert [e.prompt for e in rand["mc"]] != [] and rand["caption"] == equal["caption"]


@pytest.mark.parametrize("weights", [(-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0)])
def test_bad_negative_weights_are_refused_before_writing(make_world, tmp_path: Path, weights: tuple) -> None:
    from hipp_torchprune.config import ConfigError
    from hipp_torchprune.demo.train import train_demo_model

    cfg = TrainConfig(steps=1, eval_every=0, option_layer=0, aux_layer=0, negative_weights=weights)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="negative_weights"):
        train_demo_model(make_world(4, 40, 2), tmp_path / "run", TINY, cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_group_questions_say_yes_exactly_for_the_kinds_of_scene_the_image_holds(make_world) -> None:
    from hipp_torchprune.demo.dataset import GROUP_WORDS, group_examples
    from hipp_torchprune.world.categories import SCENE_TYPES

    word_kind = {w: k for k, w in GROUP_WORDS.items()}
    favoured = {t.name: set(t.favoured) for t in SCENE_TYPES}
    rng = np.random.default_rng(0)
    answers = Counter()
    for i, s in enumerate(_scenes(make_world(4, 40, 2))):
        for e in group_examples(i, s, rng, 6):
            kind = word_kind[e.prompt.split(" ")[3]]
            assert (e.answer == "Yes") == bool(favoured[kind] & set(s.all_categories))
            answers[e.answer] += 1
    assert answers["Yes"] > answers["No"] > 0.3 * answers["Yes"]  # both asked; "No" only when a kind is missing


def test_group_share_adds_that_share_of_group_questions_and_nothing_else(make_world) -> None:
    scenes = _scenes(make_world(4, 40, 2))
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    plain = yes_no_examples(0, scenes[0], stats, np.random.default_rng(3))
    mixed = yes_no_examples(0, scenes[0], stats, np.random.default_rng(3), None, QuestionMix(group_share=0.5))
    assert mixed[:len(plain)] == plain  # the object questions are drawn first, as without groups
    assert len(mixed) == 2 * len(plain) and all("ware" in e.prompt for e in mixed[len(plain):])


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_a_bad_group_share_is_refused_before_writing(make_world, tmp_path: Path, share: float) -> None:
    from hipp_torchprune.config import ConfigError
    from hipp_torchprune.demo.train import train_demo_model

    cfg = TrainConfig(steps=1, eval_every=0, option_layer=0, aux_layer=0, group_share=share)
    with pytest.raises(ConfigError, match="group_share"):
        train_demo_model(make_world(4, 40, 2), tmp_path / "run", TINY, cfg, progress=False)
    assert not (tmp_path / "run").exists()
