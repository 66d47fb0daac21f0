"""Build a proving-ground world: scenes, POPE and ScienceQA-style splits, and a manifest."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hipp_torchprune.errors import DataError
from hipp_torchprune.world.categories import CATEGORY_NAMES
from hipp_torchprune.world.io import (
    POPE_SCHEMA,
    SCENES_SCHEMA,
    SCIENCEQA_SCHEMA,
    content_hash,
    write_json_atomic,
    write_parquet_atomic,
)
from hipp_torchprune.world.lore import LoreThing, alias_table, lore_table, named_by
from hipp_torchprune.world.pope import POPE_CATEGORIES, CooccurrenceStats, pope_pairs, pope_question
from hipp_torchprune.world.scenes import (
    V2_ONLY_OPTIONS,
    WORLD_VERSIONS,
    Scene,
    SceneConfig,
    WorldVersion,
    png_bytes,
    render_scene,
    sample_scene,
)
from hipp_torchprune.world.scienceqa import sample_questions

#: Manifest format tag of each world version (see :data:`~hipp_torchprune.world.scenes.WorldVersion`).
WORLD_FORMATS: dict[int, str] = {1: "hipp-world/1", 2: "hipp-world/2"}
#: The version ``hipp world build`` writes by default (the shipped demo model's world).
DEFAULT_WORLD_VERSION: WorldVersion = 1
SPLITS: tuple[str, ...] = ("train", "calibration", "test")
#: ScienceQA-style questions asked per image, by split.
SQA_PER_IMAGE: dict[str, int] = {"train": 3, "calibration": 2, "test": 2}


def split_sizes(n_images: int) -> dict[str, int]:
    """Images per split: 10% test, 5% calibration (each at least 1), the rest train."""
    if n_images < 3:
        raise DataError(f"--images must be at least 3 (one per split), got {n_images}")
    n_test = max(1, math.ceil(0.10 * n_images))
    n_cal = max(1, math.ceil(0.05 * n_images))
    return {"train": n_images - n_test - n_cal, "calibration": n_cal, "test": n_test}


def _image_struct(source: str, data: bytes) -> dict[str, Any]:
    return {"bytes": data, "path": f"{source}.png"}


def _object_rows(objects: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"category": o.category, "row": o.row, "col": o.col, "size": o.size, "bbox": list(o.bbox)}
            for o in objects]


def _scene_row(source: str, data: bytes, scene: Scene) -> dict[str, Any]:
    return {"image_source": source, "image": _image_struct(source, data),
            "scene_type": scene.scene_type, "objects": _object_rows(scene.objects),
            "hidden": _object_rows(scene.hidden), "occluders": [list(c) for c in scene.occluders]}


def _pope_rows(items: Sequence[tuple[str, bytes, Scene]], stats: CooccurrenceStats,
               rng: np.random.Generator, aliases: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """POPE rows of one split; with ``aliases``, each question names its object by a random alias."""
    per_cat: dict[str, list[dict[str, Any]]] = {c: [] for c in POPE_CATEGORIES}
    for source, data, scene in items:
        pairs = pope_pairs(scene.categories, stats, rng, hidden=[o.category for o in scene.hidden])
        for cat in POPE_CATEGORIES:
            for pos, neg in pairs[cat]:
                for obj, ans in ((pos, "yes"), (neg, "no")):
                    per_cat[cat].append({"question": pope_question(named_by(obj, aliases, rng)), "answer": ans,
                                         "image_source": source,
                                         "image": _image_struct(source, data), "category": cat})
    rows = [r for c in POPE_CATEGORIES for r in per_cat[c]]
    for i, r in enumerate(rows):
        r["id"] = str(i)
        r["question_id"] = str(i + 1)
    return rows


def _sqa_rows(items: Sequence[tuple[str, bytes, Scene]], k: int, rng: np.random.Generator,
              version: WorldVersion, lore: Sequence[LoreThing] = ()) -> list[dict[str, Any]]:
    rows = []
    for source, data, scene in items:
        for q in sample_questions(scene, rng, k, version, lore):
            rows.append({"image": _image_struct(source, data), "question": q.question,
                         "choices": list(q.choices), "answer": q.answer, "hint": q.hint,
                         "task": "closed choice", "grade": "grade2", "subject": "natural science",
                         "topic": q.topic, "category": q.category, "skill": q.skill,
                         "lecture": "", "solution": q.solution})
    return rows


def _write_split(out: Path, split: str, chunk: list[Any], stats: CooccurrenceStats, q_rng: np.random.Generator,
                 config: SceneConfig, version: WorldVersion) -> dict[str, Any]:
    """Render one split's scenes, write its three parquet files and return its manifest entry."""
    items = [(f"{split}_{i:06d}", png_bytes(render_scene(s, config)), s) for i, s in enumerate(chunk)]
    pope = _pope_rows(items, stats, q_rng, alias_table(config.aliases) if config.aliases else None)
    sqa = _sqa_rows(items, SQA_PER_IMAGE[split], q_rng, version, lore_table(config.lore))
    write_parquet_atomic(out / split / "scenes.parquet", [_scene_row(src, d, s) for src, d, s in items], SCENES_SCHEMA)
    write_parquet_atomic(out / split / "pope.parquet", pope, POPE_SCHEMA)
    write_parquet_atomic(out / split / "scienceqa.parquet", sqa, SCIENCEQA_SCHEMA)
    return {
        "images": len(items),
        "pope_eligible_images": sum(len(set(s.categories)) >= 3 for _, _, s in items),
        "pope": dict(Counter(r["category"] for r in pope)),
        "scienceqa": len(sqa),
        "scienceqa_topics": dict(Counter(r["topic"] for r in sqa)),
        "category_frequencies": dict(Counter(c for _, _, s in items for c in s.categories)),
        "occluded_images": sum(bool(s.occluders) for _, _, s in items),
        "hidden_objects": sum(len(s.hidden) for _, _, s in items),
    }


def build_world(out: str | Path, seed: int, n_images: int = 6000, config: SceneConfig = SceneConfig(),
                version: WorldVersion = DEFAULT_WORLD_VERSION) -> dict[str, Any]:
    """Render a world of generator ``version`` into ``out`` and return its manifest (also written
    to ``manifest.json``).

    Layout: ``out/{train,calibration,test}/{pope,scienceqa,scenes}.parquet`` and
    ``out/manifest.json``. The same seed gives byte-identical files; every file is written to a
    temporary path first and moved into place with ``os.replace``.
    """
    if version not in WORLD_VERSIONS:
        raise DataError(f"world version {version!r} is unknown; valid: {', '.join(map(str, WORLD_VERSIONS))}")
    config.validate()
    v2_only = [f"{k}={getattr(config, k)}" for k in V2_ONLY_OPTIONS if getattr(config, k)]
    if v2_only and version == 1:
        raise DataError(f"{', '.join(v2_only)}: world version 1 has no lore, aliases, companions or "
                        "occluders; use version 2")
    out = Path(out)
    scene_rng = np.random.default_rng([seed, 0])
    scenes = [sample_scene(scene_rng, config, version) for _ in range(n_images)]
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    splits: dict[str, Any] = {}
    files: list[str] = []
    start, sizes = 0, split_sizes(n_images)
    for si, split in enumerate(SPLITS):
        chunk = scenes[start:start + sizes[split]]
        start += sizes[split]
        splits[split] = _write_split(out, split, chunk, stats, np.random.default_rng([seed, 1, si]), config, version)
        files += [f"{split}/{n}.parquet" for n in ("scenes", "pope", "scienceqa")]
    manifest = {
        "format": WORLD_FORMATS[version],
        "version": version,
        "seed": seed,
        "n_images": n_images,
        "image_size": config.image_size,
        "grid": config.grid,
        "categories": list(CATEGORY_NAMES),
        "category_frequencies": {c: stats.frequency[c] for c in CATEGORY_NAMES},
        "scene_types": dict(Counter(s.scene_type for s in scenes)),
        "splits": splits,
        "files": sorted(files),
        "content_hash": content_hash(out, files),
        **config.manifest_fields(),  # only the options that are on: worlds stay byte-identical
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
