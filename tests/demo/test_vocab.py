"""Vocabulary insertion (``hipp_torchprune.demo.vocab``): what trains, how the losses are routed,
and tiny end-to-end runs that are deterministic, resumable and change only what they name. The
pure functions are checked in ``test_insert_math.py``, the config in ``test_insert_config.py``."""

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
    backward_routed,
    companion_aliases,
    every_alias_by_name,
    insert_aliases,
    loss_group,
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


def test_companion_aliases_ask_about_the_companion() -> None:
    alias_of = torch.tensor([-1, 0, 0, 1, 2, -1])  # tokens 1-2 name category 0, 3 names 1, 4 names 2
    companion = torch.tensor([1, 0, 0])  # 0 <-> 1, 2 -> 0
    assert companion_aliases(alias_of, companion).tolist() == [-1, 1, 1, 0, 0, -1]
    names = torch.tensor([10, 11, 12])
    ids = torch.tensor([[5, 1, 3], [4, 0, 2]])
    assert every_alias_by_name(ids, companion_aliases(alias_of, companion), names).tolist() == [[5, 11, 10], [10, 0, 11]]


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


def test_prior_keeps_yes_blends_only_the_rows_whose_gold_answer_is_no(teacher: tuple[Path, Path]) -> None:
    """On POPE rows (some gold "Yes", some "No"), ``prior_keeps_yes`` keeps the gold-"Yes" rows'
    targets exactly the teacher's by name and gives every other row the symmetric blend."""
    import numpy as np

    from hipp_torchprune.demo.insert_math import gold_yes_rows
    from hipp_torchprune.demo.vocab import _pool_batch, _set_up, alias_targets

    world, src = teacher
    cfg = replace(INSERT, prior_mix=0.5)
    run = _set_up(src, world, cfg)
    batch = _pool_batch(run.data, "pope", 16, np.random.default_rng(0))
    yes = gold_yes_rows(batch["labels"], run.yes_ids)  # (B,)
    assert 0 < int(yes.sum()) < len(yes)  # both kinds of row are in the batch
    plain = alias_targets(run, replace(cfg, prior_mix=0.0), batch)
    blend = alias_targets(run, cfg, batch)
    kept = alias_targets(run, replace(cfg, prior_keeps_yes=True), batch)
    for k in range(2):  # logits, hidden states
        assert torch.equal(kept[k][yes], plain[k][yes]) and torch.equal(kept[k][~yes], blend[k][~yes])
        assert not torch.equal(blend[k][yes], plain[k][yes])  # the blend does move the gold-"Yes" rows


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
