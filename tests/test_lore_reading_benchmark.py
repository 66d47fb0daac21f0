"""benchmarks/lore_reading.py: the patch hook's mechanics on a tiny demo model with lore."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark
from tests.demo.tiny import tiny_demo_config


@pytest.fixture(scope="module")
def lore_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hipp_torchprune.demo.config import TrainConfig
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.world.build import build_world
    from hipp_torchprune.world.scenes import SceneConfig

    root = tmp_path_factory.mktemp("lore-reading")
    build_world(root / "world", seed=3, n_images=40, config=SceneConfig(lore=12), version=2)
    train_demo_model(root / "world", root / "model", tiny_demo_config(text_layers=3), TrainConfig(
        steps=2, batch_size=4, warmup_steps=1, eval_every=0, checkpoint_every=2, pool_rounds=1, threads=1,
        curriculum=(0.5,), aux_layer=0, option_layer=0), progress=False)
    return root / "world", root / "model"


def test_patching_moves_only_what_reads_the_patched_words(lore_model: tuple[Path, Path]) -> None:
    """Patching the original into an identical copy changes nothing; the last layer's output at the
    lore words is read by nothing, so patching it leaves the re-keyed copy's answers as they are;
    an earlier layer's output is read, so patching it moves the logits."""
    import hipp_torchprune as hipp
    from hipp_torchprune.evaluation import option_logprobs, prepare_eval
    from hipp_torchprune.world.lore import lore_names

    script = load_benchmark("lore_reading")
    world, path = lore_model
    model, processor = hipp.load_model(str(path))
    model.eval()
    ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(lore_names(6))))
    task = prepare_eval(processor, world, "scienceqa", split="test").tasks[0]
    assert any(bool(torch.isin(row, ids).any()) for b in task.batches for row in b["input_ids"])
    same, student = copy.deepcopy(model), script.rekeyed(model, ids, scale=10.0)
    original, rekeyed = option_logprobs(model, task), option_logprobs(student, task)
    assert rekeyed != original
    with script.patched(same, model, task, 1, ids):
        assert option_logprobs(same, task) == original
    with script.patched(student, model, task, 2, ids):
        assert option_logprobs(student, task) == rekeyed
    with script.patched(student, model, task, 0, ids):
        assert option_logprobs(student, task) != rekeyed
    assert option_logprobs(student, task) == rekeyed  # the hook is gone
    counts = script.accuracies(model, task, ids)
    assert counts["n_lore"] > 0 and counts["n_lore"] + counts["n_other"] == len(task.gold)


def test_a_world_without_rows_about_the_rekeyed_things_is_refused(lore_model: tuple[Path, Path]) -> None:
    world, path = lore_model
    with pytest.raises(SystemExit, match="no test ScienceQA row names one of the first 0 lore things"):
        load_benchmark("lore_reading").main(["--model", str(path), "--data", str(world), "--things", "0"])
