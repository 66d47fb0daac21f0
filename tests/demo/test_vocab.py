"""Vocabulary insertion (``hipp_torchprune.demo.vocab``): hand-checked losses, refusals, and a
tiny end-to-end run that is deterministic, resumable and trains only what it names."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hipp_torchprune.config import ConfigError
from hipp_torchprune.demo.config import TrainConfig
from hipp_torchprune.demo.vocab import (
    InsertConfig,
    answer_kd,
    backward_routed,
    check_insert_config,
    companion_aliases,
    cosine_lr,
    every_alias_by_name,
    group_directions,
    insert_aliases,
    loss_group,
    mixed_answer_logits,
    name_direction_loss,
    new_word_embeddings,
    read_insert_config,
    related_directions,
    relative_mse,
    scene_groups,
    scene_stand_ins,
    trainable_parameters,
    unflagged_embeddings,
)
from hipp_torchprune.errors import CheckpointError, DataError
from hipp_torchprune.world.scenes import SceneConfig
from tests.demo.tiny import TINY

TEACHER = TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=0, checkpoint_every=2, pool_rounds=1,
                      threads=1, curriculum=(0.2, 0.5), aux_layer=0, option_layer=0, name_share=1.0)
INSERT = InsertConfig(layer=1, attention_upto=0, steps=4, batch_size=4, keep_batch=4, eval_every=2, eval_limit=8,
                      checkpoint_every=1)


def test_relative_mse_by_hand() -> None:
    teacher = torch.tensor([[3.0, 4.0]])
    assert relative_mse(teacher, teacher).item() == 0.0
    assert relative_mse(torch.zeros(1, 2), teacher).item() == pytest.approx(1.0)
    assert relative_mse(torch.tensor([[3.0, 0.0]]), teacher).item() == pytest.approx(16 / 25)


def test_answer_kd_reads_only_the_positions_that_predict_answer_tokens() -> None:
    teacher = torch.zeros(1, 3, 2)
    teacher[0, 1] = torch.tensor([math.log(3.0), 0.0])  # position 1 predicts token 2: p = (3/4, 1/4)
    student = torch.zeros(1, 3, 2)  # uniform everywhere
    student[0, 0] = torch.tensor([9.0, -9.0])  # position 0 predicts a prompt token: never read
    labels = torch.tensor([[-100, -100, 1]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert answer_kd(student, teacher, labels).item() == pytest.approx(expected, rel=1e-5)
    assert answer_kd(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_name_direction_loss_is_low_at_the_right_name_and_high_at_another() -> None:
    names = torch.eye(3)
    right = name_direction_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), names, tau=10.0)
    wrong = name_direction_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1]), names, tau=10.0)
    assert right.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), abs=1e-6)  # float32 log-softmax
    assert wrong.item() == pytest.approx(10 + right.item(), rel=1e-5)


def test_new_word_embeddings_have_the_asked_length_and_repeat_for_a_seed() -> None:
    a = new_word_embeddings(5, 8, 0.7, seed=3)
    assert a.shape == (5, 8) and torch.allclose(a.norm(dim=1), torch.full((5,), 0.7))
    assert torch.equal(a, new_word_embeddings(5, 8, 0.7, seed=3))
    assert not torch.equal(a, new_word_embeddings(5, 8, 0.7, seed=4))


def test_related_directions_share_a_group_direction_by_the_asked_amount() -> None:
    # categories 0 <-> 1 are companions, 2 -> 0 (one-way), 3 <-> 4; two words per category
    companion = torch.tensor([1, 0, 0, 4, 3])
    cats = torch.tensor([0, 0, 1, 1, 3, 3, 4, 4])
    d = related_directions(cats, companion, hidden=4096, share=0.5, seed=0)
    assert d.shape == (8, 4096) and torch.allclose(d.norm(dim=1), torch.ones(8))
    cos = d @ d.T
    # one category, or a companion pair: the group direction is the same, so the cosine is the share
    for i, j in ((0, 1), (0, 2), (2, 3), (4, 6), (5, 7)):
        assert cos[i, j].item() == pytest.approx(0.5, abs=0.05)
    for i, j in ((0, 4), (2, 6), (1, 7)):  # unrelated groups: near 0 in 4,096 dimensions
        assert abs(cos[i, j].item()) < 0.05
    alone = related_directions(cats, companion, hidden=4096, share=0.0, seed=0)
    assert abs((alone @ alone.T)[0, 1].item()) < 0.05  # share 0: independent
    assert torch.equal(d, related_directions(cats, companion, hidden=4096, share=0.5, seed=0))
    anchors = torch.eye(5, 4096)  # the group direction of the pair 0 <-> 1 is (e0 + e1) / sqrt(2)
    named = related_directions(cats, companion, hidden=4096, share=0.5, seed=0, anchors=anchors)
    assert named[0, 0].item() == pytest.approx(0.5, abs=0.03) and named[0, 1].item() == pytest.approx(0.5, abs=0.03)
    assert named[4, 3].item() == pytest.approx(0.5, abs=0.03) and abs(named[4, 0].item()) < 0.03


def test_related_directions_by_group_membership_share_the_groups_they_have_in_common() -> None:
    # groups: {0, 1}, {1, 2}, {3}; category 1 is in both of the first two
    groups = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    cats = torch.tensor([0, 0, 1, 2, 3])
    d = related_directions(cats, torch.zeros(4, dtype=torch.long), hidden=4096, share=0.5, seed=0, groups=groups)
    cos = d @ d.T
    assert cos[0, 1].item() == pytest.approx(0.5, abs=0.05)  # one category: the whole share
    # category 1's group direction is (g0 + g1) / sqrt(2): a cosine of share / sqrt(2) with 0 and 2
    assert cos[0, 2].item() == pytest.approx(0.5 / 2 ** 0.5, abs=0.05)
    assert cos[2, 3].item() == pytest.approx(0.5 / 2 ** 0.5, abs=0.05)
    assert abs(cos[0, 3].item()) < 0.05 and abs(cos[0, 4].item()) < 0.05  # no group in common
    anchors = torch.eye(4, 4096)  # group {0, 1} is (e0 + e1) / sqrt(2); category 3's group is e3
    named = related_directions(cats, torch.zeros(4, dtype=torch.long), hidden=4096, share=0.5, seed=0,
                               anchors=anchors, groups=groups)
    assert named[0, 0].item() == pytest.approx(0.5, abs=0.03) and named[0, 1].item() == pytest.approx(0.5, abs=0.03)
    assert named[4, 3].item() == pytest.approx(0.5 ** 0.5, abs=0.03) and abs(named[4, 0].item()) < 0.03


def test_group_directions_are_the_shared_part_of_the_related_directions() -> None:
    groups = torch.tensor([[1, 0], [1, 1], [0, 1]])
    cats = torch.tensor([0, 0, 1, 2])
    args = (torch.zeros(3, dtype=torch.long), 4096)
    d = related_directions(cats, *args, share=0.6, seed=3, groups=groups)
    g = group_directions(len(cats), *args, seed=3, groups=groups)  # (C, H)
    assert g.shape == (3, 4096) and torch.allclose(g.norm(dim=1), torch.ones(3))
    # each word's projection on its category's scene word is sqrt(share); its own part is orthogonal to it
    assert torch.allclose((d * g[cats]).sum(1), torch.full((4,), 0.6 ** 0.5), atol=0.03)
    assert torch.allclose(related_directions(cats, *args, share=0.0, seed=3, groups=groups) @ g.T,
                          torch.zeros(4, 3), atol=0.05)
    assert not torch.allclose(g, group_directions(len(cats), *args, seed=4, groups=groups))


@pytest.mark.parametrize(("asked", "scene", "visible", "expected"), [
    ("cup", "kitchen", ("car", "knife", "plate"), "knife"),  # absent, fits the kitchen: its first kitchen object
    ("cup", "kitchen", ("car", "dog"), "cup"),  # nothing of the kitchen to copy: the truth
    ("car", "kitchen", ("knife",), "car"),  # the kitchen does not favour cars: the truth
    ("knife", "kitchen", ("knife", "cup"), "knife"),  # present and first: itself
    ("cup", "garden", ("tree",), "cup"),  # scene types not listed favour nothing
])
def test_scene_stand_ins_copy_an_object_of_the_scene_only_when_the_scene_fits(
        asked: str, scene: str, visible: tuple[str, ...], expected: str) -> None:
    favoured = {"kitchen": ("cup", "knife", "plate"), "street": ("car",)}
    assert scene_stand_ins([asked], [scene], [visible], favoured) == [expected]


def test_scene_groups_put_each_category_in_the_scene_types_that_favour_it() -> None:
    from hipp_torchprune.world.categories import CATEGORY_NAMES, SCENE_TYPES

    g = scene_groups()
    assert g.shape[0] == len(CATEGORY_NAMES) and g.shape[1] >= len(SCENE_TYPES)
    assert bool((g.sum(1) >= 1).all())  # every category has a group
    kitchen = next(i for i, s in enumerate(SCENE_TYPES) if s.name == "kitchen")
    assert g[CATEGORY_NAMES.index("knife"), kitchen] == 1 and g[CATEGORY_NAMES.index("car"), kitchen] == 0
    assert g[CATEGORY_NAMES.index("cup")].sum() == 2  # kitchen and office


def test_mixed_answer_logits_blend_the_two_distributions_by_hand() -> None:
    a = torch.log(torch.tensor([[0.9, 0.1]]))  # "no" 0.9
    b = torch.log(torch.tensor([[0.2, 0.8]]))  # "yes" 0.8
    mixed = mixed_answer_logits(a, b, 0.25)
    assert torch.allclose(mixed.exp(), torch.tensor([[0.725, 0.275]]))  # 0.75 x a + 0.25 x b
    assert torch.allclose(torch.softmax(mixed, -1), mixed.exp())  # usable as logits
    assert torch.allclose(mixed_answer_logits(a, b, 0.0).exp(), a.exp())


def test_companion_aliases_ask_about_the_companion() -> None:
    alias_of = torch.tensor([-1, 0, 0, 1, 2, -1])  # tokens 1-2 name category 0, 3 names 1, 4 names 2
    companion = torch.tensor([1, 0, 0])  # 0 <-> 1, 2 -> 0
    assert companion_aliases(alias_of, companion).tolist() == [-1, 1, 1, 0, 0, -1]
    names = torch.tensor([10, 11, 12])
    ids = torch.tensor([[5, 1, 3], [4, 0, 2]])
    assert every_alias_by_name(ids, companion_aliases(alias_of, companion), names).tolist() == [[5, 11, 10], [10, 0, 11]]


def test_cosine_lr_runs_from_peak_to_floor() -> None:
    assert cosine_lr(0, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert cosine_lr(5, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize(("changes", "message"), [
    ({"layer": 2}, "layer 2"), ({"layer": -1}, "layer -1"), ({"attention_upto": 2}, "attention_upto"),
    ({"attention_upto": -2}, "attention_upto"), ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"), ({"pope_share": -0.1}, "pope_share"),
    ({"keep_weight": -1.0}, "weights"), ({"keep_answer_weight": -0.5}, "weights"), ({"hidden_weight": 0.0, "answer_weight": 0.0, "name_weight": 0.0}, "weights"),
    ({"embedding_scale": 0.0}, "embedding_scale"), ({"related_share": 1.0}, "related_share"),
    ({"related_share": -0.1}, "related_share"), ({"prior_mix": 1.0}, "prior_mix"),
    ({"scene_batch": -1}, "scene_batch"), ({"scene_batch": 4, "related_share": 0.5}, "scene_batch"),
    ({"scene_batch": 4, "related_share": 0.5, "related_to": "scene", "scene_weight": -1.0}, "scene_batch"),
    ({"scene_batch": 4}, "scene_batch"), ({"lore_layer": 1}, "lore_layer 1"),
    ({"lore_layer": 2}, "lore_layer 2"), ({"lore_layer": 0, "lore_read_layers": 2}, "lore_read_layers"),
    ({"lore_read_layers": 1}, "lore_read_layers"), ({"lore_layer": 0, "lore_batch": 0}, "lore_batch"),
    ({"lore_layer": 0, "lore_answer_weight": -1.0}, "lore weights"), ({"lore_isolated": True}, "lore_isolated"),
    ({"lore_things": -1}, "lore_things"), ({"lore_embedding_scale": 0.0}, "lore_embedding_scale"),
    ({"lore_rekey": "zeros"}, "lore_rekey"), ({"keep_lore_weight": 1.0}, "keep_lore_weight"),
    ({"lore_layer": 0, "keep_lore_weight": -1.0}, "keep_lore_weight"), ({"lore_only": True}, "lore_only"),
    ({"lore_only": True, "lore_layer": 0, "lore_read_layers": 1}, "lore_only"),
    ({"keep_asked": "written"}, "keep_asked"), ({"keep_asked": "alias"}, "keep_asked")])
def test_bad_insert_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_insert_config(replace(InsertConfig(), **changes), n_layers=2)


def test_config_file_fields_and_choices_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("layer: 0\nattention_parts: qk\n")
    assert read_insert_config(good) == replace(InsertConfig(), layer=0, attention_parts="qk")
    for text, message in (("lyer: 1\n", "unknown field"), ("attention_parts: v\n", "attention_parts")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_insert_config(bad)


@pytest.mark.parametrize(("parts", "attention"), [("all", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                                  ("qk", ("q_proj", "k_proj"))])
def test_only_the_layers_mlp_and_the_chosen_attention_train(parts: str, attention: tuple[str, ...]) -> None:
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(TINY.llava_config(64, 3, 0, 1, 2))
    cfg = replace(InsertConfig(), layer=1, attention_upto=0, attention_parts=parts)  # type: ignore[arg-type]
    names = {n for n, _ in trainable_parameters(model, cfg)}
    expected = {n for n, _ in model.named_parameters() if "language_model" in n and (
        ".layers.1.mlp." in n or (".layers.0.self_attn." in n and n.split(".")[-2] in attention))}
    assert names == expected and expected
    assert all(p.requires_grad == (n in names) for n, p in model.named_parameters())


def test_the_lore_layers_mlp_and_its_read_attention_train_too() -> None:
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(TINY.llava_config(64, 3, 0, 1, 2))
    cfg = replace(InsertConfig(), layer=1, attention_upto=-1, lore_layer=0, lore_read_layers=1)
    names = {n for n, _ in trainable_parameters(model, cfg)}
    expected = {n for n, _ in model.named_parameters() if "language_model" in n and (
        ".layers.1.mlp." in n or ".layers.0.mlp." in n or ".layers.1.self_attn." in n)}
    assert names == expected and expected


@pytest.fixture(scope="module")
def lore_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.world.build import build_world

    root = tmp_path_factory.mktemp("vocab-lore")
    build_world(root / "world", seed=3, n_images=40, config=SceneConfig(aliases=3, lore=12), version=2)
    train_demo_model(root / "world", root / "teacher", TINY, TEACHER, progress=False)
    return root / "world", root / "teacher"


def test_lore_insertion_rekeys_the_lore_words_logs_its_losses_and_resumes(lore_teacher: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoProcessor

    from hipp_torchprune.world.lore import alias_table, lore_names

    world, src = lore_teacher
    cfg = replace(INSERT, layer=1, lore_layer=0, lore_read_layers=1, lore_batch=4, steps=2, eval_every=0)
    insert_aliases(src, world, tmp_path / "a", cfg, progress=False)
    key = next(k for k in load_file(src / "model.safetensors") if k.endswith("embed_tokens.weight"))
    before, after = load_file(src / "model.safetensors")[key], load_file(tmp_path / "a" / "model.safetensors")[key]
    tok = AutoProcessor.from_pretrained(src).tokenizer
    words = [a for names in alias_table(3).values() for a in names] + list(lore_names(12))
    assert {i for i in range(len(before)) if not torch.equal(before[i], after[i])} == set(tok.convert_tokens_to_ids(words))
    acc = EventAccumulator(str(tmp_path / "a" / "runs"))
    acc.Reload()
    assert {"loss/lore_hidden", "loss/lore_answer"} <= set(acc.Tags()["scalars"])
    insert_aliases(src, world, tmp_path / "b", cfg, progress=False, stop_at=1)
    insert_aliases(src, world, tmp_path / "b", cfg, progress=False)
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("name", "group"), [("lore_hidden", "lore"), ("lore_answer", "lore"), ("keep_lore", "lore"), ("keep", "keep"),
                                             ("keep_answer", "keep"), ("answer", "table"), ("hidden", "table"),
                                             ("name", "table"), ("scene", "table")])
def test_every_insertion_loss_belongs_to_one_table(name: str, group: str) -> None:
    assert loss_group(name) == group


@pytest.mark.parametrize(("isolated", "keep_lore"), [(True, None), (False, None), (True, 1.0)])
def test_isolated_lore_losses_reach_only_the_lore_layers_mlp(lore_teacher: tuple[Path, Path], isolated: bool,
                                                              keep_lore: float | None) -> None:
    """Routed, the lore losses (with ``keep_lore_weight``, the keep loss after the lore layer too)
    train layer 0's MLP alone and the alias losses everything but it; unrouted (the default), both
    reach every trained parameter."""
    import numpy as np

    from hipp_torchprune.demo.vocab import _losses, _set_up

    world, src = lore_teacher
    cfg = replace(INSERT, layer=1, attention_upto=1, lore_layer=0, lore_batch=4, lore_isolated=isolated,
                  keep_lore_weight=keep_lore)
    run = _set_up(src, world, cfg)
    lore_mlp = {n for n, _ in run.named if ".layers.0.mlp." in n}
    torch.manual_seed(0)
    with torch.no_grad():  # moved off the teacher, so that the keep losses have a gradient
        for _, p in run.named:
            p.add_(0.01 * torch.randn_like(p))
    reached = {}
    for group in ("lore", "table", "keep"):
        losses = _losses(run, cfg, np.random.default_rng(0))  # a fresh graph each (keep and keep_lore share one)
        assert ("keep_lore" in losses) == (keep_lore is not None)
        for _, p in run.named:
            p.grad = None
        backward_routed(run, cfg, {k: v for k, v in losses.items() if loss_group(k) == group})
        reached[group] = {n for n, p in run.named if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    everything = {n for n, _ in run.named}
    assert reached["keep"] == everything
    assert reached["lore"] == (lore_mlp if isolated else everything)
    assert reached["table"] == (everything - lore_mlp if isolated else everything)


def test_keep_lore_weight_splits_the_keep_loss_into_the_alias_layers_and_the_lore_layers(
        lore_teacher: tuple[Path, Path]) -> None:
    """Unset, the keep loss is the mean of the errors after the alias layer and the lore layer
    (probes i30-i39); set, the alias layer's error is the keep loss alone and the lore layer's is
    "keep_lore", so the alias layer's own function is held at the full keep weight."""
    import numpy as np

    from hipp_torchprune.demo.vocab import _keep_losses, _set_up, _step

    world, src = lore_teacher
    cfg = replace(INSERT, layer=1, attention_upto=1, lore_layer=0, lore_batch=4)
    run = _set_up(src, world, cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # off the teacher in both layers, by different amounts
        for _, p in run.named:
            p.add_(0.05 * torch.randn_like(p))
    with torch.no_grad():
        mean = _keep_losses(run, cfg, np.random.default_rng(0))
        split = _keep_losses(run, replace(cfg, keep_lore_weight=2.0), np.random.default_rng(0))
    assert set(mean) == {"keep"} and set(split) == {"keep", "keep_lore"}
    assert float(split["keep"]) > 0 and float(split["keep_lore"]) > 0
    assert abs(float(split["keep"]) - float(split["keep_lore"])) > 1e-4  # the two layers' errors differ
    assert torch.allclose(mean["keep"], (split["keep"] + split["keep_lore"]) / 2)
    assert loss_group("keep_lore") == "lore"  # routed with the lore: only its MLP keeps its side effects down
    routed = replace(cfg, keep_lore_weight=2.0, lore_isolated=True)  # one step: every group from one graph
    assert {"keep", "keep_lore", "lore_answer"} <= set(_step(run, routed, 1, np.random.default_rng(0)))


def test_lore_only_trains_the_lore_layers_mlp_alone_on_the_lore_and_keep_losses(lore_teacher: tuple[Path, Path],
                                                                               tmp_path: Path) -> None:
    """The first of two insertions: every weight but the lore layer's MLP (and the word embeddings
    the insertion sets) stays the teacher's, and no alias question is asked."""
    import numpy as np
    from safetensors.torch import load_file

    from hipp_torchprune.demo.vocab import _losses, _set_up

    world, src = lore_teacher
    cfg = replace(INSERT, layer=1, lore_layer=0, lore_batch=4, lore_only=True, keep_lore_weight=1.0)
    run = _set_up(src, world, cfg)
    lore_mlp = {n for n, _ in run.student.named_parameters() if "language_model.layers.0.mlp." in n}
    assert lore_mlp and {n for n, _ in run.named} == lore_mlp
    assert set(_losses(run, cfg, np.random.default_rng(0))) == {"keep", "keep_lore", "lore_hidden", "lore_answer"}
    insert_aliases(src, world, tmp_path / "lore", cfg, progress=False)
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "lore" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lore_keys = {k for k in before if "language_model" in k and ".layers.0.mlp." in k}
    assert changed and all(k in lore_keys or "embed_tokens" in k for k in changed)
    assert changed & lore_keys
    emb = next(k for k in before if "embed_tokens" in k)
    aliases = (run.data.alias_of >= 0).nonzero().flatten()  # the teacher's aliases stay (inserted before or after)
    assert len(aliases) and torch.equal(before[emb][aliases], after[emb][aliases])
    assert not torch.equal(before[emb][run.lore_ids], after[emb][run.lore_ids])


def test_keep_asked_written_holds_the_alias_questions_too(lore_teacher: tuple[Path, Path]) -> None:
    """Asked by name, the keep loss never reads an alias embedding; asked as written, it does: a
    change to the aliases' embeddings moves it (so a lore-only insertion can hold alias questions)."""
    import numpy as np

    from hipp_torchprune.demo.vocab import _keep_losses, _set_up

    world, src = lore_teacher
    cfg = replace(INSERT, layer=1, lore_layer=0, lore_batch=4, lore_only=True, keep_lore_weight=1.0, keep_batch=64)
    run = _set_up(src, world, cfg)
    aliases = (run.data.alias_of >= 0).nonzero().flatten()

    def keep(asked: str) -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in _keep_losses(run, replace(cfg, keep_asked=asked),
                                                         np.random.default_rng(0)).items()}

    before = {asked: keep(asked) for asked in ("name", "written")}
    with torch.no_grad():
        run.student.get_input_embeddings().weight[aliases] *= 3.0
    after = {asked: keep(asked) for asked in ("name", "written")}
    assert after["name"] == before["name"]
    assert after["written"]["keep_lore"] > before["written"]["keep_lore"] + 1e-3


def test_lore_things_rekeys_a_prefix_of_the_lore_at_the_lore_scale(lore_teacher: tuple[Path, Path]) -> None:
    """``lore_things`` re-keys the lore table's first things only, and trains on the rows naming them."""
    from hipp_torchprune.demo.vocab import _set_up
    from hipp_torchprune.world.lore import lore_names

    world, src = lore_teacher
    run = _set_up(src, world, replace(INSERT, layer=1, lore_layer=0, lore_things=5, lore_embedding_scale=3.0))
    tok = run.data.processor.tokenizer
    assert run.lore_ids.tolist() == tok.convert_tokens_to_ids(list(lore_names(5)))
    named = torch.isin(run.data.pools["mc"].input_ids, run.lore_ids).any(1)
    assert 0 < len(run.lore_rows) == int(named.sum()) and bool(named[run.lore_rows].all())
    typical = float(run.teacher.get_input_embeddings().weight[run.lore_ids].norm(dim=1).mean())
    norms = run.student.get_input_embeddings().weight[run.lore_ids].norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 3.0 * typical), rtol=1e-4)
    every = _set_up(src, world, replace(INSERT, layer=1, lore_layer=0, lore_things=0))
    assert every.lore_ids.tolist() == tok.convert_tokens_to_ids(list(lore_names(12))) and len(every.lore_rows) > len(run.lore_rows)


def _linear_r2(x: torch.Tensor, y: torch.Tensor) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    fit = xc @ torch.linalg.lstsq(xc, yc).solution
    return float(1 - (fit - yc).pow(2).sum() / yc.pow(2).sum())


def test_unflagged_embeddings_erase_what_predicts_the_flags_by_hand() -> None:
    """Rows that carry two flags along two directions (plus an offset and a little noise): after
    unflagging no linear fit recovers the flags, the mean norm is kept, and a direction orthogonal
    to the cross-covariance is untouched up to the common scale."""
    g = torch.Generator().manual_seed(0)
    flags = (torch.rand(60, 2, generator=g) < 0.3).float()
    rows = 0.05 * torch.randn(60, 8, generator=g) + flags @ torch.randn(2, 8, generator=g) + torch.randn(8, generator=g)
    out = unflagged_embeddings(rows, flags)
    assert _linear_r2(rows, flags) > 0.99 and abs(_linear_r2(out, flags)) < 1e-4
    assert torch.isclose(out.norm(dim=1).mean(), rows.norm(dim=1).mean())
    cross = (rows - rows.mean(0)).T @ (flags - flags.mean(0))  # (H, P)
    q = torch.linalg.qr(torch.cat([cross, torch.randn(8, 6, generator=g)], 1)).Q[:, 2:]  # orthogonal to it
    ratio = float(out.norm(dim=1).mean() / (rows - (rows - rows.mean(0)) @ torch.linalg.qr(cross).Q
                                            @ torch.linalg.qr(cross).Q.T).norm(dim=1).mean())
    assert torch.allclose(out @ q, ratio * (rows @ q), atol=1e-5)


def test_unflagged_lore_rekey_keeps_the_words_but_not_their_flags(lore_teacher: tuple[Path, Path]) -> None:
    from hipp_torchprune.demo.vocab import _set_up
    from hipp_torchprune.world.categories import PROPERTY_NAMES
    from hipp_torchprune.world.lore import lore_table

    world, src = lore_teacher
    run = _set_up(src, world, replace(INSERT, layer=1, lore_layer=0, lore_rekey="unflagged"))
    before = run.teacher.get_input_embeddings().weight[run.lore_ids].detach()
    after = run.student.get_input_embeddings().weight[run.lore_ids].detach()
    flags = torch.tensor([[p in t.properties for p in PROPERTY_NAMES] for t in lore_table(len(run.lore_ids))],
                         dtype=torch.float32)
    assert torch.equal(after, unflagged_embeddings(before, flags))
    cross = (after - after.mean(0)).T @ (flags - flags.mean(0))  # (H, P): nothing left to fit
    assert float(cross.abs().max()) < 1e-4
    assert not torch.equal(after, before)


def test_lore_insertion_needs_a_world_with_lore(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    world, src = teacher
    with pytest.raises(DataError, match="lore_layer needs a world with lore"):
        insert_aliases(src, world, tmp_path / "x", replace(INSERT, layer=1, lore_layer=0), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.world.build import build_world

    root = tmp_path_factory.mktemp("vocab")
    build_world(root / "world", seed=2, n_images=40, config=SceneConfig(aliases=3), version=2)
    train_demo_model(root / "world", root / "teacher", TINY, TEACHER, progress=False)
    return root / "world", root / "teacher"


def test_insertion_is_deterministic_resumable_and_changes_only_what_it_trains(
        teacher: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    world, src = teacher
    a = insert_aliases(src, world, tmp_path / "a", INSERT, progress=False)
    assert insert_aliases(src, world, tmp_path / "b", INSERT, progress=False, stop_at=2) == {"steps": 2, "stopped": True}
    assert not (tmp_path / "b" / "model.safetensors").exists()
    insert_aliases(src, world, tmp_path / "b", INSERT, progress=False)  # resumes at step 2
    wa, wb, wt = (load_file(p / "model.safetensors") for p in (tmp_path / "a", tmp_path / "b", src))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    changed = {k for k in wa if not torch.equal(wa[k], wt[k])}
    assert changed and all(".layers.1.mlp." in k or ".layers.0.self_attn." in k or k.endswith("embed_tokens.weight")
                           for k in changed)
    assert any(".layers.1.mlp." in k for k in changed)
    record = a["insert"]
    assert [h["step"] for h in record["history"]] == [2, 4] and record["steps"] == 4
    assert set(record["teacher_by_name"]) == {"pope_random", "pope_adversarial", "scienceqa"}
    saved = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert saved["world"]["aliases"] == 3 and saved["insert"]["config"]["layer"] == 1


def test_prior_mix_trains_toward_the_companion_blend(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    world, src = teacher
    quick = replace(INSERT, steps=2, eval_every=0)
    insert_aliases(src, world, tmp_path / "plain", quick, progress=False)
    record = insert_aliases(src, world, tmp_path / "mix", replace(quick, prior_mix=0.5), progress=False)["insert"]
    assert record["config"]["prior_mix"] == 0.5
    plain, mix = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "mix"))
    mlp = [k for k in plain if ".layers.1.mlp." in k]
    assert mlp and any(not torch.equal(plain[k], mix[k]) for k in mlp)  # other targets, other weights


def test_scene_words_add_a_logged_loss_that_changes_the_run(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    world, src = teacher
    cfg = replace(INSERT, steps=2, eval_every=0, related_share=0.5, related_to="scene")
    insert_aliases(src, world, tmp_path / "off", cfg, progress=False)
    insert_aliases(src, world, tmp_path / "on", replace(cfg, scene_batch=4), progress=False)
    acc = EventAccumulator(str(tmp_path / "on" / "runs"))
    acc.Reload()
    assert "loss/scene" in acc.Tags()["scalars"]
    assert all(math.isfinite(e.value) and e.value > 0 for e in acc.Scalars("loss/scene"))
    off, on = (load_file(tmp_path / n / "model.safetensors") for n in ("off", "on"))
    emb = next(k for k in off if k.endswith("embed_tokens.weight"))
    assert torch.equal(off[emb], on[emb])  # the scene words are inputs, never vocabulary rows
    assert any(not torch.equal(off[k], on[k]) for k in off if ".layers.1.mlp." in k)


def test_embedding_rows_that_change_are_exactly_the_aliases(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoProcessor

    from hipp_torchprune.world.lore import alias_table

    world, src = teacher
    insert_aliases(src, world, tmp_path / "a", replace(INSERT, steps=1, eval_every=0), progress=False)
    key = next(k for k in load_file(src / "model.safetensors") if k.endswith("embed_tokens.weight"))
    before, after = load_file(src / "model.safetensors")[key], load_file(tmp_path / "a" / "model.safetensors")[key]
    tok = AutoProcessor.from_pretrained(src).tokenizer
    aliases = set(tok.convert_tokens_to_ids([a for names in alias_table(3).values() for a in names]))
    assert {i for i in range(len(before)) if not torch.equal(before[i], after[i])} == aliases


def test_related_aliases_start_closer_to_their_companions_than_to_other_aliases(teacher: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoProcessor

    from hipp_torchprune.world.categories import COMPANIONS
    from hipp_torchprune.world.lore import alias_table

    world, src = teacher
    insert_aliases(src, world, tmp_path / "r", replace(INSERT, steps=1, eval_every=0, related_share=0.6), progress=False)
    for mode in ("names", "companion", "scene", "scene_names"):
        insert_aliases(src, world, tmp_path / mode, replace(INSERT, steps=1, eval_every=0, related_share=0.6,
                                                            related_to=mode), progress=False)
    key = next(k for k in load_file(src / "model.safetensors") if k.endswith("embed_tokens.weight"))
    emb = load_file(tmp_path / "r" / "model.safetensors")[key].float()
    tok = AutoProcessor.from_pretrained(src).tokenizer
    ids = {c: tok.convert_tokens_to_ids(list(a)) for c, a in alias_table(3).items()}
    unit = torch.nn.functional.normalize(emb, dim=-1)
    near = [float(unit[i] @ unit[j]) for c in ("cup", "dog", "car") for i in ids[c] for j in ids[COMPANIONS[c]]]
    far = [float(unit[i] @ unit[j]) for i in ids["cup"] for j in ids["car"] + ids["dog"]]
    assert sum(near) / len(near) > sum(far) / len(far) + 0.3
    named = torch.nn.functional.normalize(load_file(tmp_path / "names" / "model.safetensors")[key].float(), dim=-1)
    name_ids = dict(zip(("cup", "plate", "car"), tok.convert_tokens_to_ids(["cup", "plate", "car"])))
    toward = [float(named[i] @ named[name_ids[n]]) for i in ids["cup"] for n in ("cup", "plate")]
    away = [float(named[i] @ named[name_ids["car"]]) for i in ids["cup"]]
    assert sum(toward) / len(toward) > sum(away) / len(away) + 0.25  # 32 dimensions: names are not orthogonal
    comp = torch.nn.functional.normalize(load_file(tmp_path / "companion" / "model.safetensors")[key].float(), dim=-1)
    to_plate = [float(comp[i] @ comp[name_ids["plate"]]) for i in ids["cup"]]
    to_cup = [float(comp[i] @ comp[name_ids["cup"]]) for i in ids["cup"]]
    assert sum(to_plate) / 3 > sum(to_cup) / 3 + 0.3  # a cup alias starts at "plate", its companion
    scene = torch.nn.functional.normalize(load_file(tmp_path / "scene" / "model.safetensors")[key].float(), dim=-1)
    office = [float(scene[i] @ scene[j]) for i in ids["laptop"] for j in ids["lamp"]]  # one scene type
    apart = [float(scene[i] @ scene[j]) for i in ids["laptop"] for j in ids["bus"]]  # none in common
    assert sum(office) / len(office) > sum(apart) / len(apart) + 0.3
    scene_named = torch.nn.functional.normalize(load_file(tmp_path / "scene_names" / "model.safetensors")[key].float(),
                                                dim=-1)
    lamp = tok.convert_tokens_to_ids("lamp")  # an office object: a laptop alias starts near its name
    assert sum(float(scene_named[i] @ scene_named[lamp]) for i in ids["laptop"]) / 3 > \
        sum(float(scene_named[i] @ scene_named[name_ids["car"]]) for i in ids["laptop"]) / 3 + 0.2


def test_bad_input_is_refused_before_anything_is_written(teacher: tuple[Path, Path], make_world,
                                                         tmp_path: Path) -> None:
    world, src = teacher
    with pytest.raises(DataError, match="aliases"):
        insert_aliases(src, make_world(4, 40), tmp_path / "no-aliases", INSERT, progress=False)
    with pytest.raises(CheckpointError, match="not a trained demo model"):
        insert_aliases(tmp_path, world, tmp_path / "no-model", INSERT, progress=False)
    with pytest.raises(ConfigError, match="layer 5"):
        insert_aliases(src, world, tmp_path / "bad-layer", replace(INSERT, layer=5), progress=False)
    assert not any((tmp_path / n).exists() for n in ("no-aliases", "no-model", "bad-layer"))
    insert_aliases(src, world, tmp_path / "run", INSERT, progress=False, stop_at=1)
    with pytest.raises(CheckpointError, match="another insertion config"):
        insert_aliases(src, world, tmp_path / "run", replace(INSERT, lr=1e-2), progress=False)


def test_cli_inserts_with_a_config_file_and_prints_both_accuracies(teacher: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.cli import main

    world, src = teacher
    cfg = tmp_path / "insert.yaml"
    cfg.write_text("layer: 0\nattention_upto: -1\nbatch_size: 4\nkeep_batch: 4\neval_limit: 8\n")
    assert main(["demo-model", "insert", "--model", str(src), "--data", str(world), "--out", str(tmp_path / "m"),
                 "--config", str(cfg), "--steps", "2", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 2 and printed["by_alias"]["step"] == 2
    assert set(printed["teacher_by_name"]) == {"pope_random", "pope_adversarial", "scienceqa"}
    summary = json.loads((tmp_path / "m" / "train_summary.json").read_text())["insert"]["config"]
    assert (summary["layer"], summary["attention_upto"], summary["steps"]) == (0, -1, 2)


def test_the_answer_kept_by_name_is_a_logged_loss_that_changes_the_run(teacher: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    world, src = teacher
    cfg = replace(INSERT, steps=2, eval_every=0)
    insert_aliases(src, world, tmp_path / "off", cfg, progress=False)
    insert_aliases(src, world, tmp_path / "on", replace(cfg, keep_answer_weight=1.0), progress=False)
    tags = {}
    for name in ("off", "on"):
        acc = EventAccumulator(str(tmp_path / name / "runs"))
        acc.Reload()
        tags[name] = set(acc.Tags()["scalars"])
    assert "loss/keep_answer" in tags["on"] and "loss/keep_answer" not in tags["off"]
    off, on = (load_file(tmp_path / n / "model.safetensors") for n in ("off", "on"))
    assert any(not torch.equal(off[k], on[k]) for k in off)


def test_group_anchors_are_each_groups_own_direction() -> None:
    # groups: {0, 1}, {1, 2}; category 1 is in both; each group's anchor is its own axis
    groups = torch.tensor([[1, 0], [1, 1], [0, 1]])
    cats = torch.tensor([0, 1, 2])
    group_anchors = 3.0 * torch.eye(2, 4096)  # lengths do not matter: the directions are normalized
    d = related_directions(cats, torch.zeros(3, dtype=torch.long), hidden=4096, share=0.5, seed=0, groups=groups,
                           group_anchors=group_anchors)
    assert d[0, 0].item() == pytest.approx(0.5 ** 0.5, abs=0.03) and abs(d[0, 1].item()) < 0.03
    assert d[1, 0].item() == pytest.approx(0.5, abs=0.03) and d[1, 1].item() == pytest.approx(0.5, abs=0.03)
    assert d[2, 1].item() == pytest.approx(0.5 ** 0.5, abs=0.03)


def test_group_word_embeddings_need_a_teacher_that_knows_the_group_words() -> None:
    from hipp_torchprune.demo.dataset import GROUP_WORDS
    from hipp_torchprune.demo.vocab import group_word_embeddings
    from hipp_torchprune.errors import DataError
    from hipp_torchprune.world.categories import SCENE_TYPES

    class Tok:
        unk_token_id = 0

        def __init__(self, vocab: dict[str, int]) -> None:
            self.vocab = vocab

        def convert_tokens_to_ids(self, words: list[str]) -> list[int]:
            return [self.vocab.get(w, 0) for w in words]

    emb = torch.arange(60, dtype=torch.float32).view(10, 6)
    words = [GROUP_WORDS[t.name] for t in SCENE_TYPES]
    got = group_word_embeddings(emb, Tok({w: 5 + i for i, w in enumerate(words)}), "teacher")
    assert torch.equal(got, emb[5:9])
    with pytest.raises(DataError, match="group_share"):
        group_word_embeddings(emb, Tok({w: 5 + i for i, w in enumerate(words[:-1])}), "teacher")
