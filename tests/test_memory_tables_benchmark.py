"""benchmarks/memory_tables.py: the table rows, the recall measure and a routed run."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch

from tests.benchmark_scripts import load_benchmark


def test_table_rows_put_each_table_in_its_home_and_label_only_the_answers() -> None:
    script = load_benchmark("memory_tables")
    ids, labels, homes, vocab = script.table_rows(n_aliases=4, n_lore=3)
    assert homes.tolist() == [script.LORE_HOME] * 3 + [script.ALIAS_HOME] * 4
    assert ids.shape == labels.shape and int(ids.max()) < vocab
    assert (labels[:, :4] == -100).all()  # "<s> Fact|Alias : word" is never a target
    assert ((labels[3:] != -100).sum(1) == 2).all()  # an alias's answer: its category and "."


def test_exact_recall_counts_a_row_only_when_every_answer_token_is_right() -> None:
    script = load_benchmark("memory_tables")
    ids = torch.tensor([[1, 5, 6, 0], [1, 5, 7, 8], [1, 9, 6, 0]])
    labels = torch.tensor([[-100, 5, 6, -100], [-100, 5, 7, 8], [-100, 9, 6, -100]])
    logits = torch.zeros(3, 4, 10)
    for r, t in ((0, [5, 6, 0, 0]), (1, [5, 7, 3, 0]), (2, [9, 6, 0, 0])):  # row 1 misses its last token
        logits[r, torch.arange(4), torch.tensor(t)] = 1.0
    model = lambda input_ids: SimpleNamespace(logits=logits)
    assert script.exact_recall(model, ids, labels, n_lore=2) == (0.5, 1.0)


def test_a_routed_run_trains_and_keeps_the_made_up_embeddings() -> None:
    script = load_benchmark("memory_tables")
    ids, labels, homes, vocab = script.table_rows(n_aliases=6, n_lore=4)
    args = argparse.Namespace(homes="route", width=16, steps=3, drop=0.0, lore=4, aliases=6, context=0, batch=128,
                              then_steps=0, then_context=0)
    before = script.train(argparse.Namespace(**{**vars(args), "steps": 1}), ids, labels, homes, vocab)
    before = before.model.embed_tokens.weight.detach()  # one step from the seeded init
    model = script.train(args, ids, labels, homes, vocab)
    after = model.model.embed_tokens.weight.detach()
    assert torch.equal(after[5:15], before[5:15]) and not torch.equal(after[15:], before[15:])
    assert len(script.row_scores(model, ids)) == script.LAYERS


def test_context_tokens_go_after_bos_and_are_never_targets() -> None:
    script = load_benchmark("memory_tables")
    ids, labels = torch.tensor([[1, 2, 4, 9]]), torch.tensor([[-100, -100, -100, 9]])
    same = script.with_context(ids, labels, 0, 50, torch.Generator().manual_seed(0))
    assert same[0] is ids and same[1] is labels
    out_ids, out_labels = script.with_context(ids, labels, 3, 50, torch.Generator().manual_seed(0))
    assert out_ids[0, 0] == 1 and out_ids[0, 4:].tolist() == [2, 4, 9]
    assert ((out_ids[0, 1:4] >= 50) & (out_ids[0, 1:4] < 50 + script.CONTEXT_WORDS)).all()
    assert out_labels[0].tolist() == [-100] * 6 + [9]


def test_routing_with_dropout_still_trains_only_the_home_mlps_but_on_a_perturbed_forward() -> None:
    script = load_benchmark("memory_tables")
    ids, labels, homes, vocab = script.table_rows(n_aliases=6, n_lore=4)
    args = argparse.Namespace(homes="route", width=16, steps=3, drop=0.9, lore=4, aliases=6, context=0, batch=128,
                              then_steps=0, then_context=0)
    routed = script.train(args, ids, labels, homes, vocab).model.layers
    both = script.train(argparse.Namespace(**{**vars(args), "homes": "both"}), ids, labels, homes, vocab).model.layers
    for i in range(script.LAYERS):
        same = torch.equal(routed[i].mlp.up_proj.weight, both[i].mlp.up_proj.weight)
        assert same == (i not in (script.ALIAS_HOME, script.LORE_HOME))  # only the homes learn, differently
