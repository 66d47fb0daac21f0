"""Demo model: training-format alignment, determinism, resume, and the shipped checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hipp_torchprune.demo import DEMO_MODEL_DIR, resolve_model_dir
from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig
from hipp_torchprune.demo.dataset import Example, build_examples, normalize, pixel_tensor, tokenize_pool, vocabulary
from hipp_torchprune.demo.train import (
    averaged_weights,
    ema_decay_at,
    ema_update,
    export_checkpoint,
    lr_at,
    make_batch,
    train_demo_model,
)
from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.models.processors import build_llava_processor
from hipp_torchprune.world.scenes import SceneConfig
from tests.demo.tiny import tiny_demo_config

TINY = tiny_demo_config(text_layers=1)


@pytest.fixture(scope="module")
def world(make_world) -> Path:
    """A 40-image world (seed 4), shared through the session fixture."""
    return make_world(4, 40)


def test_resolve_model_dir(tmp_path: Path) -> None:
    assert resolve_model_dir(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing")


def test_training_format_matches_processor(world: Path) -> None:
    images, ex, _ = build_examples(world, seed=0, rounds=1)
    assert {e.answer for e in ex["pope"]} == {"Yes", "No"}
    proc = build_llava_processor(sorted(vocabulary(ex)), 64, 16)
    example = ex["mc"][0]
    pool = tokenize_pool([example], proc, 16)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": example.prompt}]}], add_generation_prompt=True)
    enc = proc(text=[text], images=[images[example.image]], return_tensors="pt")
    start = int(pool.answer_start[0])
    assert pool.input_ids[0, :start].tolist() == enc["input_ids"][0].tolist()
    assert proc.tokenizer.unk_token_id not in pool.input_ids[0].tolist()
    px = normalize(pixel_tensor([images[example.image]], [], []), proc.image_processor.image_mean,
                   proc.image_processor.image_std)
    assert torch.allclose(px, enc["pixel_values"], atol=1e-5)


def test_labels_only_on_answer(world: Path) -> None:
    images, ex, _ = build_examples(world, seed=0, rounds=1)
    proc = build_llava_processor(sorted(vocabulary(ex)), 64, 16)
    pool = tokenize_pool([Example(0, "Is there a cup in the image?", "Yes"),
                          Example(1, "What objects are in the image?", "cup dog")], proc, 16)
    batch = make_batch(pool, torch.tensor([0, 1]), pixel_tensor(images[:2], [], []), [0.5] * 3, [0.5] * 3)
    toks = proc.tokenizer.convert_ids_to_tokens
    assert toks([t for t in batch["labels"][0].tolist() if t != -100]) == ["Yes", "</s>"]
    assert toks([t for t in batch["labels"][1].tolist() if t != -100]) == ["cup", "dog", "</s>"]
    assert batch["attention_mask"][0].sum() == pool.lengths[0]


def test_lr_schedule() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_ema_decay_warms_up_then_caps() -> None:
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(8, 0.999) == pytest.approx(0.5)  # 9 / 18
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_ema_update_and_swap_by_hand() -> None:
    shadow, param = [torch.tensor([0.0, 4.0])], [torch.tensor([2.0, 0.0])]
    ema_update(shadow, param, 0.75)  # 0.75 * shadow + 0.25 * param
    assert shadow[0].tolist() == [0.5, 3.0]
    with averaged_weights(param, shadow):
        assert param[0].tolist() == [0.5, 3.0]
    assert param[0].tolist() == [2.0, 0.0]
    with averaged_weights(param, None):
        assert param[0].tolist() == [2.0, 0.0]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


GROUNDING_IN_LM = dict(aux_layer=0, aux_attr_weight=0.5, vision_lr_scale=0.0, mix_relation=0.2, option_layer=0)


@pytest.mark.parametrize("recipe", [{"aux_layer": -1, "vision_lr_scale": 1.0, "option_weight": 0.0}, GROUNDING_IN_LM,
                                    {**GROUNDING_IN_LM, "option_weight": 1.0, "option_layer": 0, "mix_mc": 1.0},
                                    {**GROUNDING_IN_LM, "ema_decay": 0.9},
                                    {**GROUNDING_IN_LM, "mix_lm": 1.0, "lm_sequences": 50, "lm_length": 6, "lm_words": 20},
                                    {**GROUNDING_IN_LM, "mix_mc": 0.5, "home_dropout": 0.75, "grounding_home": 0,
                                     "reasoning_home": 1, "knowledge_home": 1},
                                    {**GROUNDING_IN_LM, "mix_mc": 0.5, "home_routing": True, "home_kinds": "memory",
                                     "grounding_home": 1, "knowledge_home": 0}],
                         ids=["aux-on-projector", "aux-in-lm-frozen-vision", "option-judge", "weight-ema", "text-corpus",
                              "home-dropout", "home-routing"])
def test_train_is_deterministic_and_resumes(world: Path, tmp_path: Path, recipe: dict) -> None:
    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=0, checkpoint_every=2,
                      pool_rounds=1, threads=1, curriculum=(0.2, 0.5), **recipe)
    model_cfg = replace(TINY, text_layers=2) if cfg.home_dropout or cfg.home_routing else TINY  # a layer away from home
    a = train_demo_model(world, tmp_path / "a", model_cfg, cfg, progress=False)
    assert train_demo_model(world, tmp_path / "b", model_cfg, cfg, progress=False, stop_at=3)["stopped"]
    assert not (tmp_path / "b" / "model.safetensors").exists()
    train_demo_model(world, tmp_path / "b", model_cfg, cfg, progress=False)  # resumes from step 3
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a["steps"] == 6 and wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["pool_sizes"].get("lm", 0) == recipe.get("lm_sequences", 0) * (recipe.get("mix_lm", 0) > 0)
    assert all(v.dtype == torch.bfloat16 for v in wa.values())
    assert any((tmp_path / "a" / "runs").iterdir())
    mode = (tmp_path / "a" / "config.json").stat().st_mode  # what open() gives under the umask
    assert (tmp_path / "a" / "model.safetensors").stat().st_mode == mode  # not safetensors' private 0600
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    AutoProcessor.from_pretrained(tmp_path / "a")
    LlavaForConditionalGeneration.from_pretrained(tmp_path / "a")


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(), reason="demo checkpoint not shipped")
def test_shipped_checkpoint() -> None:
    """Issue 13, target 1: at least 8 decoder layers, at most 20 MB, loadable as LLaVA."""
    cfg = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] >= 8
    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir())
    assert size <= 20 * 2**20
    assert resolve_model_dir("demo") == DEMO_MODEL_DIR
    assert not any(p.suffix == ".pt" or p.is_dir() for p in DEMO_MODEL_DIR.iterdir())  # no checkpoints, no teacher
    from hipp_torchprune.evaluation import load_model_and_processor

    model, processor = load_model_and_processor("demo", device="cpu")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "train_summary.json").is_file(), reason="demo checkpoint not shipped")
def test_shipped_checkpoint_was_trained_with_the_recipe_defaults() -> None:
    """The model card's commands (the world build, then the v2 recipe with its ``--seed``)
    reproduce the shipped run's configuration: the teacher, every insertion stage and the world."""
    from hipp_torchprune.demo.config import RECIPES
    from hipp_torchprune.demo.recipe import RECIPE_INSERTS
    from hipp_torchprune.demo.vocab import InsertConfig, insert_records

    summary = json.loads((DEMO_MODEL_DIR / "train_summary.json").read_text())
    seed = summary["train"]["seed"]
    model_cfg, train_cfg = RECIPES["v2"]
    inserts = RECIPE_INSERTS["v2"]

    def as_json(cfg: Any) -> Any:
        return json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as in the JSON

    # a field added after the run is absent from its summary and means that knob's default (off)
    assert as_json(DemoModelConfig(**summary["model"])) == as_json(model_cfg)
    assert as_json(TrainConfig(**summary["train"])) == as_json(replace(train_cfg, seed=seed))
    assert summary["steps"] == train_cfg.steps
    records = insert_records(summary)
    assert [as_json(InsertConfig(**r["config"])) for r in records] == [as_json(replace(c, seed=seed)) for c in inserts]
    assert [r["steps"] for r in records] == [c.steps for c in inserts]
    card = (Path(__file__).parents[2] / "docs" / "demo-model.md").read_text()
    assert f"demo-model train --recipe v2 --data out/world9-s1 --out out/demo-v2 --seed {seed}" in card
    world = summary["world"]
    flags = " ".join(f"--{k} {world[k]:g}" for k in ("jitter", "faint", "noise", "lore", "aliases", "companion",
                                                    "occluder", "family") if k in world)
    assert f"world build --out out/world9-s1 --seed 1 --images 6000 --version {world['version']} {flags}" in card


def test_weight_ema_is_what_is_saved_and_exported(world: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=0, checkpoint_every=3, pool_rounds=1,
                      threads=1, curriculum=(0.5,), ema_decay=0.0, **GROUNDING_IN_LM)
    train_demo_model(world, tmp_path / "raw", TINY, cfg, progress=False)
    train_demo_model(world, tmp_path / "ema", TINY, replace(cfg, ema_decay=0.9), progress=False)
    raw, ema = _weights(tmp_path / "raw"), _weights(tmp_path / "ema")
    text = [k for k in raw if "language_model" in k]
    assert any(not torch.equal(raw[k], ema[k]) for k in text)  # same run, averaged weights saved
    assert all(torch.equal(raw[k], ema[k]) for k in raw if "vision_tower" in k)  # frozen: nothing to average
    (tmp_path / "ema" / "model.safetensors").unlink()
    export_checkpoint(tmp_path / "ema")  # an interrupted run ships its averaged weights too
    assert all(torch.equal(ema[k], v) for k, v in _weights(tmp_path / "ema").items())
    with pytest.raises(CheckpointError, match="weight EMA"):
        train_demo_model(world, tmp_path / "ema", TINY, replace(cfg, steps=8), progress=False)


def test_frozen_vision_tower_stays_at_init(world: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=0, pool_rounds=1, threads=1,
                      curriculum=(0.5,), **GROUNDING_IN_LM)
    train_demo_model(world, tmp_path / "a", TINY, cfg, progress=False)
    train_demo_model(world, tmp_path / "b", TINY, TrainConfig(**{**cfg.to_dict(), "steps": 1}), progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    vision = [k for k in wa if "vision_tower" in k]
    text = [k for k in wa if "language_model" in k and "mlp" in k]
    assert vision and all(torch.equal(wa[k], wb[k]) for k in vision)
    assert any(not torch.equal(wa[k], wb[k]) for k in text)


def test_relation_examples_answer_from_annotations() -> None:
    from hipp_torchprune.demo.dataset import relation_examples
    from hipp_torchprune.world.scenes import ObjectAnn, Scene

    scene = Scene("kitchen", (0.0, 0.0), (ObjectAnn("cup", 0, 0, "big", (0, 0, 14, 14)),
                                          ObjectAnn("apple", 2, 3, "small", (50, 34, 58, 42))))
    seen: dict[str, str] = {}
    for seed in range(20):
        for e in relation_examples(3, scene, np.random.default_rng(seed)):
            assert e.image == 3
            seen[e.prompt.split("\n")[0]] = e.answer
    assert seen["Is the cup big?"] == "Yes" and seen["Is the apple big?"] == "No"
    assert seen["Is the apple small?"] == "Yes" and seen["Is the cup small?"] == "No"
    assert seen["Is the cup to the left of the apple?"] == "Yes"
    assert seen["Is the apple to the left of the cup?"] == "No"
    assert seen["Is the cup above the apple?"] == "Yes" and seen["Is the apple above the cup?"] == "No"
    assert seen["Is the cup bigger than the apple?"] == "Yes" and seen["Is the apple bigger than the cup?"] == "No"


def test_cli_trains_the_recipe(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.threads import torch_threads

    out = tmp_path / "run"
    with torch_threads(1):  # the recipe's own thread count (2) holds for the run only
        assert main(["demo-model", "train", "--recipe", "v1", "--data", str(world), "--out", str(out), "--steps", "2",
                     "--batch-size", "4", "--eval-every", "0", "--device", "cpu", "--no-progress"]) == 0
        assert torch.get_num_threads() == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["parameters"] > 1_000_000
    run = json.loads((out / "run_config.json").read_text())
    assert run["train"]["aux_layer"] == TrainConfig().aux_layer and run["model"] == DemoModelConfig().to_dict()
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize(("model_cfg", "changes"), [
    (TINY, {"aux_layer": 1}),  # TINY has one decoder layer
    (TINY, {"aux_layer": -2}),
    (TINY, {"vision_lr_scale": -0.5}),
    (TINY, {"option_weight": 1.0, "option_layer": 1}),
    (TINY, {"option_weight": -1.0}),
    (TINY, {"ema_decay": 1.0}),
    (TINY, {"knowledge_from_layer": 1}),  # TINY has one decoder layer
    (replace(TINY, text_layers=3), {"knowledge_weight": 1.0, "knowledge_layer": 1, "knowledge_from_layer": 2}),
    (TINY, {"ema_decay": -0.1}),
    (DemoModelConfig(projector_act="relu"), {}),  # type: ignore[arg-type]
    (DemoModelConfig(vision_layers=1, vision_feature_layer=-3), {}),
    (DemoModelConfig(vision_feature_layer=0), {}),
    (TINY, {"home_routing": True, "home_kinds": "memory", "grounding_home": 1}),  # TINY has one decoder layer
    (TINY, {"home_kinds": "everything"}),
    (TINY, {"mix_alias": -0.5}),
    (TINY, {"pretrain_steps": -1}),
    (TINY, {"pretrain_batch": 0}),
])
def test_bad_recipe_is_refused_before_writing(world: Path, tmp_path: Path, model_cfg: DemoModelConfig,
                                              changes: dict) -> None:
    from hipp_torchprune.errors import HippError

    with pytest.raises(HippError):
        train_demo_model(world, tmp_path / "run", model_cfg, TrainConfig(steps=1, eval_every=0, **changes),
                         progress=False)
    assert not (tmp_path / "run").exists()


def test_option_slots_point_at_each_option_and_mark_the_gold_one(world: Path) -> None:
    from hipp_torchprune.data import scienceqa_prompt
    from hipp_torchprune.demo.dataset import option_slots

    _, ex, _ = build_examples(world, seed=0, rounds=1)
    proc = build_llava_processor(sorted(vocabulary(ex)), 64, 16)
    tok = proc.tokenizer
    docs = [({"hint": "Anna has the cup.", "question": "Whose object is in the image?",
              "choices": ["Anna", "Ben", "Cara"]}, "B"),
            ({"hint": "", "question": "Which object is bigger?", "choices": ["cup", "dog"]}, "A")]
    pool = tokenize_pool([Example(0, scienceqa_prompt(d), a) for d, a in docs]
                         + [Example(0, "Is there a cup in the image?", "Yes")], proc, 16)
    pos, lab = option_slots(pool, tok.convert_tokens_to_ids(list("ABCDE")), tok.convert_tokens_to_ids("."))
    words = [[tok.convert_ids_to_tokens(int(pool.input_ids[r, p])) for p, l in zip(pos[r], lab[r]) if l != -100]
             for r in range(3)]
    assert words == [["Anna", "Ben", "Cara"], ["cup", "dog"], []]  # the hint's "cup ." is not an option
    assert lab.tolist() == [[0, 1, 0, -100, -100], [1, 0, -100, -100, -100], [-100] * 5]


def test_option_head_loss_is_binary_cross_entropy_over_real_slots() -> None:
    from hipp_torchprune.demo.train import OptionHead

    head = OptionHead(2)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.linear.bias.zero_()
    hidden = torch.tensor([[[9.0, 9.0], [2.0, 5.0], [7.0, 7.0], [-1.0, 3.0]]])  # (1, 4, 2)
    loss = head.loss(hidden, torch.tensor([[1, 3, 0]]), torch.tensor([[1, 0, -100]]))
    # logits 2 (gold) and -1 (other): mean of log(1 + e^-2) and log(1 + e^-1)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cli_v2_recipe_trains_a_teacher_then_each_insertion_and_refuses_worlds_it_cannot_use(
        world: Path, make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.demo.config import RECIPES
    from hipp_torchprune.demo.recipe import RECIPE_INSERTS
    from hipp_torchprune.world.build import build_world

    quick = "steps: 2, batch_size: 4, keep_batch: 4, lore_batch: 4, eval_every: 0, eval_limit: 8"
    (tmp_path / "quick.yaml").write_text(  # the recipe's stage, then a second one: the lore alone
        f"insert:\n  - {{{quick}}}\n  - {{{quick}, attention_upto: -1, lore_layer: 4, lore_only: true, "
        "keep_lore_weight: 1.0, keep_asked: written}\n")
    args = ["demo-model", "train", "--recipe", "v2", "--steps", "2", "--batch-size", "4", "--eval-every", "0",
            "--no-progress", "--seed", "3", "--config", str(tmp_path / "quick.yaml")]
    assert main([*args, "--data", str(world), "--out", str(tmp_path / "bad")]) == 2
    assert "version 2" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    (tmp_path / "none.yaml").write_text("insert: []\n")
    assert main([*args[:-1], str(tmp_path / "none.yaml"), "--data", str(world), "--out", str(tmp_path / "bad")]) == 2
    assert "non-empty list" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*args, "--data", str(make_world(5, 60, version=2)), "--out", str(tmp_path / "bad")]) == 2
    assert "--aliases" in capsys.readouterr().err and not (tmp_path / "bad").exists()  # before the teacher's hour
    build_world(tmp_path / "w", seed=5, n_images=40, config=SceneConfig(aliases=3, lore=12), version=2)
    (tmp_path / "deep.yaml").write_text("insert:\n  - {layer: 1}\n  - {lore_layer: 8}\n")  # layers 0..7
    assert main([*args[:-1], str(tmp_path / "deep.yaml"), "--data", str(tmp_path / "w"), "--out", str(tmp_path / "bad")]) == 2
    assert "lore_layer 8" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*args, "--data", str(tmp_path / "w"), "--out", str(tmp_path / "v2")]) == 0
    run = json.loads((tmp_path / "v2" / "teacher" / "run_config.json").read_text())
    model_cfg, cfg = RECIPES["v2"]
    assert run["model"] == model_cfg.to_dict() and run["model"]["text_layers"] == 8
    assert run["train"]["knowledge_weight"] == cfg.knowledge_weight > 0 and run["train"]["name_share"] == 1.0
    assert (run["train"]["aux_layer"], run["train"]["knowledge_layer"]) == (cfg.aux_layer, cfg.knowledge_layer) == (1, 5)
    summary = json.loads((tmp_path / "v2" / "train_summary.json").read_text())  # the model is the last stage's
    first = replace(RECIPE_INSERTS["v2"][0], steps=2, batch_size=4, keep_batch=4, lore_batch=4, eval_every=0,
                    eval_limit=8, seed=3)
    expected = [first, replace(RECIPE_INSERTS["v2"][1], steps=2, batch_size=4, keep_batch=4, lore_batch=4,
                               eval_every=0, eval_limit=8, attention_upto=-1, lore_layer=4, lore_only=True,
                               keep_lore_weight=1.0, keep_asked="written", seed=3)]  # the recipe's stage, overridden
    assert [r["config"] for r in summary["inserts"]] == [json.loads(json.dumps(asdict(c))) for c in expected]
    assert summary["insert"] == summary["inserts"][-1] and summary["train"]["seed"] == 3
    assert json.loads((tmp_path / "v2" / "stage1" / "train_summary.json").read_text())["insert"] == summary["inserts"][0]
    mtimes = {d: (tmp_path / "v2" / d / "train_summary.json").stat().st_mtime_ns for d in ("teacher", "stage1")}
    assert main([*args, "--data", str(tmp_path / "w"), "--out", str(tmp_path / "v2")]) == 0  # finished: reused
    assert {d: (tmp_path / "v2" / d / "train_summary.json").stat().st_mtime_ns for d in mtimes} == mtimes
    longer = [a if a != "2" else "3" for a in args]  # --steps 3: another recipe, so the teacher trains on
    assert main([*longer, "--data", str(tmp_path / "w"), "--out", str(tmp_path / "v2")]) == 0
    assert json.loads((tmp_path / "v2" / "teacher" / "train_summary.json").read_text())["steps"] == 3
    from safetensors.torch import load_file

    from hipp_torchprune.demo.vocab import insert_aliases

    # each stage of the new teacher afresh: no insertion state was resumed onto another model
    insert_aliases(tmp_path / "v2" / "teacher", tmp_path / "w", tmp_path / "fresh1", expected[0], progress=False)
    insert_aliases(tmp_path / "fresh1", tmp_path / "w", tmp_path / "fresh2", expected[1], progress=False)
    fresh, kept = (load_file(tmp_path / d / "model.safetensors") for d in ("fresh2", "v2"))
    assert all(torch.equal(fresh[k], kept[k]) for k in fresh)


def test_a_recipe_resumes_at_its_first_unfinished_stage(tmp_path: Path) -> None:
    """A recipe interrupted in an intermediate insertion, run again, picks up there (the teacher is
    reused) and ends at the same model as an uninterrupted run."""
    from safetensors.torch import load_file

    from hipp_torchprune.demo.recipe import train_recipe
    from hipp_torchprune.demo.vocab import InsertConfig, insert_aliases
    from hipp_torchprune.world.build import build_world

    build_world(tmp_path / "w", seed=5, n_images=40, config=SceneConfig(aliases=3, lore=12), version=2)
    model_cfg = replace(TINY, text_layers=2)
    cfg = TrainConfig(steps=2, batch_size=4, eval_every=0, pool_rounds=1, threads=1, aux_layer=0, option_weight=0.0)
    stage = InsertConfig(layer=0, attention_upto=-1, steps=4, batch_size=4, keep_batch=4, eval_every=0,
                         eval_limit=8, checkpoint_every=2)
    stages = (stage, replace(stage, layer=1, seed=1))
    whole = train_recipe(tmp_path / "w", tmp_path / "whole", model_cfg, cfg, stages, progress=False)
    train_demo_model(tmp_path / "w", tmp_path / "cut" / "teacher", model_cfg, cfg, progress=False)
    insert_aliases(tmp_path / "cut" / "teacher", tmp_path / "w", tmp_path / "cut" / "stage1", stage, progress=False,
                   stop_at=2)  # stage 1 interrupted after step 2
    resumed = train_recipe(tmp_path / "w", tmp_path / "cut", model_cfg, cfg, stages, progress=False)
    assert [r["steps"] for r in resumed["inserts"]] == [4, 4]
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["inserts"][0]["config"] == resumed["inserts"][0]["config"]


def test_cli_recipe_config_replaces_fields_and_flags_win(world: Path, tmp_path: Path) -> None:
    from hipp_torchprune.cli import main
    from hipp_torchprune.demo.config import RECIPES

    (tmp_path / "probe.yaml").write_text("model:\n  text_intermediate: 64\n"
                                         "train:\n  home_dropout: 0.5\n  home_dropout_draw: per_layer\n  knowledge_home: 3\n"
                                         "  steps: 7\n  curriculum: [0.5]\n")
    args = ["demo-model", "train", "--recipe", "v1", "--data", str(world), "--out", str(tmp_path / "m"),
            "--config", str(tmp_path / "probe.yaml"), "--steps", "2", "--batch-size", "4", "--eval-every", "0",
            "--no-progress"]
    assert main(args) == 0
    run = json.loads((tmp_path / "m" / "run_config.json").read_text())
    model_cfg, cfg = RECIPES["v1"]
    assert run["model"] == {**model_cfg.to_dict(), "text_intermediate": 64}
    expected = {**cfg.to_dict(), "home_dropout": 0.5, "home_dropout_draw": "per_layer", "knowledge_home": 3, "steps": 2,
                "batch_size": 4, "eval_every": 0, "curriculum": [0.5]}
    assert run["train"] == json.loads(json.dumps(expected))  # tuples are JSON lists


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  home_dropot: 0.5\n", "unknown field(s) home_dropot"),
    ("trian:\n  steps: 3\n", "'train:' and/or 'insert:'"),
    ("insert:\n  steps: 3\n", "no vocabulary-insertion stage"),  # recipe v1 is one stage
    ("insert:\n  - {steps: 3}\n", "no vocabulary-insertion stage"),
    ("train:\n  home_dropout_draw: sometimes\n", "is not one of"),
    ("train: 3\n", "must be a mapping"),
    ("- 1\n- 2\n", "'train:' and/or 'insert:'"),
])
def test_cli_bad_recipe_config_is_refused_before_writing(world: Path, tmp_path: Path, text: str, message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.cli import main

    (tmp_path / "bad.yaml").write_text(text)
    args = ["demo-model", "train", "--recipe", "v1", "--data", str(world), "--out", str(tmp_path / "m"), "--config",
            str(tmp_path / "bad.yaml"), "--steps", "1", "--no-progress"]
    assert main(args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_knowledge_rows_get_no_gradient_below_knowledge_from_layer() -> None:
    from transformers import LlavaForConditionalGeneration

    from hipp_torchprune.demo.train import _install_taps

    model_cfg = replace(TINY, text_layers=2)
    model = LlavaForConditionalGeneration(model_cfg.llava_config(50, 3, 0, 1, 2))
    cfg = TrainConfig(aux_layer=0, option_weight=0.0, knowledge_from_layer=1)
    captured = _install_taps(model, cfg)
    lm = model.model.language_model
    x = model.get_input_embeddings()(torch.randint(4, 50, (2, 6))).detach().requires_grad_()  # (B, T, H)
    plain = lm(inputs_embeds=x).last_hidden_state
    captured["detach"] = torch.tensor([True, False])  # row 0 is a knowledge row
    cut = lm(inputs_embeds=x).last_hidden_state
    assert torch.equal(plain, cut)  # detaching changes no value
    cut[0].sum().backward(retain_graph=True)
    assert x.grad is not None and not x.grad[0].any()  # nothing flows below layer 1 from row 0
    assert all(p.grad is None or not p.grad.any() for p in lm.layers[0].parameters())
    assert lm.layers[1].mlp.down_proj.weight.grad.abs().sum() > 0  # layer 1 learns from it
    cut[1].sum().backward()
    assert x.grad[1].abs().sum() > 0  # other rows train every layer


def test_knowledge_probe_reruns_only_the_knowledge_layers() -> None:
    from transformers import LlavaForConditionalGeneration

    from hipp_torchprune.demo.train import _install_taps, _knowledge_features

    model = LlavaForConditionalGeneration(replace(TINY, text_layers=3).llava_config(50, 3, 0, 1, 2))
    cfg = TrainConfig(aux_layer=0, option_weight=0.0, knowledge_weight=1.0, knowledge_layer=2, knowledge_from_layer=1)
    captured = _install_taps(model, cfg)
    lm = model.model.language_model
    x = model.get_input_embeddings()(torch.randint(4, 50, (2, 6))).detach().requires_grad_()  # (B, T, H)
    captured["detach"] = torch.tensor([False, False])
    lm(inputs_embeds=x)
    feats = _knowledge_features(model, captured, cfg)  # (B, T, H)
    assert torch.allclose(feats, captured["k"], atol=1e-6)  # the same output of layer 2
    feats.sum().backward()
    assert x.grad is None and all(p.grad is None for p in lm.layers[0].parameters())
    assert lm.layers[1].mlp.up_proj.weight.grad.abs().sum() > 0 and lm.layers[2].mlp.up_proj.weight.grad is not None


def test_training_world_is_read_from_the_summary(tmp_path: Path) -> None:
    from hipp_torchprune.demo import training_world
    from hipp_torchprune.world.scenes import SceneConfig

    assert training_world(None) == (1, SceneConfig())
    assert training_world(tmp_path) == (1, SceneConfig())  # no summary: trained before the record
    (tmp_path / "train_summary.json").write_text(json.dumps({"steps": 3}))
    assert training_world(tmp_path) == (1, SceneConfig())
    (tmp_path / "train_summary.json").write_text(json.dumps(
        {"world": {"version": 2, "jitter": 0.5, "faint": 0.15, "noise": 8.0}}))
    assert training_world(tmp_path) == (2, SceneConfig(jitter=0.5, faint=0.15, noise=8.0))
    (tmp_path / "train_summary.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="not a training summary"):
        training_world(tmp_path)


def test_summary_records_the_training_world_and_the_demo_builds_one_like_it(tmp_path: Path) -> None:
    from hipp_torchprune.data import world_render, world_version
    from hipp_torchprune.demo_job import demo_world
    from hipp_torchprune.errors import DataError
    from hipp_torchprune.world import build_world
    from hipp_torchprune.world.scenes import SceneConfig

    render = SceneConfig(jitter=0.5, faint=0.2, noise=4.0, companion=0.7)
    build_world(tmp_path / "train", seed=1, n_images=30, config=render, version=2)
    cfg = TrainConfig(steps=1, batch_size=4, warmup_steps=1, eval_every=0, pool_rounds=1, threads=1, curriculum=(),
                      aux_layer=0, option_layer=0)
    summary = train_demo_model(tmp_path / "train", tmp_path / "m", TINY, cfg, progress=False)
    assert summary["world"] == {"version": 2, "jitter": 0.5, "faint": 0.2, "noise": 4.0, "variants": 0, "lore": 0,
                                "aliases": 0, "companion": 0.7, "occluder": 0.0, "family": 0.0}
    world = demo_world(str(tmp_path / "m"), tmp_path / "held-out", seed=9, n_images=12)
    assert (world_version(world), world_render(world)) == (2, render)
    assert demo_world(str(tmp_path / "m"), world, seed=9, n_images=12) == world  # an existing one is reused
    build_world(tmp_path / "plain", seed=9, n_images=12)
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "plain").rglob("*"))
    with pytest.raises(DataError, match="version-1 world"):
        demo_world(str(tmp_path / "m"), tmp_path / "plain", seed=9, n_images=12)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "plain").rglob("*")) == before  # left as it was


def test_penultimate_vision_layer_of_a_one_layer_tower_is_the_patch_embedding() -> None:
    """vision_feature_layer=-2 with one CLIP layer: image tokens are the projected, LayerNormed
    patch embeddings (linear in the pixels), so recognition happens in the language model."""
    from transformers import LlavaForConditionalGeneration

    cfg = replace(TINY, vision_layers=1, vision_feature_layer=-2)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg.llava_config(40, 39, 0, 1, 2)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    tower = model.model.vision_tower
    expected = model.model.multi_modal_projector(tower.pre_layrnorm(tower.embeddings(pixels))[:, 1:])  # (2, 16, H)
    seen: dict[str, torch.Tensor] = {}
    model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    ids = torch.tensor([[1] + [39] * 16 + [5]] * 2)
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixels)
    assert torch.allclose(seen["out"].reshape(expected.shape), expected, atol=1e-5)
    last = replace(cfg, vision_feature_layer=-1)
    model.config.vision_feature_layer = last.vision_feature_layer
    seen.clear()
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixels)
    assert not torch.allclose(seen["out"].reshape(expected.shape), expected, atol=1e-3)  # -1 is the layer's output


def test_resuming_with_another_model_config_is_a_checkpoint_error(world: Path, tmp_path: Path) -> None:
    from hipp_torchprune.errors import CheckpointError

    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=0, checkpoint_every=2, pool_rounds=1,
                      threads=1, curriculum=(), **GROUNDING_IN_LM)
    assert train_demo_model(world, tmp_path / "run", TINY, cfg, progress=False, stop_at=2)["stopped"]
    before = (tmp_path / "run" / "run_config.json").read_text()
    with pytest.raises(CheckpointError, match="does not match this model config"):  # not a bare size-mismatch error
        train_demo_model(world, tmp_path / "run", replace(TINY, text_intermediate=TINY.text_intermediate * 2), cfg,
                         progress=False)
    # the refused run left the record of the checkpoint's config, which export_checkpoint reads
    assert (tmp_path / "run" / "run_config.json").read_text() == before


def test_preference_score_and_best_row_by_hand() -> None:
    from hipp_torchprune.demo_job import best_row, preference_score

    a = {"pope_adv_bal_acc": 0.90, "sqa_acc": 0.80}
    b = {"pope_adv_bal_acc": 0.80, "sqa_acc": 0.88}
    assert preference_score(a, (0.7, 0.2, 0.1)) == pytest.approx((0.7 * 0.90 + 0.2 * 0.80) / 0.9)
    assert best_row([a, b], (0.7, 0.2, 0.1)) is a  # robustness-heavy: the POPE side wins
    assert best_row([a, b], (0.2, 0.7, 0.1)) is b  # utility-heavy: the ScienceQA side wins
    assert best_row([a, {**a}], (0.5, 0.5, 0.0)) is a  # a tie keeps the earlier row
