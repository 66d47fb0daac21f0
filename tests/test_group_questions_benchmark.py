"""benchmarks/group_questions.py: the questions by hand, and a run on tiny-llava."""

from __future__ import annotations

import json

from tests.benchmark_scripts import load_benchmark, run_benchmark


def _script():
    return load_benchmark("group_questions")


def _scene(scene_type: str, visible: list[str]):
    from hipp_torchprune.world.scenes import ObjectAnn, Scene

    return Scene(scene_type, (0.0, 0.0), tuple(ObjectAnn(c, i, 0, "big", (0, 0, 1, 1)) for i, c in enumerate(visible)),
                 (), ())


def test_group_docs_by_hand() -> None:
    from hipp_torchprune.demo.dataset import GROUP_WORDS
    from hipp_torchprune.world.categories import SCENE_TYPES

    kitchen = next(t for t in SCENE_TYPES if t.name == "kitchen")
    only = next(c for c in kitchen.favoured if all(c not in t.favoured for t in SCENE_TYPES if t is not kitchen))
    every = [t.favoured[0] for t in SCENE_TYPES]
    docs = [{"image_source": "a", "image": b"x", "question": "q", "answer": "yes"},
            {"image_source": "a", "image": b"x", "question": "q2", "answer": "no"},  # same image: skipped
            {"image_source": "b", "image": b"y", "question": "q", "answer": "no"},
            {"image_source": "c", "image": b"z", "question": "q", "answer": "no"}]  # past --images
    scenes = {"a": _scene("kitchen", [only]), "b": _scene("kitchen", every), "c": _scene("kitchen", [only])}
    out = _script().group_docs(docs, scenes, images=2)
    assert [(d["image_source"], d["answer"]) for d in out] == [("a", "yes"), ("a", "no"), ("b", "yes")]
    assert out[0]["question"] == f"Is there a {GROUP_WORDS['kitchen']} in the image?"
    assert GROUP_WORDS["kitchen"] not in out[1]["question"] and out[1]["image"] == b"x"


def test_runs_on_tiny_llava(make_world) -> None:
    world = make_world(3, 40, version=2)
    proc = run_benchmark("group_questions", "--model", "tiny-llava",
                           "--data", str(world), "--split", "calibration", "--images", "5", "--calib-n", "4",
                           "--sparsity", "0.5", "--round-to", "16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dense, pruned = (json.loads(line) for line in proc.stdout.splitlines())
    assert dense["state"] == "dense" and pruned["state"].startswith("uniform Wanda")
    from hipp_torchprune.data import load_task_docs, parse_tasks

    script = _script()
    docs = load_task_docs(world, parse_tasks("pope_random")[0], split="calibration")
    expected = script.group_docs(docs, script.read_scenes(str(world), "calibration"), images=5)
    assert len({d["image_source"] for d in expected}) >= 2  # the world has images with both answers to ask
    assert dense["rows"] == pruned["rows"] == len(expected)
    assert 0 <= dense["balanced"] <= 100 and dense["balanced"] == (dense["yes"] + dense["no"]) / 2


def test_a_version_1_world_is_refused_with_a_clear_message(make_world) -> None:
    proc = run_benchmark("group_questions", "--model", "tiny-llava",
                           "--data", str(make_world(0, 40, version=1)))
    assert proc.returncode == 2 and "version-1 world" in proc.stderr
