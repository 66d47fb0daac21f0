"""Where a demo model keeps the world's lore (or its aliases): recall, dense and with one layer pruned.

For every lore thing of a world built with ``--lore N`` the model reads ``Fact : <thing>`` (the
training format, on a calibration image) and is scored teacher-forced on the stated answer
(``edible wheels toy drink .``): the share of answer tokens it predicts exactly and their mean
negative log-likelihood. With ``--prune-layers``, one line per listed layer with that layer alone
losing ``--ratio`` of its MLP rows (Wanda order, mask mode, calibrated on 64 calibration rows),
as ``scienceqa_topics.py`` does for the multiple-choice kinds: the layers whose pruning loses
the facts are where they are stored. With ``--kind alias`` (a world built with ``--aliases K``)
the same for the stated aliases (``Alias : <alias>`` -> ``cup .``), the dictionary that the
world's POPE questions need. Prints one JSON object per line.

    python benchmarks/fact_recall.py --model MODEL_DIR --data WORLD_DIR [--kind alias] [--prune-layers 0,5 --ratio 0.75]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

import hipp_torchprune as hipp
from hipp_torchprune.data import decode_image, load_scenes, world_render
from hipp_torchprune.demo.dataset import alias_examples, fact_examples, pixel_tensor, tokenize_pool, world_aliases
from hipp_torchprune.demo.train import make_batch
from hipp_torchprune.errors import DataError
from hipp_torchprune.world.lore import lore_table


def recall(model: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Exact-token share and mean NLL over the answer tokens of every batch."""
    hits, nll, n = 0, 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()  # (B, T-1, V)
            labels = batch["labels"][:, 1:]  # (B, T-1)
            where = labels != -100
            hits += int((logits.argmax(-1) == labels)[where].sum())
            nll += float(torch.nn.functional.cross_entropy(logits[where], labels[where], reduction="sum"))
            n += int(where.sum())
    return {"token_accuracy": round(hits / n, 4), "nll": round(nll / n, 4), "tokens": n}


def fact_batches(processor: Any, data: str, batch_size: int = 64, kind: str = "fact") -> list[dict[str, torch.Tensor]]:
    """The world's lore facts (``kind="fact"``) or stated aliases (``"alias"``) as model inputs,
    each on the first calibration image."""
    render = world_render(data)
    rows = fact_examples(1, lore_table(render.lore), seed=0) if kind == "fact" else \
        alias_examples(1, world_aliases(render) or {}, seed=0)
    if not rows:
        raise DataError(f"{data}: a world without {'lore' if kind == 'fact' else 'aliases'} "
                        f"(build it with {'--lore N' if kind == 'fact' else '--aliases K'})")
    image = decode_image(load_scenes(data, "calibration")[0]["image"], f"{data}/calibration/scenes.parquet:row 0")
    side = processor.image_processor.crop_size["height"]
    n_img = (side // processor.patch_size) ** 2
    pool = tokenize_pool(rows, processor, n_img)
    mean, std = list(processor.image_processor.image_mean), list(processor.image_processor.image_std)
    pixels = pixel_tensor([image], mean, std)
    return [make_batch(pool, torch.arange(i, min(i + batch_size, len(rows))), pixels, mean, std)
            for i in range(0, len(rows), batch_size)]


def main() -> None:
    """Parse arguments and print the dense and per-layer recall as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--prune-layers", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--kind", choices=("fact", "alias"), default="fact")
    args = parser.parse_args()
    model, processor = hipp.load_model(args.model)
    model.eval()
    batches = fact_batches(processor, args.data, kind=args.kind)
    print(json.dumps({"layer": None, **recall(model, batches)}))
    if not args.prune_layers:
        return
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.hipp.grounding import single_layer_plans

    scorer = hipp.importance("wanda", model, hipp.calibrate(model, processor, calibration_samples(args.data, 64)))
    plans = single_layer_plans(len(hipp.get_adapter(model).intermediate_widths()), args.ratio)
    for layer in args.prune_layers:
        plan = hipp.api.plan_from_ratios(model, plans[layer], round_to=32, r_max=max(args.ratio, 0.8))
        masks = hipp.prune_model(model, plan, scorer, mode="mask").masks
        try:
            print(json.dumps({"layer": layer, "ratio": args.ratio, **recall(model, batches)}))
        finally:
            masks.remove()


if __name__ == "__main__":
    main()
