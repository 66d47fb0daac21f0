"""benchmarks/fact_recall.py: the recall measure by hand, and its batches on a world with lore."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hipp_torchprune.errors import DataError
from tests.benchmark_scripts import load_benchmark


class _Fixed(torch.nn.Module):
    """Returns the same (B, T, V) logits for any input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **_: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


def test_recall_scores_the_answer_tokens_by_hand() -> None:
    # one row, 4 positions, vocab 3; labels at positions 2 and 3 (predicted from positions 1 and 2)
    logits = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.tensor([[-100, -100, 0, 2]])}
    out = load_benchmark("fact_recall").recall(_Fixed(logits), [batch])
    assert out["tokens"] == 2 and out["token_accuracy"] == 0.5  # position 1 predicts 0 (hit); position 2 ties
    expected = (-torch.log_softmax(logits[0, 1], -1)[0] + math.log(3)) / 2
    assert out["nll"] == pytest.approx(float(expected), abs=1e-4)


def test_fact_batches_hold_every_lore_fact_or_alias_and_refuse_a_world_without_them(make_world, tmp_path: Path) -> None:
    from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.models.processors import build_llava_processor
    from hipp_torchprune.world.build import build_world
    from hipp_torchprune.world.lore import alias_table, fact_sentence, lore_table
    from hipp_torchprune.world.scenes import SceneConfig

    script = load_benchmark("fact_recall")
    build_world(tmp_path / "w", seed=1, n_images=30, config=SceneConfig(lore=12, aliases=2), version=2)
    tiny = DemoModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64, text_hidden=32,
                           text_layers=1, text_heads=2, text_intermediate=64)
    cfg = TrainConfig(steps=1, batch_size=4, warmup_steps=1, eval_every=0, pool_rounds=1, threads=1, curriculum=(),
                      aux_layer=0, option_layer=0, mix_fact=1.0, mix_alias=1.0)
    train_demo_model(tmp_path / "w", tmp_path / "m", tiny, cfg, progress=False)
    import hipp_torchprune as hipp

    model, processor = hipp.load_model(str(tmp_path / "m"))
    batches = script.fact_batches(processor, str(tmp_path / "w"), batch_size=5)
    assert [len(b["input_ids"]) for b in batches] == [5, 5, 2]
    tok = processor.tokenizer
    answers = [tok.convert_ids_to_tokens([t for t in row.tolist() if t != -100]) for b in batches for row in b["labels"]]
    assert answers == [fact_sentence(t).split() + ["</s>"] for t in lore_table(12)]
    out = script.recall(model, batches)
    assert out["tokens"] == sum(len(a) for a in answers) and 0 <= out["token_accuracy"] <= 1
    aliased = script.fact_batches(processor, str(tmp_path / "w"), batch_size=64, kind="alias")
    answers = [tok.convert_ids_to_tokens([t for t in row.tolist() if t != -100]) for row in aliased[0]["labels"]]
    assert answers == [[c, ".", "</s>"] for c, names in alias_table(2).items() for _ in names]
    with pytest.raises(DataError, match="without lore"):
        script.fact_batches(build_llava_processor(["cup"], 64, 16), str(make_world(4, 40)))
    with pytest.raises(DataError, match="without aliases"):
        script.fact_batches(build_llava_processor(["cup"], 64, 16), str(make_world(4, 40)), kind="alias")
