"""Reward tasks: registered names, same numbers as ``hipp eval``, prepared once, masks respected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hipp_torchprune.errors import DataError, UnknownPluginError
from hipp_torchprune.evaluation import evaluate
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.registry import Registry
from hipp_torchprune.rewards import PopeMarginReward, ScienceQAMarginReward


@pytest.fixture(scope="module")
def world(make_world) -> Path:
    """A 40-image proving-ground world."""
    return make_world(1, 40)


@pytest.fixture(scope="module")
def llava():
    """A tiny random LLaVA and its processor."""
    return build_tiny("tiny-llava", seed=3)


def test_rewards_are_registered(registry: Registry) -> None:
    assert registry.get("reward task", "pope") is PopeMarginReward
    assert registry.get("reward task", "scienceqa") is ScienceQAMarginReward
    with pytest.raises(UnknownPluginError, match="pope"):
        registry.get("reward task", "popee")


@pytest.mark.parametrize("statistic", ["margin", "loglik", "prob"])
@pytest.mark.parametrize("cls,task", [(PopeMarginReward, "pope_adversarial"), (ScienceQAMarginReward, "scienceqa_img")])
def test_reward_equals_hipp_eval_statistic(llava, world: Path, cls: type, task: str, statistic: str) -> None:
    model, processor = llava
    reward = cls(processor, world, split="test", limit=None, batch_size=5, statistic=statistic)
    want = evaluate(model, processor, world, task, split="test", batch_size=5)[task]
    assert reward.size == want["n"] > 0
    assert reward(model) == pytest.approx(want[statistic], abs=1e-9)
    assert want["loglik"] < 0 and want["loglik"] != pytest.approx(want["margin"])  # two different numbers
    assert reward.metrics(model) == pytest.approx(want)


def test_default_objectives_pass_the_statistic(llava, world: Path, registry: Registry) -> None:
    from hipp_torchprune.hipp.objectives import default_objectives

    model, processor = llava
    objectives = default_objectives(processor, world, "test", 6, batch_size=3, registry=registry)
    assert (objectives["rob"].statistic, objectives["util"].statistic) == ("loglik", "loglik")
    margin = default_objectives(processor, world, "test", 6, batch_size=3, registry=registry, statistic="margin")
    assert margin["rob"](model) == pytest.approx(margin["rob"].metrics(model)["margin"])
    pair = default_objectives(processor, world, "test", 6, batch_size=3, registry=registry,
                              statistic=("margin", "loglik"))
    assert pair["util"](model) == pytest.approx(pair["util"].metrics(model)["loglik"])
    with pytest.raises(DataError, match="statistic"):
        default_objectives(processor, world, "test", 6, registry=registry, statistic="median")


def test_reward_follows_the_model_and_restores_train_mode(llava, world: Path) -> None:
    model, processor = llava
    reward = ScienceQAMarginReward(processor, world, split="test", limit=4)
    before = reward(model)
    layer = model.model.language_model.layers[-1].mlp.down_proj
    saved = layer.weight.detach().clone()
    model.train()
    try:
        with torch.no_grad():
            layer.weight.mul_(0.0)  # a "mask" that removes every row of the last MLP
        after = reward(model)
        assert model.training
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
        model.eval()
    assert after != pytest.approx(before, abs=1e-9)
    assert reward(model) == pytest.approx(before, abs=1e-9)


def test_pope_category_and_bad_input(llava, world: Path, tmp_path: Path) -> None:
    _, processor = llava
    assert PopeMarginReward(processor, world, split="test", category="random").task_name() == "pope_random"
    with pytest.raises(DataError, match="category"):
        PopeMarginReward(processor, world, split="test", category="sideways")
    with pytest.raises(DataError, match="does not exist"):
        PopeMarginReward(processor, tmp_path / "nowhere")
    with pytest.raises(DataError, match="limit"):
        PopeMarginReward(processor, world, split="test", limit=0)


def test_statistic_pair_reads_one_name_a_pair_or_text() -> None:
    from hipp_torchprune.hipp.objectives import statistic_pair

    assert statistic_pair("margin") == ("margin", "margin")
    assert statistic_pair("loglik,margin") == statistic_pair(("loglik", "margin")) == ("loglik", "margin")
    for bad in ("median", "loglik,margin,margin", ("loglik", "mode"), ""):
        with pytest.raises(DataError, match="reward statistics"):
            statistic_pair(bad)


def test_train_cli_refuses_an_unknown_statistic(capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-llava", "--data", "nowhere", "--out", "nowhere", "--reward-stat", "median"])
    assert exit_info.value.code == 2 and "reward statistics must be one of" in capsys.readouterr().err
