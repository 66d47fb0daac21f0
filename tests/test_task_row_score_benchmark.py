"""benchmarks/task_row_score.py: the blend by hand, the Taylor term against a channel gate's gradient,
and a run on tiny-llava."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


def test_standard_score_and_blend_by_hand() -> None:
    bench = load_benchmark("task_row_score")
    assert bench.standard_score(torch.tensor([1.0, 2.0, 3.0])).tolist() == [-1.0, 0.0, 1.0]
    assert bench.standard_score(torch.tensor([4.0, 4.0])).tolist() == [0.0, 0.0]
    shared, taylor = [torch.tensor([1.0, 2.0, 3.0])], [torch.tensor([3.0, 2.0, 1.0])]
    assert bench.blended_scores(shared, taylor, 0.0)[0].tolist() == [-1.0, 0.0, 1.0]
    assert bench.blended_scores(shared, taylor, 1.0)[0].tolist() == [0.0, 0.0, 0.0]
    assert bench.blended_scores(shared, taylor, 2.0)[0].tolist() == [1.0, 0.0, -1.0]  # the Taylor term wins


def test_the_ablation_effect_is_the_loss_of_zeroing_one_channel(make_world) -> None:
    from hipp_torchprune import api
    from hipp_torchprune.models.tiny import tiny_llava
    from hipp_torchprune.rewards import PopeMarginReward

    bench = load_benchmark("task_row_score")
    model, processor = tiny_llava(seed=0, intermediate_size=8, num_layers=2)
    model.eval()
    downs = [m.down for m in api.get_adapter(model).mlps()]
    task = PopeMarginReward(processor, make_world(0, 8), "test", 6, batch_size=4).prepared
    effects = bench.ablation_effects(model, downs, task)
    assert [e.shape[0] for e in effects] == [8, 8] and bool((effects[1] != 0).any())
    dense = bench._summed_loglik(model, task)
    with torch.no_grad():
        column = downs[1].weight[:, 3].clone()
        downs[1].weight[:, 3] = 0  # zeroing channel 3's down column removes it as zeroing its input does
        assert effects[1][3].item() == pytest.approx(dense - bench._summed_loglik(model, task), abs=1e-4)
        downs[1].weight[:, 3] = column
    assert bench._summed_loglik(model, task) == pytest.approx(dense, abs=1e-6)  # every hook was removed


def test_the_taylor_term_is_the_gradient_of_a_channel_gate(make_world) -> None:
    from hipp_torchprune import api
    from hipp_torchprune.evaluation import last_position_logprobs
    from hipp_torchprune.models.tiny import tiny_llava
    from hipp_torchprune.rewards import PopeMarginReward

    bench = load_benchmark("task_row_score")
    model, processor = tiny_llava(seed=0)
    model.eval()
    downs = [m.down for m in api.get_adapter(model).mlps()]
    task = PopeMarginReward(processor, make_world(0, 8), "test", 6, batch_size=4).prepared
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    sums = bench.signed_taylor(model, downs, task)
    assert [p.requires_grad for p in model.parameters()] == flags and not all(flags)  # restored as they were
    gate = torch.ones(downs[1].in_features, requires_grad=True)
    hook = downs[1].register_forward_pre_hook(lambda _m, inp: (inp[0] * gate,))
    try:
        with torch.enable_grad():
            total, first = torch.zeros(()), 0
            for batch in task.batches:
                lp = last_position_logprobs(model, batch)
                total = total + bench._gold_loglik(lp, task, first)
                first += lp.shape[0]
            total.backward()
    finally:
        hook.remove()
    assert sums[1].abs().sum() > 0
    assert torch.allclose(sums[1].float(), gate.grad, rtol=1e-3, atol=1e-5)  # d L / d gate_j = sum h_j dL/dh_j


@pytest.mark.parametrize("term", ["taylor", "ablation"])
def test_a_run_on_tiny_llava(term: str, make_world, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("task_row_score")
    world = make_world(0, 8)
    out = tmp_path / "t"
    other = make_world(1, 8)
    records = bench.main(["--model", "tiny-llava", "--data", str(world), "--data", str(other), "--term", term,
                          "--term-data", str(world), "--term-split", "test", "--rows", "4", "--out", str(out),
                          "--calib-n", "2", "--plan", "128,128,128,128", "--plan", "64,192,128,128", "--lam", "0,1"])
    assert [(r["data"], r["lam"], r["widths"]) for r in records] == [
        (str(d), lam, w) for d in (world, other) for lam in (0.0, 1.0) for w in ([128] * 4, [64, 192, 128, 128])]
    assert json.loads((out / "task_row_score.json").read_text())["records"] == records
    assert len({r["world"] for r in records}) == 2  # each world's own content hash
    assert all(0 <= r["pope_adv"] <= 100 and 0 <= r["sqa"] <= 100 for r in records)
    unpruned = [r for r in records if r["widths"] == [128] * 4]
    assert len({(r["data"], r["pope_adv"], r["sqa"]) for r in unpruned}) == 2  # nothing pruned: the blend cannot matter
    assert capsys.readouterr().out.count("lam ") == 4
