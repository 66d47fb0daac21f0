"""World aliases: POPE questions that name their object by a made-up alias of its category."""

from __future__ import annotations

from pathlib import Path

import pytest

from hipp_torchprune.errors import DataError
from hipp_torchprune.world.categories import CATEGORY_NAMES
from hipp_torchprune.world.lore import MAX_ALIASES, MAX_LORE, alias_sentence, alias_table, lore_names
from hipp_torchprune.world.scenes import SceneConfig


def test_aliases_are_distinct_made_up_words_and_a_larger_table_extends_a_smaller_one() -> None:
    small, large = alias_table(2), alias_table(5)
    assert list(large) == list(CATEGORY_NAMES) and all(len(v) == 5 for v in large.values())
    words = [a for v in large.values() for a in v]
    assert len(set(words)) == len(words) == 5 * len(CATEGORY_NAMES)
    assert not set(words) & (set(lore_names(MAX_LORE)) | set(CATEGORY_NAMES))  # never a lore thing or a category
    assert all(large[c][:2] == small[c] for c in CATEGORY_NAMES)
    assert alias_table(0) == {c: () for c in CATEGORY_NAMES}
    assert alias_sentence("cup") == "cup ."
    with pytest.raises(ValueError, match="aliases per category"):
        alias_table(MAX_ALIASES + 1)


@pytest.mark.parametrize(("config", "version", "message"), [
    (SceneConfig(aliases=MAX_ALIASES + 1), 2, f"aliases={MAX_ALIASES + 1}"),
    (SceneConfig(aliases=3), 1, "aliases=3: world version 1 has no lore, aliases"),
])
def test_bad_alias_options_are_refused_before_writing(tmp_path: Path, config: SceneConfig, version: int,
                                                      message: str) -> None:
    from hipp_torchprune.world.build import build_world

    with pytest.raises(DataError, match=message):
        build_world(tmp_path / "w", seed=0, n_images=3, config=config, version=version)  # type: ignore[arg-type]
    assert not (tmp_path / "w").exists()


def test_an_alias_world_asks_pope_by_alias_with_answers_true_of_the_named_category(tmp_path: Path) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.data import load_scenes, load_task_docs, parse_tasks, world_render

    assert main(["world", "build", "--out", str(tmp_path / "w"), "--seed", "4", "--images", "60", "--version", "2",
                 "--aliases", "3"]) == 0
    assert world_render(tmp_path / "w") == SceneConfig(aliases=3)
    named = {a: c for c, names in alias_table(3).items() for a in names}
    scenes = {r["image_source"]: {o["category"] for o in r["objects"]} for r in load_scenes(tmp_path / "w", "test")}
    docs = load_task_docs(tmp_path / "w", parse_tasks("pope_adversarial")[0], split="test")
    assert docs
    used = set()
    for d in docs:
        word = d["question"].split(" ")[3]
        assert word in named  # every question names its object by an alias
        used.add(word)
        assert (named[word] in scenes[d["image_source"]]) == (d["answer"] == "yes")
    per_category = {c: sum(named[a] == c for a in used) for c in CATEGORY_NAMES}
    assert max(per_category.values()) >= 2  # a category is asked by several aliases, not one fixed word
