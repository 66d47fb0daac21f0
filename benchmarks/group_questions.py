"""Does a model read the group words? "Is there a kitchenware in the image?" on a world's images.

A demo teacher trained with ``group_share`` > 0 (``docs/demo-model.md``, probe 57) learns one word
per scene type (``demo.dataset.GROUP_WORDS``): "Yes" when the image holds, seen or hidden, an
object that the scene type favours (``demo.dataset.scene_kinds``). Its students' aliases are
built around these words (``InsertConfig.related_to: group_words``), so that a pruned alias falls
back to a question the model can answer. This asks, about each of the first ``--images`` images
of ``--split``, one group question whose answer is "Yes" and one whose answer is "No" (where the
image has both), and prints the accuracy on each, dense and, with ``--sparsity S``, after uniform
Wanda pruning to S (mask mode). A model that never saw the words is at chance.

    python benchmarks/group_questions.py --model DEMO_MODEL --data WORLD_DIR [--images 300] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pope_errors import read_scenes, uniform_wanda

import hipp_torchprune as hipp
from hipp_torchprune.data import load_task_docs, parse_tasks, world_version
from hipp_torchprune.demo.dataset import GROUP_WORDS, scene_kinds
from hipp_torchprune.evaluation import option_logprobs, prepare_docs
from hipp_torchprune.world.pope import pope_question
from hipp_torchprune.world.scenes import Scene


def group_docs(docs: Sequence[dict[str, Any]], scenes: Mapping[str, Scene], images: int,
               seed: int = 0) -> list[dict[str, Any]]:
    """Two group questions about each of the first ``images`` distinct images of ``docs`` (POPE
    rows: the image fields are kept, question and answer replaced): a kind the scene has ("yes")
    and one it lacks ("no"), each drawn with ``seed``; an image with only one of them gets one."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for doc in docs:
        if doc["image_source"] in seen:
            continue
        if len(seen) == images:
            break
        seen.add(doc["image_source"])
        for answer, kinds in zip(("yes", "no"), scene_kinds(scenes[doc["image_source"]]), strict=True):
            if kinds:
                word = GROUP_WORDS[kinds[int(rng.integers(len(kinds)))]]
                out.append({**doc, "question": pope_question(word), "answer": answer})
    return out


def accuracy(model: Any, task: Any) -> dict[str, float]:
    """Accuracy in % on the "yes" rows, the "no" rows and all of them (balanced: their mean)."""
    right = {0: [], 1: []}
    for lp, gold in zip(option_logprobs(model, task), task.gold, strict=True):
        right[gold].append(int(bool(lp[0] > lp[1]) == (gold == 0)))
    yes, no = (100 * float(np.mean(right[g])) if right[g] else float("nan") for g in (0, 1))
    return {"yes": yes, "no": no, "balanced": (yes + no) / 2, "rows": len(task.gold)}


def main() -> None:
    """Parse the flags, then print one JSON line per model state."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", required=True, help="a version-2 world (its scenes.parquet)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="which kinds are asked")
    parser.add_argument("--sparsity", type=float, default=None, help="also after uniform Wanda pruning to this")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--calib-n", type=int, default=64)
    args = parser.parse_args()
    if world_version(args.data) != 2:
        parser.error(f"{args.data}: a version-1 world has no scene annotations to answer by (hipp world build --version 2)")
    spec = parse_tasks("pope_random")[0]
    docs = group_docs(load_task_docs(args.data, spec, split=args.split), read_scenes(args.data, args.split),
                      args.images, args.seed)
    model, processor = hipp.load_model(args.model)
    task = prepare_docs(processor, spec, docs)
    print(json.dumps({"state": "dense", **accuracy(model, task)}))
    if args.sparsity is not None:
        with uniform_wanda(model, processor, args.data, args.sparsity, args.round_to, args.calib_n) as realized:
            print(json.dumps({"state": f"uniform Wanda {realized:.3f}", **accuracy(model, task)}))


if __name__ == "__main__":
    main()
