"""Demo-model training on a world with aliases: stated aliases, aliased yes/no questions, frozen alias embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hipp_torchprune.demo.config import TrainConfig
from hipp_torchprune.demo.dataset import ALIAS_PROMPT, build_examples
from hipp_torchprune.demo.train import train_demo_model
from hipp_torchprune.errors import DataError
from hipp_torchprune.world.categories import CATEGORY_NAMES
from hipp_torchprune.world.lore import alias_table
from hipp_torchprune.world.scenes import SceneConfig
from tests.demo.tiny import TINY

K = 3
RECIPE = TrainConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=0, checkpoint_every=2, pool_rounds=1,
                     threads=1, curriculum=(0.2, 0.5), aux_layer=0, option_layer=0, mix_alias=1.0,
                     freeze_lore=True, home_dropout=0.75, grounding_home=1, reasoning_home=0, knowledge_home=1)


@pytest.fixture(scope="module")
def alias_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hipp_torchprune.world.build import build_world

    out = tmp_path_factory.mktemp("aliases") / "world"
    build_world(out, seed=2, n_images=40, config=SceneConfig(aliases=K), version=2)
    return out


def test_every_alias_is_stated_once_and_yes_no_questions_use_aliases(alias_world: Path) -> None:
    _, ex, _ = build_examples(alias_world, seed=0, rounds=1)
    table = alias_table(K)
    assert sorted((e.prompt, e.answer) for e in ex["alias"]) == sorted(
        (f"{ALIAS_PROMPT} {a}", f"{c} .") for c, names in table.items() for a in names)
    named = {a for names in table.values() for a in names}
    for kind in ("pope", "short"):
        words = [e.prompt.split(" ")[3] if kind == "pope" else e.prompt for e in ex[kind]]
        assert words and set(words) <= named  # no yes/no question names a category directly
    captions = " ".join(e.answer for e in ex["caption"]).split()
    assert set(captions) <= set(CATEGORY_NAMES)  # captions keep the category names


def test_alias_training_is_deterministic_and_keeps_alias_embeddings_frozen(alias_world: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from safetensors.torch import load_file
    from transformers import AutoProcessor

    a = train_demo_model(alias_world, tmp_path / "a", TINY, RECIPE, progress=False)
    train_demo_model(alias_world, tmp_path / "b", TINY, RECIPE, progress=False)
    train_demo_model(alias_world, tmp_path / "one", TINY, replace(RECIPE, steps=1), progress=False)
    wa, wb, once = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b", "one"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["pool_sizes"]["alias"] == K * len(CATEGORY_NAMES) and a["world"]["aliases"] == K
    tok = AutoProcessor.from_pretrained(tmp_path / "a").tokenizer
    ids = torch.tensor(tok.convert_tokens_to_ids([x for v in alias_table(K).values() for x in v]))
    assert (ids != tok.unk_token_id).all()  # every alias is a word of the vocabulary
    key = next(k for k in wa if k.endswith("embed_tokens.weight"))
    assert torch.equal(wa[key][ids], once[key][ids])  # frozen: five more steps moved no alias row
    assert not torch.equal(wa[key], once[key])  # the other words did learn


def test_alias_options_on_a_world_without_aliases_are_refused_before_writing(make_world, tmp_path: Path) -> None:
    for changes, message in (({"mix_alias": 0.5}, "world with aliases"), ({"freeze_lore": True}, "lore or aliases")):
        cfg = TrainConfig(steps=1, eval_every=0, option_layer=0, aux_layer=0, **changes)  # type: ignore[arg-type]
        with pytest.raises(DataError, match=message):
            train_demo_model(make_world(4, 40), tmp_path / "run", TINY, cfg, progress=False)
        assert not (tmp_path / "run").exists()


def _tb_scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "runs"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_table_homes_route_facts_and_aliases_only_under_memory_homes() -> None:
    from dataclasses import replace

    from hipp_torchprune.demo.homes import EVERY_LAYER
    from hipp_torchprune.demo.pretrain import table_homes

    flags = torch.tensor([True, False, True])
    cfg = replace(RECIPE, home_kinds="memory", grounding_home=1, knowledge_home=3)
    assert table_homes(flags, cfg).tolist() == [3, 1, 3]
    assert table_homes(flags, replace(cfg, home_kinds="all")).tolist() == [EVERY_LAYER] * 3


def test_text_pretraining_is_deterministic_resumes_after_it_and_learns_the_tables(alias_world: Path,
                                                                                  tmp_path: Path) -> None:
    from dataclasses import replace

    from safetensors.torch import load_file

    cfg = replace(RECIPE, home_dropout=0.0, home_routing=True, home_kinds="memory", pretrain_steps=40,
                  pretrain_batch=16, warmup_steps=2)
    a = train_demo_model(alias_world, tmp_path / "a", TINY, cfg, progress=False)
    assert train_demo_model(alias_world, tmp_path / "b", TINY, cfg, progress=False, stop_at=2)["stopped"]
    train_demo_model(alias_world, tmp_path / "b", TINY, cfg, progress=False)  # resumes after pre-training
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = _tb_scalars(tmp_path / "a", "pretrain/loss")
    assert len(losses) == 40 and sum(losses[-5:]) < 0.85 * sum(losses[:5])  # the table loss falls (5.2 -> 4.1)
    assert len(_tb_scalars(tmp_path / "b", "pretrain/loss")) == 40  # not run again on resume
    plain = train_demo_model(alias_world, tmp_path / "c", TINY, replace(cfg, pretrain_steps=0), progress=False)
    wc = load_file(tmp_path / "c" / "model.safetensors")
    assert a["steps"] == plain["steps"] and not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("option", ["pretrain_steps", "table_rows"])
def test_table_options_on_a_world_without_tables_are_refused_before_writing(make_world, tmp_path: Path,
                                                                             option: str) -> None:
    cfg = TrainConfig(steps=1, eval_every=0, option_layer=0, aux_layer=0, **{option: 5})  # type: ignore[arg-type]
    with pytest.raises(DataError, match=f"{option} needs a world with lore or aliases"):
        train_demo_model(make_world(4, 40), tmp_path / "run", TINY, cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_bad_table_block_is_refused_before_writing(alias_world: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from hipp_torchprune.config import ConfigError

    for changes, message in (({"table_rows": -1}, "table_rows=-1"), ({"table_format": "text"}, "table_format='text'"),
                             ({"alias_weight": -1.0}, "alias_weight=-1.0"),
                             ({"alias_weight": 1.0, "aux_layer": -1}, "aux_layer >= 0"),
                             ({"name_share": 1.5}, "name_share=1.5"), ({"table_weight": -0.5}, "table_weight=-0.5"),
                             ({"alias_weight": 1.0, "alias_layer": 2}, "alias_layer=2")):
        with pytest.raises(ConfigError, match=message):
            train_demo_model(alias_world, tmp_path / "run", TINY, replace(RECIPE, **changes), progress=False)
        assert not (tmp_path / "run").exists()


def test_table_block_rows_follow_an_image_with_the_answer_after_the_word_unless_chat(alias_world: Path) -> None:
    from hipp_torchprune.demo.dataset import vocabulary
    from hipp_torchprune.demo.pretrain import table_pool
    from hipp_torchprune.models.processors import build_llava_processor

    _, ex, _ = build_examples(alias_world, seed=0, rounds=1)
    processor = build_llava_processor(sorted(vocabulary(ex)), 64, 16)
    tok = processor.tokenizer
    text, flags = table_pool(ex, processor)
    pools = {"raw": table_pool(ex, processor, 16, raw=True), "chat": table_pool(ex, processor, 16)}
    image = tok.convert_tokens_to_ids("<image>")
    assert ((text.input_ids == image).sum(1) == 0).all()
    word = ex["alias"][0].prompt.split()[-1]
    for name, (pool, pool_flags) in pools.items():
        assert torch.equal(flags, pool_flags) and int(pool_flags.sum()) == len(ex["fact"])
        assert ((pool.input_ids == image).sum(1) == 16).all()  # every row follows an image
        prompt = tok.convert_ids_to_tokens(pool.input_ids[0, :int(pool.answer_start[0])])
        assert prompt.index("<image>") < prompt.index(ALIAS_PROMPT.split()[0])
        assert (prompt[-1] == word) == (name == "raw")  # raw: the answer comes right after the word
        answer = pool.input_ids[0, int(pool.answer_start[0]):int(pool.lengths[0])]
        assert torch.equal(answer, text.input_ids[0, int(text.answer_start[0]):int(text.lengths[0])])


def test_a_mixed_block_states_every_row_once_in_each_format(alias_world: Path) -> None:
    from hipp_torchprune.demo.dataset import concat_pools, vocabulary
    from hipp_torchprune.demo.pretrain import block_pool
    from hipp_torchprune.models.processors import build_llava_processor

    _, ex, _ = build_examples(alias_world, seed=0, rounds=1)
    processor = build_llava_processor(sorted(vocabulary(ex)), 64, 16)
    (raw, raw_facts), (chat, chat_facts) = (block_pool(ex, processor, 16, f) for f in ("raw", "chat"))
    mixed, flags = block_pool(ex, processor, 16, "mixed")
    n = len(raw.lengths)
    assert torch.equal(flags, torch.cat([raw_facts, chat_facts])) and len(mixed.lengths) == 2 * n
    for part, pool in ((slice(0, n), raw), (slice(n, 2 * n), chat)):
        assert torch.equal(mixed.lengths[part], pool.lengths) and torch.equal(mixed.answer_start[part], pool.answer_start)
        width = pool.input_ids.shape[1]
        assert torch.equal(mixed.input_ids[part, :width], pool.input_ids)
        assert (mixed.input_ids[part, width:] == processor.tokenizer.pad_token_id).all()
    both = concat_pools(chat, raw, pad_id=-7)
    assert (both.input_ids[n:, raw.input_ids.shape[1]:] == -7).all()  # the narrower pool is padded


def test_table_block_is_logged_deterministic_resumable_and_learns_the_tables(alias_world: Path,
                                                                            tmp_path: Path) -> None:
    from dataclasses import replace

    from safetensors.torch import load_file

    cfg = replace(RECIPE, home_dropout=0.5, home_routing=True, home_kinds="tables", mix_alias=0.0,
                  table_rows=24, table_format="mixed", alias_weight=1.0, alias_layer=1, steps=40, lr=3e-3)
    train_demo_model(alias_world, tmp_path / "a", TINY, cfg, progress=False)
    assert train_demo_model(alias_world, tmp_path / "b", TINY, cfg, progress=False, stop_at=13)["stopped"]
    train_demo_model(alias_world, tmp_path / "b", TINY, cfg, progress=False)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = _tb_scalars(tmp_path / "a", "loss/table")
    assert len(losses) == 40 and sum(losses[-5:]) < 0.7 * sum(losses[:5])  # the table loss falls
    named = _tb_scalars(tmp_path / "a", "loss/aux_alias")
    assert len(named) == 40 and sum(named[-5:]) < sum(named[:5])  # aliases move towards their categories
    train_demo_model(alias_world, tmp_path / "c", TINY, replace(cfg, table_rows=0), progress=False)
    assert not _has_tag(tmp_path / "c", "loss/table")  # no block, no second forward


def _has_tag(run_dir: Path, tag: str) -> bool:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "runs"))
    acc.Reload()
    return tag in acc.Tags()["scalars"]


def test_alias_categories_map_each_alias_token_to_its_category_and_nothing_else(alias_world: Path) -> None:

    from hipp_torchprune.data import world_render
    from hipp_torchprune.demo.dataset import vocabulary
    from hipp_torchprune.demo.train import alias_categories
    from hipp_torchprune.models.processors import build_llava_processor

    _, ex, _ = build_examples(alias_world, seed=0, rounds=1)
    tok = build_llava_processor(sorted(vocabulary(ex)), 64, 16).tokenizer
    table = alias_categories(tok, world_render(alias_world))
    assert table is not None and int((table >= 0).sum()) == K * len(CATEGORY_NAMES)
    for c, names in alias_table(K).items():
        assert table[tok.convert_tokens_to_ids(list(names))].tolist() == [CATEGORY_NAMES.index(c)] * K
    assert table[tok.convert_tokens_to_ids(CATEGORY_NAMES[0])] == -1  # a category's own name is no alias
    assert alias_categories(tok, SceneConfig()) is None


def test_alias_loss_reads_only_alias_positions() -> None:
    from hipp_torchprune.demo.train import alias_loss

    class Head(torch.nn.Module):
        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            return feats[..., :3]  # the features are the logits

    alias_of = torch.tensor([-1, -1, 2, 0])  # tokens 2 and 3 are aliases of categories 2 and 0
    ids = torch.tensor([[0, 2, 1], [3, 1, 1]])
    feats = torch.zeros(2, 3, 4)
    feats[0, 1, 2] = feats[1, 0, 0] = 50.0  # confident and right at both alias positions
    feats[0, 0, 1] = feats[1, 2, 1] = 50.0  # non-alias positions say anything: not read
    assert float(alias_loss(Head(), feats, ids, alias_of)) < 1e-6
    feats[1, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # uniform over 3 at one of two positions
    assert float(alias_loss(Head(), feats, ids, alias_of)) == pytest.approx(torch.log(torch.tensor(3.0)).item() / 2)
    assert alias_loss(Head(), feats, torch.tensor([[0, 1]]), alias_of) is None


def test_names_for_aliases_swaps_only_the_flagged_rows_alias_tokens() -> None:
    from hipp_torchprune.demo.train import names_for_aliases

    alias_of = torch.tensor([-1, -1, 1, 0, -1])  # tokens 2 and 3 name categories 1 and 0
    name_ids = torch.tensor([40, 41])
    ids = torch.tensor([[0, 2, 4, 3], [2, 3, 1, 0]])
    out = names_for_aliases(ids, torch.tensor([True, False]), alias_of, name_ids)
    assert out.tolist() == [[0, 41, 4, 40], [2, 3, 1, 0]]
    assert ids.tolist() == [[0, 2, 4, 3], [2, 3, 1, 0]]  # the input is not changed in place


def test_name_share_changes_training_and_stays_deterministic(alias_world: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from safetensors.torch import load_file

    cfg = replace(RECIPE, mix_alias=0.0, mix_pope=1.0, mix_mc=0.0, mix_caption=0.0, mix_short=0.0,
                  home_dropout=0.0, steps=4)
    runs = {name: train_demo_model(alias_world, tmp_path / name, TINY,
                                   replace(cfg, name_share=share, eval_every=2, eval_limit=8), progress=False)
            for name, share in (("a", 1.0), ("b", 1.0), ("c", 0.0))}
    wa, wb, wc = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # asked by name, the model sees other tokens
    # a run asked by name is also scored by name (the aliases it never learned would read chance)
    by_name = {k for k in runs["a"]["calibration_history"][-1] if k.startswith("by_name/")}
    assert by_name == {f"by_name/{t}/{m}" for t in ("pope_random", "pope_adversarial") for m in
                       ("accuracy", "balanced_accuracy")} | {"by_name/scienceqa/accuracy"}
    assert not any(k.startswith("by_name/") for k in runs["c"]["calibration_history"][-1])


def test_frozen_words_get_no_gradient_so_they_never_count_in_the_clipped_norm(alias_world: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hipp_torchprune.demo.train import _frozen_rows

    model = LlamaForCausalLM(LlamaConfig(vocab_size=12, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))

    class Tok:
        def convert_tokens_to_ids(self, words: list[str]) -> list[int]:
            return [int(w) for w in words]

    ids, rows = _frozen_rows(model, Tok(), ["3", "5"])
    assert ids.tolist() == [3, 5] and torch.equal(rows, model.get_input_embeddings().weight[ids])
    batch = torch.tensor([[1, 3, 4, 5, 6]])
    model(input_ids=batch, labels=batch).loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert (grad[[3, 5]] == 0).all() and (grad[[1, 4]] != 0).any()  # the other words still learn
