"""POPE negative-sampling rules, scene statistics and ScienceQA-style questions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hipp_torchprune.world.categories import CATEGORIES, CATEGORY_NAMES, SCENE_TYPES
from hipp_torchprune.world.pope import CooccurrenceStats, adversarial_negatives, pope_pairs, popular_negatives
from hipp_torchprune.world.scenes import SceneConfig, sample_scene
from hipp_torchprune.world.scienceqa import q_count, q_spatial, sample_questions


def _stats() -> CooccurrenceStats:
    scenes = [["cup", "apple"], ["cup", "apple"], ["cup", "knife"], ["dog", "bird"], ["dog", "bird"],
              ["dog", "bird"], ["dog", "tree"]]
    return CooccurrenceStats.from_scenes(scenes)


def test_stats_counts() -> None:
    s = _stats()
    assert s.frequency["dog"] == 4 and s.frequency["cup"] == 3 and s.frequency["ball"] == 0
    assert s.cooccurrence[("cup", "apple")] == 2 and s.cooccurrence[("apple", "cup")] == 2


def test_popular_is_most_frequent_absent() -> None:
    # absent from {dog, tree}: bird (3), cup (3), apple (2) ... ties broken by name
    assert popular_negatives(["dog", "tree"], _stats(), 3) == ["bird", "cup", "apple"]


def test_adversarial_is_most_cooccurring_absent() -> None:
    # with present {cup}: apple co-occurs twice, knife once
    assert adversarial_negatives(["cup", "ball", "car"], _stats(), 2) == ["apple", "knife"]


def test_pope_pairs_share_positives_and_negatives_are_absent() -> None:
    rng = np.random.default_rng(0)
    present = ["cup", "apple", "knife", "plate"]
    pairs = pope_pairs(present, _stats(), rng)
    pos = {cat: [p for p, _ in v] for cat, v in pairs.items()}
    assert pos["random"] == pos["popular"] == pos["adversarial"] and len(set(pos["random"])) == 3
    for v in pairs.values():
        assert all(n not in present for _, n in v) and len({n for _, n in v}) == 3
    assert pope_pairs(["cup", "apple"], _stats(), rng)["random"] == []


def test_categories_and_skew() -> None:
    assert len(CATEGORY_NAMES) >= 16 and len(set(CATEGORY_NAMES)) == len(CATEGORY_NAMES)
    assert len({(c.shape, c.colour) for c in CATEGORIES}) == len(CATEGORIES)  # distinct icons
    w = sorted(c.weight for c in CATEGORIES)
    assert w[-1] / w[0] >= 5


def test_scene_types_bias_cooccurrence() -> None:
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng) for _ in range(600)]
    stats = CooccurrenceStats.from_scenes([s.categories for s in scenes])
    # knife is a kitchen object: it meets plate (kitchen) far more often than bus (street)
    assert stats.cooccurrence.get(("knife", "plate"), 0) > 3 * stats.cooccurrence.get(("knife", "bus"), 0)
    freq = sorted(stats.frequency.values())
    assert freq[-1] > 4 * max(1, freq[0])
    assert {s.scene_type for s in scenes} == {t.name for t in SCENE_TYPES}


def test_scene_geometry() -> None:
    rng = np.random.default_rng(2)
    cfg = SceneConfig()
    for _ in range(50):
        s = sample_scene(rng, cfg)
        assert 1 <= len(s.objects) <= 6 and len(set(s.categories)) == len(s.objects)
        for o in s.objects:
            x0, y0, x1, y1 = o.bbox
            assert o.col * cfg.cell <= x0 < x1 <= (o.col + 1) * cfg.cell
            assert o.row * cfg.cell <= y0 < y1 <= (o.row + 1) * cfg.cell


def test_questions_are_correct() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        s = sample_scene(rng)
        q = q_count(s, rng)
        assert q is not None and q.choices[q.answer] == str(len(s.objects))
        sp = q_spatial(s, rng)
        if sp is not None:
            words = sp.question.split()
            a, b = words[2], sp.question.rstrip("?").split()[-1]
            oa = next(o for o in s.objects if o.category == a)
            ob = next(o for o in s.objects if o.category == b)
            ans = sp.choices[sp.answer]
            expected = {"left": oa.col < ob.col, "right": oa.col > ob.col,
                        "above": oa.row < ob.row, "below": oa.row > ob.row}[ans]
            assert expected
        for mq in sample_questions(s, rng, 3):
            assert 2 <= len(mq.choices) <= 5 and 0 <= mq.answer < len(mq.choices)


@pytest.fixture(scope="module")
def world(make_world) -> Path:
    """A 60-image world (seed 11), shared through the session fixture."""
    return make_world(11, 60)


def test_pope_parquet_protocol(world: Path) -> None:
    scenes = {r["image_source"]: {o["category"] for o in r["objects"]}
              for r in pq.read_table(world / "train" / "scenes.parquet").to_pylist()}
    rows = pq.read_table(world / "train" / "pope.parquet").to_pylist()
    assert Counter(r["answer"] for r in rows)["yes"] == Counter(r["answer"] for r in rows)["no"]
    assert {r["category"] for r in rows} == {"random", "popular", "adversarial"}
    for r in rows:
        obj = r["question"].removeprefix("Is there a ").removesuffix(" in the image?")
        assert r["question"] == f"Is there a {obj} in the image?"
        assert (obj in scenes[r["image_source"]]) == (r["answer"] == "yes")
    per_image = Counter((r["image_source"], r["category"]) for r in rows)
    assert set(per_image.values()) == {6}
    assert len({r["question_id"] for r in rows}) == len(rows)


def test_scienceqa_parquet(world: Path) -> None:
    rows = pq.read_table(world / "train" / "scienceqa.parquet").to_pylist()
    assert {"counting", "attributes", "spatial", "comparison", "reading"} <= {r["topic"] for r in rows}
    assert any(r["hint"] for r in rows) and any(not r["hint"] for r in rows)
    assert all(2 <= len(r["choices"]) <= 5 and 0 <= r["answer"] < len(r["choices"]) for r in rows)
