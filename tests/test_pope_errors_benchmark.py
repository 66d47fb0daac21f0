"""benchmarks/pope_errors.py: its classes by hand, the world's occlusion prior, and a run on tiny-llava."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests.benchmark_scripts import load_benchmark, run_benchmark


def _script() -> ModuleType:
    return load_benchmark("pope_errors")


def _scene(visible: list[str], hidden: list[str] = (), occluded: bool = False):
    from hipp_torchprune.world.scenes import ObjectAnn, Scene

    obj = lambda c, i: ObjectAnn(c, i // 3, i % 3, "big", (0, 0, 1, 1))
    return Scene("kitchen", (0.0, 0.0), tuple(obj(c, i) for i, c in enumerate(visible)),
                 tuple(obj(c, 8) for c in hidden), ((2, 2),) if occluded else ())


def test_row_classes_by_hand() -> None:
    script = _script()
    # cup <-> plate, knife <-> apple, dog <-> ball: the cup and the knife are missing their companions
    scene = _scene(["cup", "knife"], occluded=True)
    assert script.missing_companions(scene) == {"plate", "apple"}
    assert script.row_class(scene, "cup", present=True) == "present companion=0"  # its plate is absent
    assert script.row_class(_scene(["dog", "ball"]), "ball", present=True) == "present companion=1"
    assert script.row_class(scene, "plate", present=False) == "absent comp=1 pool=2 occl=1 hid=0"
    assert script.row_class(scene, "dog", present=False) == "absent comp=0 pool=0 occl=1 hid=0"
    hidden = _scene(["cup", "plate", "knife"], hidden=["apple"], occluded=True)
    assert script.row_class(hidden, "apple", present=False) == "absent comp=1 pool=1 occl=1 hid=1"
    assert script.row_class(_scene(["dog", "ball"]), "cup", present=False) == "absent comp=0 pool=0 occl=0 hid=0"


def test_negative_kinds_by_hand() -> None:
    from hipp_torchprune.world.categories import SCENE_TYPES

    kitchen = set(next(t for t in SCENE_TYPES if t.name == "kitchen").favoured)
    other = next(t for t in SCENE_TYPES if t.name != "kitchen" and not set(t.favoured) & kitchen)
    script = _script()
    scene = _scene(["cup"])  # a kitchen: the plate is the cup's missing companion
    assert script.negative_kinds(scene, "plate") == {
        "scene_favoured": "plate" in kitchen, "missing_companion": True, "shares_a_scene_type": "plate" in kitchen}
    far = next(c for c in other.favoured if all(c not in t.favoured for t in SCENE_TYPES if "cup" in t.favoured))
    assert script.negative_kinds(scene, far) == {"scene_favoured": False, "missing_companion": False,
                                                 "shares_a_scene_type": False}
    # favoured by another scene type that also favours something visible
    scene2 = _scene([other.favoured[0]])
    assert script.negative_kinds(scene2, other.favoured[1])["shares_a_scene_type"]
    assert not script.negative_kinds(scene2, other.favoured[1])["scene_favoured"]


def test_occlusion_prior_counts_hidden_companions(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(scene, i: int) -> dict:  # the columns of scenes.parquet that the benchmark reads
        objs = lambda objects: [{"category": o.category, "row": o.row, "col": o.col, "size": o.size,
                                 "bbox": list(o.bbox)} for o in objects]
        return {"image_source": f"img{i}", "scene_type": scene.scene_type, "objects": objs(scene.objects), "hidden": objs(scene.hidden),
                "occluders": [list(c) for c in scene.occluders]}

    scenes = [_scene(["cup"], hidden=["plate"], occluded=True), _scene(["cup"], occluded=True),
              _scene(["cup", "knife"], hidden=["apple"], occluded=True), _scene(["cup"])]
    (tmp_path / "train").mkdir()
    pq.write_table(pa.Table.from_pylist([row(s, i) for i, s in enumerate(scenes)]),
                   tmp_path / "train" / "scenes.parquet")
    prior = _script().occlusion_prior(str(tmp_path))
    assert prior[(True, 1)] == (2, 0.5)  # one of the two lone missing plates is behind the occluder
    assert prior[(True, 2)] == (2, 0.5)  # plate (not hidden) and apple (hidden)
    assert prior[(False, 1)] == (1, 0.0)


def test_runs_on_tiny_llava(make_world) -> None:
    world = make_world(3, 40, version=2)
    proc = run_benchmark("pope_errors", "--model", "tiny-llava",
                           "--data", str(world), "--split", "calibration", "--limit", "6", "--calib-n", "4",
                           "--sparsity", "0.5", "--round-to", "16", "--prior")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "### dense" in proc.stdout and "### uniform Wanda" in proc.stdout and '"occluder": true' in proc.stdout
    tables = [s for s in proc.stdout.split("\n### ") if s.startswith(("dense", "uniform Wanda"))]
    assert len(tables) == 2
    for table in tables:  # half of the 6 rows a split are present
        present = [line.split("|") for line in table.splitlines() if line.startswith("| present companion=")]
        assert present and sum(int(cells[2]) for cells in present) == 3
    assert "| dense |" in proc.stdout and "The gap widens by" in proc.stdout


def test_negatives_are_counted_without_a_model(make_world) -> None:
    world = make_world(3, 40, version=2)
    proc = run_benchmark("pope_errors", "--model", "no-such-model",
                           "--data", str(world), "--split", "test", "--negatives")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = _script().negative_table(str(world), "test")
    adv, rand = table["pope_adversarial"], table["pope_random"]
    assert adv["n"] == rand["n"] > 0 and adv["shares_a_scene_type"] >= rand["shares_a_scene_type"]
    assert f"| pope_adversarial | {adv['n']:.0f} | {adv['scene_favoured']:.1f} |" in proc.stdout


def test_a_version_1_world_is_refused_with_a_clear_message(make_world) -> None:
    proc = run_benchmark("pope_errors", "--model", "tiny-llava",
                           "--data", str(make_world(0, 40, version=1)))
    assert proc.returncode == 2 and "version-1 world" in proc.stderr


def test_summary_by_hand() -> None:
    tables = {"pope_random": {"present companion=0": [2, 1], "present companion=1": [2, 0],
                              "absent comp=0 pool=0 occl=0 hid=0": [3, 0], "absent comp=1 pool=1 occl=0 hid=0": [1, 0]},
              "pope_adversarial": {"present companion=0": [1, 0], "present companion=1": [3, 1], "absent comp=0 pool=0 occl=0 hid=0": [2, 1],
                                   "absent comp=1 pool=2 occl=1 hid=0": [2, 1]}}
    sm = _script().summary(tables)
    # random: 1 miss in 8 rows; adversarial: 1 miss + 1 false yes on a companion + 1 on another object
    assert sm["pope_random"] == {"accuracy": 87.5, "false_yes": 0.0, "false_yes_companions": 0.0, "misses": 12.5}
    assert sm["pope_adversarial"] == {"accuracy": 62.5, "false_yes": 25.0, "false_yes_companions": 12.5,
                                      "misses": 12.5}
    assert sm["gap"] == 25.0
