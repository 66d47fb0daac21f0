"""Where does a demo model read its lore? A patching experiment for vocabulary insertion.

The first ``--things`` lore words are re-keyed as an insertion re-keys them: new random embeddings
at ``--scale`` x their mean norm, or (``--rekey unflagged``) their own embeddings with the
directions that linearly predict the lore's properties erased, so the copy no longer knows them. Then, one
layer at a time, the copy's output of decoder layer L at those words is replaced by the original
model's. If the copy answers the lore rows again, everything the model needs about a lore word is
in place by layer L's output, and an insertion may store the lore in layer L's MLP (or below);
if not, the model reads the lore earlier, and a lore layer at L cannot be read. Prints one JSON
object per state: accuracy on the ScienceQA rows that name a re-keyed word, and on the others.

    python benchmarks/lore_reading.py --model MODEL_DIR --data WORLD_DIR [--things 100] [--scale 10]
        [--rekey random|unflagged] [--layers 2,4,6] [--limit 600] [--split test]
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

import hipp_torchprune as hipp
from hipp_torchprune.demo.vocab import InsertConfig, rekeyed_lore_embeddings
from hipp_torchprune.evaluation import PreparedTask, prepare_eval, score_task
from hipp_torchprune.world.lore import lore_names


def rekeyed(model: Any, ids: torch.Tensor, scale: float, rekey: str = "random") -> Any:
    """A copy of ``model`` whose input embeddings of ``ids`` (the lore's first things, in order)
    are re-keyed as an insertion re-keys them (``InsertConfig.lore_rekey``, ``lore_embedding_scale``)."""
    copy_ = copy.deepcopy(model)
    cfg = InsertConfig(lore_rekey=rekey, lore_embedding_scale=scale)  # type: ignore[arg-type]
    with torch.no_grad():
        emb = copy_.get_input_embeddings().weight
        emb[ids] = rekeyed_lore_embeddings(emb[ids].float(), cfg).to(emb.dtype)
    return copy_


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def patched(student: Any, teacher: Any, task: PreparedTask, layer: int, ids: torch.Tensor) -> Iterator[None]:
    """While open, ``student``'s output of decoder ``layer`` at the ``ids`` tokens of each batch of
    ``task`` is the ``teacher``'s (both run the batches in the same order)."""
    store: list[torch.Tensor] = []
    grab = teacher.model.language_model.layers[layer].register_forward_hook(
        lambda _m, _i, out: store.append(_hidden(out).detach().clone()))
    try:
        score_task(teacher, task)
    finally:
        grab.remove()
    batches = iter(task.batches)

    def swap(_m: Any, _i: Any, out: Any) -> Any:
        where = torch.isin(next(batches)["input_ids"], ids).unsqueeze(-1)  # (B, T, 1)
        h = torch.where(where, store.pop(0).to(_hidden(out).dtype), _hidden(out))
        return (h, *out[1:]) if isinstance(out, tuple) else h

    hook = student.model.language_model.layers[layer].register_forward_hook(swap)
    try:
        yield
    finally:
        hook.remove()


def accuracies(model: Any, task: PreparedTask, ids: torch.Tensor) -> dict[str, float | int]:
    """Accuracy on the rows naming one of ``ids`` and on the other rows, with their counts."""
    correct = [c == "1" for c in score_task(model, task, per_row=True)["correct"]]
    named = [bool(torch.isin(row, ids).any()) for b in task.batches for row in b["input_ids"]]
    lore = [c for c, n in zip(correct, named) if n]
    other = [c for c, n in zip(correct, named) if not n]
    return {"lore_rows": round(sum(lore) / max(1, len(lore)), 4), "n_lore": len(lore),
            "other_rows": round(sum(other) / max(1, len(other)), 4), "n_other": len(other)}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and print one JSON object per state (original, re-keyed, patched at L)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--things", type=int, default=100)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--rekey", choices=("random", "unflagged"), default="random")
    parser.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    model, processor = hipp.load_model(args.model)
    model.eval()
    ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(lore_names(args.things))))
    task = prepare_eval(processor, args.data, "scienceqa", limit=args.limit, split=args.split).tasks[0]
    if not any(bool(torch.isin(row, ids).any()) for b in task.batches for row in b["input_ids"]):
        raise SystemExit(f"{args.data}: no {args.split} ScienceQA row names one of the first {args.things} lore "
                         "things (a world built with --lore N asks about them)")
    student = rekeyed(model, ids, args.scale, args.rekey)
    print(json.dumps({"state": "original", **accuracies(model, task, ids)}))
    print(json.dumps({"state": "re-keyed", **accuracies(student, task, ids)}))
    for layer in args.layers:
        with patched(student, model, task, layer, ids):
            print(json.dumps({"state": f"patched after layer {layer}", **accuracies(student, task, ids)}))


if __name__ == "__main__":
    main()
