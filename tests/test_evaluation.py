"""Evaluation math (hand-checked), token variants, and end-to-end scoring of a tiny random LLaVA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hipp_torchprune.cli import main
from hipp_torchprune.demo.config import DemoModelConfig
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import (
    answer_token_ids,
    evaluate,
    gold_loglik,
    log_margin,
    log_sigmoid,
    logsumexp,
    mc_metrics,
    option_logprobs,
    padded_position_ids,
    pope_metrics,
    prepare_eval,
    with_position_ids,
)
from hipp_torchprune.models.processors import build_llava_processor
from hipp_torchprune.world.build import build_world
from hipp_torchprune.world.categories import CATEGORY_NAMES
from hipp_torchprune.world.scienceqa import OWNERS


def test_logsumexp_and_margin() -> None:
    assert logsumexp([math.log(0.2), math.log(0.3)]) == pytest.approx(math.log(0.5))
    assert logsumexp([]) == -math.inf
    lp = [math.log(p) for p in (0.5, 0.1, 0.3, 0.1)]
    # Y+ = {0, 1} (0.6) vs Y- = {2} (0.3): log 2
    assert log_margin(lp, [0, 1], [2]) == pytest.approx(math.log(2.0))


def test_pope_metrics_hand_checked() -> None:
    # margins: pred yes, no, yes, no, no; gold yes, yes, no, no, no
    m = pope_metrics([2.0, -1.0, 0.5, -3.0, -0.5], [True, True, False, False, False])
    # tp=1 fn=1 fp=1 tn=2
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(1 / 2)
    assert m["yes_ratio"] == pytest.approx(2 / 5)  # PREDICTED yes, not gold yes (also 2/5 here)
    assert m["margin"] == pytest.approx((2.0 - 1.0 - 0.5 + 3.0 + 0.5) / 5)
    # p(gold) among yes/no for gold margins 2, -1, -0.5, 3, 0.5
    probs = [1 / (1 + math.exp(-g)) for g in (2.0, -1.0, -0.5, 3.0, 0.5)]
    assert m["loglik"] == pytest.approx(sum(math.log(p) for p in probs) / 5)
    assert m["prob"] == pytest.approx(sum(probs) / 5)
    assert m["n"] == 5


def test_gold_prob_saturates_where_the_loglik_does_not() -> None:
    from hipp_torchprune.evaluation import gold_loglik, gold_prob

    assert gold_prob([0.0, 0.0]) == 0.5 and gold_prob([]) == 0.0
    assert gold_prob([math.log(3.0)]) == pytest.approx(0.75)  # sigmoid(log 3) = 3/4
    # a hopelessly wrong row made less wrong (-8 -> -4): the log-likelihood gains 4 / 2 per row
    # (log_sigmoid(m) ~ m there), the probability almost nothing; accuracy does not change either
    assert gold_loglik([-4.0, 2.0]) - gold_loglik([-8.0, 2.0]) == pytest.approx(1.99, abs=0.01)
    assert gold_prob([-4.0, 2.0]) - gold_prob([-8.0, 2.0]) == pytest.approx(0.0088, abs=1e-4)


def test_log_sigmoid_is_stable_and_exact() -> None:
    assert log_sigmoid(0.0) == pytest.approx(-math.log(2.0))
    assert log_sigmoid(1.5) == pytest.approx(math.log(1 / (1 + math.exp(-1.5))))
    assert log_sigmoid(-800.0) == pytest.approx(-800.0)  # exp(800) would overflow
    assert log_sigmoid(800.0) == 0.0
    assert gold_loglik([]) == 0.0


def test_loglik_ranks_as_accuracy_where_the_margin_does_not() -> None:
    # model A: one row very confidently right, one wrong; model B: both right, modestly
    a, b = [9.0, -1.0], [1.0, 1.0]
    assert sum(a) / 2 > sum(b) / 2  # the mean margin prefers A (4.0 against 1.0)
    assert gold_loglik(b) > gold_loglik(a)  # the gold log-likelihood prefers B, as accuracy does


def test_pope_yes_ratio_is_predicted() -> None:
    m = pope_metrics([1.0, 1.0, 1.0, 1.0], [True, False, False, False])
    assert m["yes_ratio"] == 1.0 and m["balanced_accuracy"] == 0.5 and m["accuracy"] == 0.25


def test_mc_metrics_hand_checked() -> None:
    lps = [[math.log(0.7), math.log(0.2), math.log(0.1)], [math.log(0.4), math.log(0.6)]]
    m = mc_metrics(lps, [0, 0])
    assert m["accuracy"] == 0.5 and m["n"] == 2
    assert m["margin"] == pytest.approx((math.log(0.7 / 0.3) + math.log(0.4 / 0.6)) / 2)
    assert m["loglik"] == pytest.approx((math.log(0.7) + math.log(0.4)) / 2)  # gold's share of the options


WORDS = sorted(set(CATEGORY_NAMES) | set(OWNERS) | set(
    "Is there a in the image Answer question using single word or phrase with option s letter from given "
    "choices directly Which of these objects are How many What size is big small to left right above "
    "below Whose object has bigger smaller Context".split()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, object]:
    root = tmp_path_factory.mktemp("eval")
    build_world(root / "world", seed=9, n_images=40)
    processor = build_llava_processor(WORDS, 64, 16)
    tok = processor.tokenizer
    cfg = DemoModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
                          text_hidden=32, text_layers=1, text_heads=2, text_intermediate=64)
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg.llava_config(len(tok), tok.convert_tokens_to_ids("<image>"),
                                                           tok.pad_token_id, tok.bos_token_id, tok.eos_token_id))
    model.save_pretrained(root / "ckpt")
    processor.save_pretrained(root / "ckpt")
    return root / "world", root / "ckpt", model.eval(), processor


def test_answer_token_ids(setup: tuple) -> None:
    tok = setup[3].tokenizer
    ids = answer_token_ids(tok, ["Yes", "yes"])
    assert tok.convert_ids_to_tokens(ids) == ["Yes", "yes"]
    with pytest.raises(DataError):
        answer_token_ids(tok, ["Zebra"])


def test_evaluate_batch_size_invariant(setup: tuple) -> None:
    world, _, model, processor = setup
    a = evaluate(model, processor, world, "pope_adversarial,scienceqa", limit=8, batch_size=8)
    b = evaluate(model, processor, world, "pope_adversarial,scienceqa", limit=8, batch_size=3)
    assert a["pope_adversarial"]["n"] == 8 and a["scienceqa"]["n"] == 8
    for t in a:
        assert a[t]["margin"] == pytest.approx(b[t]["margin"], abs=1e-4)
        assert a[t]["accuracy"] == b[t]["accuracy"]


def test_padded_position_ids_hand_checked() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]])
    assert padded_position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 1, 1]]


def test_with_position_ids_leaves_mrope_models_and_given_positions() -> None:
    mask = torch.tensor([[0, 1, 1]])
    plain = torch.nn.Module()
    assert with_position_ids(plain, {"attention_mask": mask})["position_ids"].tolist() == [[0, 0, 1]]
    given = {"attention_mask": mask, "position_ids": torch.tensor([[5, 6, 7]])}
    assert with_position_ids(plain, given) is given
    mrope = torch.nn.Module()
    mrope.model = torch.nn.Module()
    mrope.model.get_rope_index = lambda *a: None  # Qwen2.5-VL derives its 3-D positions itself
    assert "position_ids" not in with_position_ids(mrope, {"attention_mask": mask})


def test_row_scores_alone_as_in_a_padded_batch(setup: tuple) -> None:
    """Left padding must not move a row's positions: float64 log-probabilities of every row are
    the same at one row a batch and in batches padded to their longest row. The shipped demo
    model, loaded as ``hipp eval --dtype float64`` loads it (its rotary angles stay float32),
    moved them by 1e-5 before positions came from the mask."""
    from hipp_torchprune.loading import load_model

    world = setup[0]
    model, processor = load_model("demo", dtype=torch.float64)
    alone = prepare_eval(processor, world, "scienceqa", limit=12, batch_size=1).tasks[0]
    batched = prepare_eval(processor, world, "scienceqa", limit=12, batch_size=12).tasks[0]
    assert (batched.batches[0]["attention_mask"] == 0).any()  # the batch really is padded
    for a, b in zip(option_logprobs(model, alone), option_logprobs(model, batched), strict=True):
        assert a == pytest.approx(b, abs=1e-10)


def test_always_yes_model(setup: tuple) -> None:
    world, _, model, processor = setup
    tok = processor.tokenizer
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[tok.convert_tokens_to_ids("Yes")] = 5.0
    head.bias.data[tok.convert_tokens_to_ids("B")] = 3.0
    model.lm_head = head
    try:
        prepared = prepare_eval(processor, world, ["pope_random", "scienceqa"], limit=8, batch_size=3)
        r = evaluate(model, processor, prepared)
    finally:
        model.lm_head = old
    assert r["pope_random"]["yes_ratio"] == 1.0 and r["pope_random"]["recall"] == 1.0
    assert r["pope_random"]["balanced_accuracy"] == 0.5
    # P(yes) = e^5 / (e^5 + V - 1): margin = log p(yes)-log p(no) = 5 on yes rows, -5 on no rows
    assert r["pope_random"]["margin"] == pytest.approx(0.0, abs=1e-5)
    docs_b = sum(1 for d in __import__("hipp_torchprune.data", fromlist=["x"]).load_task_docs(
        world, __import__("hipp_torchprune.data", fromlist=["x"]).TASKS["scienceqa"], limit=8) if d["answer"] == 1)
    assert r["scienceqa"]["accuracy"] == pytest.approx(docs_b / 8)
    assert "correct" not in r["pope_random"]  # per-row output only when asked
    model.lm_head = head
    try:
        rows = evaluate(model, processor, prepared, per_row=True)
    finally:
        model.lm_head = old
    gold = {t.name: t.gold for t in prepared.tasks}
    # always "yes": right exactly on the yes rows (gold 0); always "B": right exactly where B is gold
    assert rows["pope_random"]["correct"] == "".join("1" if g == 0 else "0" for g in gold["pope_random"])
    assert rows["scienceqa"]["correct"] == "".join("1" if g == 1 else "0" for g in gold["scienceqa"])
    assert {k: v for k, v in rows["scienceqa"].items() if k != "correct"} == r["scienceqa"]


def test_cli_eval_json(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    world, ckpt, _, _ = setup
    threads = torch.get_num_threads()
    rc = main(["eval", "--model", str(ckpt), "--data", str(world), "--tasks", "pope_adversarial,scienceqa",
               "--limit", "8", "--batch-size", "4", "--json", "--device", "cpu", "--threads", str(threads + 1)])
    assert rc == 0 and torch.get_num_threads() == threads  # --threads holds for the command only
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"pope_adversarial", "scienceqa"}
    assert set(out["pope_adversarial"]) == {"accuracy", "balanced_accuracy", "precision", "recall", "f1",
                                            "yes_ratio", "margin", "loglik", "prob", "n"}
    assert set(out["scienceqa"]) == {"accuracy", "margin", "loglik", "prob", "n"}


def test_cli_eval_unknown_task(setup: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    world, ckpt, _, _ = setup
    assert main(["eval", "--model", str(ckpt), "--data", str(world), "--tasks", "mmmu"]) == 2
    assert "unknown task name(s) 'mmmu'" in capsys.readouterr().err


def test_hipp_eval_loads_pruned_checkpoints(tmp_path, capsys) -> None:
    """``hipp eval`` reads a pruned checkpoint (per-layer widths) and matches in-memory scoring."""
    import json

    from hipp_torchprune.cli import main
    from hipp_torchprune.evaluation import evaluate
    from hipp_torchprune.loading import load_model
    from hipp_torchprune.world import build_world

    world = tmp_path / "w"
    build_world(world, seed=2, n_images=60)
    assert main(["prune", "--model", "tiny-llava", "--importance", "magnitude", "--round-to", "16",
                 "--sparsity", "0.4", "--out", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "ck"), "--data", str(world), "--tasks", "scienceqa",
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["scienceqa"]
    model, processor = load_model(tmp_path / "ck")
    assert [layer.mlp.gate_proj.out_features for layer in model.model.language_model.layers] != [256] * 4
    direct = evaluate(model, processor, world, "scienceqa")["scienceqa"]
    assert cli["margin"] == direct["margin"] and cli["n"] == direct["n"] > 0
