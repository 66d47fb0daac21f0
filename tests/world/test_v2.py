"""Proving ground v2: occluders that hide co-occurring objects, and world-knowledge questions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hipp_torchprune.data import load_scenes, load_task_docs, parse_tasks
from hipp_torchprune.demo.dataset import caption_example, patch_labels, scene_from_row, yes_no_examples
from hipp_torchprune.world.categories import CATEGORY_NAMES, COMPANIONS, P_HIDE, P_OCCLUDER, PROPERTIES, SCENE_TYPES
from hipp_torchprune.world.pope import CooccurrenceStats, pope_pairs
from hipp_torchprune.world.scenes import ObjectAnn, Scene, SceneConfig, family_colour, render_scene, sample_scene
from hipp_torchprune.world.scienceqa import q_knowledge, q_places

N = 4000


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(123)
    return [sample_scene(rng) for _ in range(N)]


def test_companions_are_a_map_onto_categories() -> None:
    assert set(COMPANIONS) == set(CATEGORY_NAMES)
    assert all(c in CATEGORY_NAMES and c != k for k, c in COMPANIONS.items())


def test_occluders_cover_free_cells_and_hide_at_most_one_object(scenes: list[Scene]) -> None:
    for s in scenes:
        visible_cells = {(o.row, o.col) for o in s.objects}
        assert len(s.occluders) <= 1 and not visible_cells & set(s.occluders)
        assert len(s.hidden) <= len(s.occluders)
        assert all((h.row, h.col) in s.occluders for h in s.hidden)
        assert not set(s.categories) & {h.category for h in s.hidden}
        assert len(set(s.all_categories)) == len(s.all_categories)


def test_occluder_and_hiding_rates_follow_the_world_constants(scenes: list[Scene]) -> None:
    occluded = sum(bool(s.occluders) for s in scenes)
    hidden = sum(bool(s.hidden) for s in scenes)
    # binomial 4-sigma bounds: a wrong constant or a dropped branch falls outside
    assert abs(occluded / N - P_OCCLUDER) < 4 * (P_OCCLUDER * (1 - P_OCCLUDER) / N) ** 0.5
    p = P_OCCLUDER * P_HIDE
    assert abs(hidden / N - p) < 4 * (p * (1 - p) / N) ** 0.5 + 0.01  # a few scenes have nothing left to hide


def test_hidden_objects_are_missing_companions_when_there_is_one(scenes: list[Scene]) -> None:
    favoured = {t.name: set(t.favoured) for t in SCENE_TYPES}
    n_companion = 0
    for s in scenes:
        for h in s.hidden:
            missing = {COMPANIONS[c] for c in s.categories} - set(s.categories)
            assert h.category in (missing or favoured[s.scene_type])
            n_companion += bool(missing)
    assert n_companion > 0.5 * sum(len(s.hidden) for s in scenes)


def test_companions_cooccur_more_than_other_pairs(scenes: list[Scene]) -> None:
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    for a in ("cup", "dog", "car"):
        b = COMPANIONS[a]
        others = [stats.cooccurrence.get((a, c), 0) for c in CATEGORY_NAMES if c not in (a, b)]
        assert stats.cooccurrence[(a, b)] > max(others)


def test_pope_never_asks_about_hidden_objects() -> None:
    scene = Scene("kitchen", (0, 0), tuple(ObjectAnn(c, 0, i, "big", (0, 0, 1, 1)) for i, c in
                                           enumerate(["cup", "apple", "bottle"])),
                  hidden=(ObjectAnn("plate", 1, 1, "big", (0, 0, 1, 1)),), occluders=((1, 1),))
    stats = CooccurrenceStats.from_scenes([["cup", "plate"]] * 5 + [["apple", "knife"]] * 3)
    for seed in range(20):
        pairs = pope_pairs(scene.categories, stats, np.random.default_rng(seed), hidden=["plate"])
        for cat, rows in pairs.items():
            assert all(neg != "plate" and pos != "plate" for pos, neg in rows), cat
    # without the hidden list, plate (cup's strongest co-occurrence) is the first adversarial negative
    assert pope_pairs(scene.categories, stats, np.random.default_rng(0))["adversarial"][0][1] == "plate"


def test_occluder_is_drawn_over_its_cell() -> None:
    scene = Scene("kitchen", (0.0, 0.0), (), occluders=((0, 0),))
    plain = np.asarray(render_scene(Scene("kitchen", (0.0, 0.0), ())), dtype=int)
    drawn = np.asarray(render_scene(scene), dtype=int)
    cell = SceneConfig().cell
    assert (drawn[:cell, :cell] != plain[:cell, :cell]).any(axis=-1).mean() > 0.7
    assert (drawn[cell:, cell:] == plain[cell:, cell:]).all()


@pytest.mark.parametrize("gen", [q_knowledge, q_places])
def test_knowledge_questions_have_exactly_one_right_option(gen) -> None:
    rng = np.random.default_rng(0)
    scene = Scene("kitchen", (0.0, 0.0), (ObjectAnn("cup", 0, 0, "big", (0, 0, 1, 1)),))
    questions = Counter()
    for _ in range(300):
        q = gen(scene, rng)
        members = next(m for text, m in PROPERTIES.values() if text == q.question)
        assert [c in members for c in q.choices].count(True) == 1
        assert q.choices[q.answer] in members and 2 <= len(q.choices) <= 4
        questions[q.question] += 1
    assert len(questions) >= 4


def test_world_v2_round_trips_hidden_objects(make_world) -> None:
    world: Path = make_world(5, 60, version=2)
    rows = load_scenes(world, "train")
    scenes = [scene_from_row(r) for r in rows]
    assert any(s.hidden for s in scenes) and any(s.occluders and not s.hidden for s in scenes)
    by_source = {r["image_source"]: s for r, s in zip(rows, scenes)}
    for doc in load_task_docs(world, parse_tasks("pope")[0], split="train"):
        scene = by_source[doc["image_source"]]
        obj = doc["question"].split(" ")[3]
        assert obj not in {h.category for h in scene.hidden}
        assert (obj in scene.categories) == (doc["answer"] == "yes")
    topics = Counter(d["topic"] for d in load_task_docs(world, parse_tasks("scienceqa")[0], split="train"))
    assert topics["knowledge"] > 0 and topics["places"] > 0


def test_demo_data_says_yes_to_hidden_objects_and_ignores_occluded_patches() -> None:
    scene = Scene("kitchen", (0.0, 0.0), (ObjectAnn("cup", 0, 0, "big", (0, 0, 1, 1)),),
                  hidden=(ObjectAnn("plate", 2, 3, "big", (0, 0, 1, 1)),), occluders=((2, 3),))
    stats = CooccurrenceStats.from_scenes([["cup", "plate"]])
    answers = {e.prompt.split(" ")[3]: e.answer for e in yes_no_examples(0, scene, stats, np.random.default_rng(0))}
    assert answers["cup"] == answers["plate"] == "Yes" and list(answers.values()).count("No") == 2
    assert caption_example(0, scene).answer == "cup plate"
    labels = patch_labels([scene], 4)[0]
    assert labels[0] == CATEGORY_NAMES.index("cup") and labels[2 * 4 + 3] == -100
    assert labels[1] == len(CATEGORY_NAMES)


def _content_digest(world: Path) -> str:
    """SHA-256 over every split's annotations, questions, answers and image bytes."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for split in ("train", "calibration", "test"):
        for name, cols in (("scenes", ["image_source", "scene_type", "objects"]),
                           ("pope", ["question", "answer", "image_source", "category"]),
                           ("scienceqa", ["question", "choices", "answer", "hint", "topic"])):
            table = pq.read_table(world / split / f"{name}.parquet")
            for row in table.select(cols).to_pylist():
                h.update(json.dumps(row, sort_keys=True).encode())
            for image in table.column("image").to_pylist():
                h.update(hashlib.sha256(image["bytes"]).digest())
    return h.hexdigest()


def test_version_1_is_the_world_before_v2_existed(tmp_path: Path) -> None:
    """Every documented figure was measured on v1 worlds: v1 must still produce the same rows.

    The digest was computed from ``build_world(out, seed=3, n_images=40)`` at commit 899511d,
    before the v2 generator existed.
    """
    from hipp_torchprune.world.build import build_world

    manifest = build_world(tmp_path / "w", seed=3, n_images=40, version=1)
    assert manifest["format"] == "hipp-world/1" and manifest["version"] == 1
    assert _content_digest(tmp_path / "w") == "65ea052da714a7bbeb9ffdcc48342e7032a104fb8d8827fd8f0aefd63b5f78e2"


def test_default_world_version_is_v1_and_v2_is_recorded(tmp_path: Path) -> None:
    from hipp_torchprune.data import world_version
    from hipp_torchprune.errors import DataError
    from hipp_torchprune.world.build import build_world

    assert build_world(tmp_path / "d", seed=0, n_images=3)["version"] == 1
    assert world_version(tmp_path / "d") == 1
    manifest = build_world(tmp_path / "v2", seed=0, n_images=3, version=2)
    assert manifest["format"] == "hipp-world/2" and world_version(tmp_path / "v2") == 2
    with pytest.raises(DataError, match="version 3"):
        build_world(tmp_path / "v3", seed=0, n_images=3, version=3)  # type: ignore[arg-type]
    assert not (tmp_path / "v3").exists()


def test_instance_appearance_is_a_pure_function_of_the_scene(scenes: list[Scene]) -> None:
    from hipp_torchprune.world.categories import CATEGORY_BY_NAME
    from hipp_torchprune.world.scenes import instance_appearance

    objs = [(s, o) for s in scenes[:200] for o in s.objects]
    for scene, obj in objs[:50]:
        assert instance_appearance(scene, obj, 0.0) == (obj.bbox, CATEGORY_BY_NAME[obj.category].colour)
        box, colour = instance_appearance(scene, obj, 1.0)
        assert box == instance_appearance(scene, obj, 1.0)[0]  # same scene, same look
        x0, y0, x1, y1 = obj.bbox
        assert x0 <= box[0] < box[2] <= x1 and y0 <= box[1] < box[3] <= y1  # inside its own box
        assert box[2] - box[0] >= 0.6 * (x1 - x0) - 1
        assert all(abs(c - r) <= 40 for c, r in zip(colour, CATEGORY_BY_NAME[obj.category].colour))
    looks = {instance_appearance(s, o, 1.0) for s, o in objs}
    assert len(looks) > 0.9 * len(objs)  # instances really differ


def test_jittered_world_records_its_jitter_and_training_renders_with_it(tmp_path: Path) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.data import world_render
    from hipp_torchprune.world.build import build_world

    plain = build_world(tmp_path / "plain", seed=0, n_images=6, version=2)
    assert not {"jitter", "faint", "noise"} & set(plain) and world_render(tmp_path / "plain") == SceneConfig()
    jittered = build_world(tmp_path / "j", seed=0, n_images=6, version=2, config=SceneConfig(jitter=0.5))
    assert jittered["jitter"] == 0.5 and world_render(tmp_path / "j") == SceneConfig(jitter=0.5)
    assert jittered["content_hash"] != plain["content_hash"]
    # training's re-rendered (curriculum) scenes use the world's jitter: same draws, other pixels
    from hipp_torchprune.demo.dataset import curriculum_batch

    scenes = [scene_from_row(r) for r in load_scenes(tmp_path / "j", "train")]
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    draw = [curriculum_batch(scenes, "pope", 3, 4, stats, np.random.default_rng(0), 2, SceneConfig(jitter=j))
            for j in (0.0, 0.5)]
    assert [e.prompt for e in draw[0][0]] == [e.prompt for e in draw[1][0]]
    assert draw[0][2] == draw[1][2]
    assert draw[1][1][0].tobytes() == render_scene(draw[1][2][0], SceneConfig(jitter=0.5)).tobytes()
    assert any(a.tobytes() != b.tobytes() for a, b in zip(draw[0][1], draw[1][1]))
    assert main(["world", "build", "--out", str(tmp_path / "bad"), "--seed", "0", "--images", "3",
                 "--version", "2", "--jitter", "1.5"]) == 2
    assert not (tmp_path / "bad").exists()


def test_faint_and_noisy_rendering_is_seeded_and_recorded(tmp_path: Path) -> None:
    """``faint`` blends some objects into the background, ``noise`` adds seeded pixel noise; both are
    pure functions of the scene, recorded in the manifest, and bounded."""
    from hipp_torchprune.cli import main
    from hipp_torchprune.data import world_render
    from hipp_torchprune.world.build import build_world
    from hipp_torchprune.world.scenes import is_faint

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, SceneConfig(), 2) for _ in range(200)]
    objs = [(s, o) for s in scenes for o in s.objects]
    share = sum(is_faint(s, o, 0.3) for s, o in objs) / len(objs)
    assert 0.22 < share < 0.38 and not any(is_faint(s, o, 0.0) for s, o in objs)
    scene, obj = next((s, o) for s, o in objs if is_faint(s, o, 0.3))
    plain = np.asarray(render_scene(scene), dtype=np.float32)
    faint = np.asarray(render_scene(scene, SceneConfig(faint=0.3)), dtype=np.float32)
    x0, y0, x1, y1 = obj.bbox
    centre = (slice((y0 + y1) // 2 - 1, (y0 + y1) // 2 + 1), slice((x0 + x1) // 2 - 1, (x0 + x1) // 2 + 1))
    background = np.asarray(render_scene(Scene(scene.scene_type, scene.gradient, ())), dtype=np.float32)
    # the faint icon sits much closer to the background than the plain one
    assert np.abs(faint[centre] - background[centre]).mean() < 0.5 * np.abs(plain[centre] - background[centre]).mean()
    noisy = [np.asarray(render_scene(scene, SceneConfig(noise=8.0)), dtype=np.float32) for _ in range(2)]
    assert np.array_equal(noisy[0], noisy[1]) and 5.0 < float((noisy[0] - plain).std()) < 11.0
    manifest = build_world(tmp_path / "fn", seed=0, n_images=6, version=2, config=SceneConfig(faint=0.3, noise=8.0))
    assert manifest["faint"] == 0.3 and manifest["noise"] == 8.0 and "jitter" not in manifest
    assert world_render(tmp_path / "fn") == SceneConfig(faint=0.3, noise=8.0)
    for flag, value in (("--faint", "1.5"), ("--noise", "-1")):
        assert main(["world", "build", "--out", str(tmp_path / "bad"), "--seed", "0", "--images", "3",
                     "--version", "2", flag, value]) == 2
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("companion", "occluder"), [(0.8, 0.0), (0.0, 0.7), (0.8, 0.7)])
def test_companion_and_occluder_options_set_the_rates_and_zero_keeps_the_defaults(
        scenes: list[Scene], companion: float, occluder: float) -> None:
    """``--companion`` / ``--occluder`` replace P_COMPANION / P_OCCLUDER; 0 draws the default world."""
    rng = np.random.default_rng(123)
    assert [sample_scene(rng, SceneConfig(), 2) for _ in range(50)] == scenes[:50]
    rng = np.random.default_rng(123)
    other = [sample_scene(rng, SceneConfig(companion=companion, occluder=occluder), 2) for _ in range(N)]
    p = occluder or P_OCCLUDER
    assert abs(sum(bool(s.occluders) for s in other) / N - p) < 4 * (p * (1 - p) / N) ** 0.5

    def pairs(ss: list[Scene]) -> float:  # visible companion pairs per visible object
        return sum(COMPANIONS[o.category] in s.categories for s in ss for o in s.objects) / sum(len(s.objects) for s in ss)

    if companion:
        assert pairs(other) > pairs(scenes) + 0.08
    else:
        assert abs(pairs(other) - pairs(scenes)) < 0.03


def test_companion_and_occluder_options_are_recorded_and_refused_on_v1_or_out_of_range(tmp_path: Path) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.data import world_render
    from hipp_torchprune.errors import DataError
    from hipp_torchprune.world.build import build_world

    assert main(["world", "build", "--out", str(tmp_path / "w"), "--seed", "0", "--images", "12", "--version", "2",
                 "--companion", "0.7", "--occluder", "0.6"]) == 0
    assert world_render(tmp_path / "w") == SceneConfig(companion=0.7, occluder=0.6)
    with pytest.raises(DataError, match="companion=0.7: world version 1 has no"):
        build_world(tmp_path / "v1", seed=0, n_images=3, version=1, config=SceneConfig(companion=0.7))
    for flag in ("--companion", "--occluder"):
        assert main(["world", "build", "--out", str(tmp_path / "bad"), "--seed", "0", "--images", "3",
                     "--version", "2", flag, "1.5"]) == 2
    assert not (tmp_path / "v1").exists() and not (tmp_path / "bad").exists()


def test_family_colour_blends_toward_the_mean_hue_of_the_scene_types_that_favour_it() -> None:
    kitchen, office = (next(t for t in SCENE_TYPES if t.name == n) for n in ("kitchen", "office"))
    # knife: only the kitchen favours it; 0.5 of the way from gray to the kitchen hue, by hand
    assert family_colour((150, 150, 150), "knife", 0.5) == tuple(round((150 + h) / 2) for h in kitchen.family)
    # cup: kitchen and office; the target is their mean hue
    mean = [(a + b) / 2 for a, b in zip(kitchen.family, office.family)]
    assert family_colour((245, 245, 245), "cup", 1.0) == tuple(round(m) for m in mean)
    assert family_colour((245, 245, 245), "cup", 0.0) == (245, 245, 245)
    assert len({t.family for t in SCENE_TYPES}) == len(SCENE_TYPES)  # every kind of scene its own hue


def test_family_makes_objects_of_one_scene_type_look_alike_and_zero_draws_the_old_world() -> None:
    scene = Scene("kitchen", (0.0, 0.0), (ObjectAnn("bottle", 0, 0, "big", (2, 2, 14, 14)),
                                          ObjectAnn("knife", 0, 1, "big", (18, 2, 30, 14)),
                                          ObjectAnn("car", 0, 2, "big", (34, 2, 46, 14))))
    plain = np.asarray(render_scene(scene), dtype=float)
    assert (np.asarray(render_scene(scene, SceneConfig(family=0.0)), dtype=float) == plain).all()

    def colour(image: np.ndarray, x: int) -> np.ndarray:
        return image[8, x]  # an icon's centre row

    alike = np.asarray(render_scene(scene, SceneConfig(family=0.8)), dtype=float)
    gap = lambda im, a, b: np.abs(colour(im, a) - colour(im, b)).sum()
    assert gap(alike, 8, 24) < 0.5 * gap(plain, 8, 24)  # bottle and knife (kitchen) come together
    assert gap(alike, 8, 40) > gap(alike, 8, 24) + 100  # the car (street) stays apart


def test_family_option_is_recorded_and_refused_on_v1_or_out_of_range(tmp_path: Path) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.data import world_render
    from hipp_torchprune.errors import DataError
    from hipp_torchprune.world.build import build_world

    assert main(["world", "build", "--out", str(tmp_path / "w"), "--seed", "0", "--images", "6", "--version", "2",
                 "--family", "0.6"]) == 0
    assert world_render(tmp_path / "w") == SceneConfig(family=0.6)
    with pytest.raises(DataError, match="family=0.6: world version 1 has no"):
        build_world(tmp_path / "v1", seed=0, n_images=3, version=1, config=SceneConfig(family=0.6))
    assert main(["world", "build", "--out", str(tmp_path / "bad"), "--seed", "0", "--images", "3",
                 "--version", "2", "--family", "1.5"]) == 2
    assert not (tmp_path / "v1").exists() and not (tmp_path / "bad").exists()
