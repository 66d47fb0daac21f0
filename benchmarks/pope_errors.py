"""Where does a model say "yes" to an absent object? POPE errors by what the scene holds.

For a world version 2 (companions and occluders), every POPE row of ``--split`` is put in a
class: the object is present; or absent, and then whether it is the companion
(``world.categories.COMPANIONS``) of a visible object, how many such missing companions the
scene has ("pool"), whether the scene has an occluder and whether the occluder hides something.
Prints each class's count and error rate for POPE-random and POPE-adversarial, dense and, with
``--sparsity S``, after uniform Wanda pruning to S (mask mode, rows rounded to ``--round-to``).
Issue 13's target 3 asks that false "yes" on co-occurring absent objects be the error that grows.

``--negatives`` prints what each split's absent objects are and stops (no model needed): the
share favoured by the image's scene type, that are a visible object's missing companion, and
that share some scene type with a visible object.

``--prior`` first prints what the world itself says: in the train split, how often a missing
companion is hidden behind the occluder, by occluder and pool size (the answer a model that
learned the world's occlusion prior would give). ``--by-name`` asks every alias by its
category's name (a teacher trained by name, ``docs/demo-model.md``).

    python benchmarks/pope_errors.py --model demo --data WORLD_DIR [--sparsity 0.5] [--prior]
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.parquet as pq
import torch

import hipp_torchprune as hipp
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.data import load_task_docs, parse_tasks, world_render, world_version
from hipp_torchprune.demo.dataset import scene_from_row, world_aliases
from hipp_torchprune.evaluation import option_logprobs, prepare_eval
from hipp_torchprune.world.categories import CATEGORY_NAMES, COMPANIONS, SCENE_TYPES
from hipp_torchprune.world.scenes import Scene

TASKS = ("pope_random", "pope_adversarial")


def read_scenes(data: str, split: str) -> dict[str, Scene]:
    """``{image_source: Scene}`` of a split, read without its images."""
    table = pq.read_table(f"{data}/{split}/scenes.parquet",
                          columns=["image_source", "scene_type", "objects", "hidden", "occluders"])
    return {r["image_source"]: scene_from_row(r) for r in table.to_pylist()}


def missing_companions(scene: Scene) -> set[str]:
    """The companions of the scene's visible objects that are not visible themselves."""
    visible = set(scene.categories)
    return {COMPANIONS[c] for c in visible if COMPANIONS[c] not in visible}


def row_class(scene: Scene, asked: str, present: bool) -> str:
    """The class of one POPE row: ``present companion=0|1`` (whether the asked object's companion
    is in the image too: a prior that leans on the companion misses objects seen without it), or
    ``absent comp=0|1 pool=N occl=0|1 hid=0|1``."""
    if present:
        return f"present companion={int(COMPANIONS[asked] in set(scene.categories))}"
    pool = missing_companions(scene)
    comp = asked in pool
    return (f"absent comp={int(comp)} pool={len(pool) if comp else 0} occl={int(bool(scene.occluders))} "
            f"hid={int(bool(scene.hidden))}")


def occlusion_prior(data: str, split: str = "train") -> dict[tuple[bool, int], tuple[int, float]]:
    """``{(occluder, pool size): (cases, share hidden)}`` over every missing companion of ``split``."""
    counts: dict[tuple[bool, int], list[int]] = collections.defaultdict(lambda: [0, 0])
    for scene in read_scenes(data, split).values():
        pool, hidden = missing_companions(scene), {o.category for o in scene.hidden}
        for c in pool:
            counts[(bool(scene.occluders), len(pool))][0] += 1
            counts[(bool(scene.occluders), len(pool))][1] += c in hidden
    return {k: (n, h / n) for k, (n, h) in sorted(counts.items())}


#: Each scene type's favoured categories, by name.
FAVOURED: dict[str, frozenset[str]] = {t.name: frozenset(t.favoured) for t in SCENE_TYPES}


def negative_kinds(scene: Scene, asked: str) -> dict[str, bool]:
    """What one absent object is to its image: favoured by the scene type, a missing companion of
    a visible object, sharing some scene type's favoured set with a visible object."""
    visible = set(scene.categories)
    return {"scene_favoured": asked in FAVOURED.get(scene.scene_type, frozenset()),
            "missing_companion": asked in missing_companions(scene),
            "shares_a_scene_type": any(asked in f and visible & f for f in FAVOURED.values())}


def negative_table(data: str, split: str) -> dict[str, dict[str, float]]:
    """``{split: {kind: % of its negatives}}`` for POPE-random and POPE-adversarial, with ``n``."""
    inverse = {a: c for c, names in (world_aliases(world_render(data)) or {}).items() for a in names}
    scenes = read_scenes(data, split)
    out = {}
    for task in TASKS:
        docs = [d for d in load_task_docs(data, parse_tasks(task)[0], split=split) if d["answer"].lower() == "no"]
        kinds = [negative_kinds(scenes[d["image_source"]], inverse.get(w, w))
                 for d in docs for w in [d["question"].split()[3]]]
        out[task] = {"n": float(len(kinds)), **{k: 100 * sum(x[k] for x in kinds) / max(len(kinds), 1)
                                                 for k in ("scene_favoured", "missing_companion", "shares_a_scene_type")}}
    return out


def row_classes(prepared: Any, data: str, split: str) -> dict[str, list[str]]:
    """``{task: [class of each row]}`` (:func:`row_class`) of the POPE tasks in ``prepared``."""
    inverse = {a: c for c, names in (world_aliases(world_render(data)) or {}).items() for a in names}
    scenes = read_scenes(data, split)
    out = {}
    for task in prepared.tasks:
        docs = load_task_docs(data, parse_tasks(task.name)[0], split=split)
        words = [doc["question"].split()[3] for doc in docs]  # "Is there a WORD in the image?"
        out[task.name] = [row_class(scenes[doc["image_source"]], inverse.get(w, w), gold == 0)
                          for doc, w, gold in zip(docs, words, task.gold)]
    return out


def error_table(model: Any, prepared: Any, classes: dict[str, list[str]]) -> dict[str, dict[str, list[int]]]:
    """``{task: {class: [rows, errors]}}`` of the model's yes/no answers on ``prepared``."""
    out: dict[str, dict[str, list[int]]] = {}
    for task in prepared.tasks:
        table: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for cls, lp, gold in zip(classes[task.name], option_logprobs(model, task), task.gold):
            table[cls][0] += 1
            table[cls][1] += int(bool(lp[0] > lp[1]) != (gold == 0))
        out[task.name] = dict(sorted(table.items()))
    return out


def _by_name(prepared: Any, processor: Any, data: str) -> Any:
    from hipp_torchprune.demo.train import alias_categories
    from hipp_torchprune.demo.vocab import by_name_eval

    alias_of = alias_categories(processor.tokenizer, world_render(data))
    names = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(CATEGORY_NAMES)))
    return by_name_eval(prepared, alias_of, names)


def _print(title: str, tables: dict[str, dict[str, list[int]]]) -> None:
    print(f"\n### {title}\n\n| class | " + " | ".join(f"{t}: rows | errors" for t in TASKS) + " |")
    print("|---|" + "---|---|" * len(TASKS))
    for cls in sorted({c for t in tables.values() for c in t}):
        cells = [tables[t].get(cls, [0, 0]) for t in TASKS]
        print(f"| {cls} | " + " | ".join(f"{n} | {e} ({e / max(n, 1):.1%})" for n, e in cells) + " |")


def summary(tables: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """Each task's accuracy (= balanced accuracy: POPE splits are half present), false "yes"
    (errors on absent objects; those on missing companions of visible objects apart) and misses
    (errors on present objects), in %, and the gap POPE-random minus POPE-adversarial."""
    out: dict[str, Any] = {}
    for task, table in tables.items():
        rows = sum(n for n, _ in table.values())
        count = {"present": 0, "comp": 0, "other": 0}
        for cls, (_, errors) in table.items():
            count["present" if cls.startswith("present") else "comp" if "comp=1" in cls else "other"] += errors
        out[task] = {"accuracy": 100 * (1 - sum(count.values()) / rows),
                     "false_yes": 100 * (count["comp"] + count["other"]) / rows,
                     "false_yes_companions": 100 * count["comp"] / rows, "misses": 100 * count["present"] / rows}
    out["gap"] = out["pope_random"]["accuracy"] - out["pope_adversarial"]["accuracy"]
    return out


def _print_summary(states: dict[str, dict[str, Any]]) -> None:
    print("\n### summary (% of each split's rows)\n\n| state | POPE-random | POPE-adversarial | gap (rand - adv) | "
          "false yes rand / adv | of which on missing companions | misses rand / adv |\n|---|---|---|---|---|---|---|")
    for name, sm in states.items():
        r, a = sm["pope_random"], sm["pope_adversarial"]
        print(f"| {name} | {r['accuracy']:.1f} | {a['accuracy']:.1f} | {sm['gap']:.2f} | {r['false_yes']:.1f} / "
              f"{a['false_yes']:.1f} | {r['false_yes_companions']:.1f} / {a['false_yes_companions']:.1f} | "
              f"{r['misses']:.1f} / {a['misses']:.1f} |")
    if len(states) == 2:
        dense, pruned = states.values()
        print(f"\nThe gap widens by {pruned['gap'] - dense['gap']:.2f} points under pruning.")


@contextmanager
def uniform_wanda(model: Any, processor: Any, data: str, sparsity: float, round_to: int = 8,
                  calib_n: int = 64) -> Iterator[float]:
    """Inside the block, ``model`` is pruned to ``sparsity`` by uniform Wanda in mask mode (rows
    scored on ``calib_n`` calibration rows of ``data``, widths rounded to ``round_to``); yields
    the realized sparsity, and the masks come off when the block ends, however it ends."""
    scorer = hipp.importance("wanda", model, hipp.calibrate(model, processor, calibration_samples(data, calib_n)))
    plan = hipp.make_plan(model, "uniform", sparsity, round_to=round_to, r_max=0.95)
    masks = hipp.prune_model(model, plan, scorer, mode="mask").masks
    try:
        yield plan.realized_sparsity
    finally:
        masks.remove()


def main() -> None:
    """Parse the flags, then print the prior and the error tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True, help="a version-2 world")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="rows per task (default: all)")
    parser.add_argument("--sparsity", type=float, default=None, help="also after uniform Wanda pruning to this")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--by-name", action="store_true", help="ask every alias by its category's name")
    parser.add_argument("--prior", action="store_true", help="first print the world's occlusion prior")
    parser.add_argument("--negatives", action="store_true", help="print what the absent objects are, then stop")
    args = parser.parse_args()
    if world_version(args.data) != 2:
        parser.error(f"{args.data}: a version-1 world has no companions or occluders (hipp world build --version 2)")
    if args.negatives:
        print("| split | negatives | scene-favoured % | missing companion % | shares a scene type % |\n|---|---|---|---|---|")
        for task, row in negative_table(args.data, args.split).items():
            print(f"| {task} | {row['n']:.0f} | {row['scene_favoured']:.1f} | {row['missing_companion']:.1f} | "
                  f"{row['shares_a_scene_type']:.1f} |")
        return
    if args.prior:
        for (occl, pool), (n, share) in occlusion_prior(args.data).items():
            print(json.dumps({"occluder": occl, "pool": pool, "cases": n, "hidden": round(share, 3)}))
    model, processor = hipp.load_model(args.model)
    prepared = prepare_eval(processor, args.data, ",".join(TASKS), limit=args.limit, split=args.split)
    if args.by_name:
        prepared = _by_name(prepared, processor, args.data)
    classes = row_classes(prepared, args.data, args.split)
    states = {"dense": error_table(model, prepared, classes)}
    _print("dense", states["dense"])
    if args.sparsity is not None:
        with uniform_wanda(model, processor, args.data, args.sparsity, args.round_to, args.calib_n) as realized:
            name = f"uniform Wanda, {realized:.3f} realized"
            states[name] = error_table(model, prepared, classes)
        _print(name, states[name])
    _print_summary({name: summary(tables) for name, tables in states.items()})


if __name__ == "__main__":
    main()
