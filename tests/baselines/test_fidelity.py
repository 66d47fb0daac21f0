"""Fidelity to the references: each baseline's formula on a tiny example checked by hand, citing the
reference file it follows (``docs/baselines.md`` has the table). The references are read, not copied."""

from __future__ import annotations

import math

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.calib_data import random_samples
from hipp_torchprune.methods import MethodContext, prune_with_method
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.pruning import operator
from hipp_torchprune.pruning.answers import answer_loss, batch_targets
from hipp_torchprune.pruning.rowscores import elementwise_taylor_scores
from hipp_torchprune.pruning.scores import wanda_column_scores
from tests.conftest import baselines_registry

pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
owl = pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")
from hipp_baselines import flap  # noqa: E402
from hipp_baselines.ecoflap import ecoflap_keep_ratios  # noqa: E402
from hipp_baselines.llm_pruner import dense_end_layers, protected_ratios  # noqa: E402
from hipp_baselines.selection import select_plan  # noqa: E402


def _context(model: torch.nn.Module, processor: object, n: int = 4, grads: bool = False) -> MethodContext:
    reg = baselines_registry()
    calib = random_samples(n)  # (image, prompt, answer) triples
    stats = api.calibrate(model, processor, calib, with_grads=grads, registry=reg)
    return MethodContext(processor, calib, stats, round_to=16, registry=reg)


# ------------------------------------------------- Wanda-sp (FLAP repo, lib/prune.py, prune_wanda_sp)


def test_wanda_sp_is_the_reference_down_input_metric_by_hand() -> None:
    # reference: W_metric = (|W_down| * sqrt(scaler_row)).mean(axis=0); scaler_row ~ ||h_j||^2
    w_down = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0]])
    in_sq = torch.tensor([4.0, 1.0, 9.0])  # ||h|| = 2, 1, 3
    reference = (w_down.abs() * in_sq.sqrt().unsqueeze(0)).mean(0)
    assert torch.allclose(reference, torch.tensor([4.0, 1.5, 1.5]))
    assert torch.allclose(wanda_column_scores(w_down, in_sq), 2 * reference)  # sum = out * mean: same ranking


def test_wanda_method_scores_down_proj_input_after_gating() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    ctx = _context(model, processor)
    adapter = api.get_adapter(model)
    scorer = api.importance("wanda-sp", model, ctx.stats, registry=ctx.registry)
    mlp = adapter.mlp(2)
    expected = wanda_column_scores(mlp.down.weight, ctx.stats.in_sq[scorer.name_of(mlp.down)])
    assert torch.allclose(operator.layer_scores(adapter, scorer)[2], expected)
    assert ctx.registry.get("method", "wanda").importance == "wanda-sp"


# ------------------------------------- FLAP (FLAP repo, lib/prune.py prune_flap, lib/layerwrapper.py BiasGPT)


def test_flap_fluctuation_metric_by_hand() -> None:
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])  # 3 tokens, 2 channels
    variance = flap.fluctuation(h.pow(2).sum(0), h.sum(0).double(), 3)
    assert torch.allclose(variance, torch.tensor([8 / 3, 8 / 3], dtype=torch.float64))
    w_down = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # WIFV: fluc_inp * sum(W^2, dim=0)
    assert torch.allclose(flap.fluctuation_scores(w_down, variance), torch.tensor([8 / 3, 40 / 3], dtype=torch.float64))


def test_flap_standardization_and_global_threshold_by_hand() -> None:
    assert torch.allclose(flap.standardize(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(flap.standardize(torch.ones(3)), torch.zeros(3))
    layers = [torch.tensor([-1.0, 1.0]), torch.tensor([-2.0, 0.0, 2.0])]
    assert flap.global_removals(layers, [1, 1], 2.0, [2, 3]) == [1, 1]  # -2 then -1
    assert flap.global_removals(layers, [1, 1], 3.0, [2, 3]) == [1, 2]  # then 0
    assert flap.global_removals(layers, [1, 1], 3.0, [2, 1]) == [2, 1]  # layer 1 capped at 1
    assert flap.global_removals(layers, [1, 10], 2.0, [2, 3]) == [0, 0]  # the threshold stops at -2 (10 > 2)


def test_flap_bias_compensation_by_hand() -> None:
    # reference: output_bias = (mlp_mean_inp * ~mlp_mask) @ W_down.T
    w_down = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    bias = flap.compensation_bias(w_down, torch.tensor([0.5, -1.0]), torch.tensor([0]))
    assert torch.allclose(bias, torch.tensor([-2.0, -4.0], dtype=torch.float64))


def test_flap_keeps_each_down_proj_mean_output() -> None:
    """With the compensation bias, down_proj's mean output over the calibration tokens is the dense one."""
    model, processor = build_tiny("tiny-llava", seed=0)
    ctx = _context(model, processor)
    adapter = api.get_adapter(model)
    captured = []
    handle = adapter.mlp(0).down.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    batch = adapter.encode(processor, [s[0] for s in ctx.samples], [s[1] for s in ctx.samples])
    with torch.no_grad():
        model(**batch)
    handle.remove()
    h = captured[0][batch["attention_mask"].bool()].double()
    down = adapter.mlp(0).down
    dense_mean = (h @ down.weight.double().T).mean(0)
    scores = operator.layer_scores(adapter, api.importance("flap", model, ctx.stats, registry=ctx.registry))[0]
    report = prune_with_method(model, "flap", 0.4, ctx)
    keep = operator.keep_indices(scores, report.widths[0])
    assert report.details["bias_compensation"] and down.bias is not None and report.widths[0] < h.shape[1]
    pruned_mean = (h[:, keep] @ down.weight.double().T).mean(0) + down.bias.double()
    assert torch.allclose(pruned_mean, dense_mean, atol=1e-5)
    assert not torch.allclose((h[:, keep] @ down.weight.double().T).mean(0), dense_mean, atol=1e-3)


def test_flap_widths_follow_the_global_threshold() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    ctx = _context(model, processor)
    adapter = api.get_adapter(model)
    scorer = api.importance("flap", model, ctx.stats, registry=ctx.registry)
    standardized = [flap.standardize(s.double()) for s in operator.layer_scores(adapter, scorer)]
    widths = adapter.intermediate_widths()
    removed = flap.global_removals(standardized, [1] * len(widths), 0.4 * sum(widths), [int(0.8 * w) for w in widths])
    plan = api.make_plan(model, "flap", 0.4, round_to=1, registry=ctx.registry, stats=ctx.stats)
    assert list(plan.widths_after) == [w - r for w, r in zip(widths, removed)]
    assert len(set(plan.widths_after)) > 1  # adaptive, not uniform


# ------------------- LLM-Pruner (LLMPruner/pruner/hf_llama_pruner.py TaylorImportance; hf_prune.py block-wise)


def test_llm_pruner_taylor_is_element_wise_by_hand() -> None:
    # param_first: salience = W * grad; out channels: salience.abs().sum(1); in channels: .abs().sum(0);
    # group_reduction "sum" over gate row, up row, down column
    gate, up, down = torch.tensor([2.0, -1.0]), torch.tensor([-3.0]), torch.tensor([0.5, 0.5])
    terms = [t.abs().sum().reshape(1) for t in (gate, up, down)]
    assert torch.allclose(elementwise_taylor_scores(terms), torch.tensor([7.0]))  # vectorize: |2-1-3+1| = 1


def test_llm_pruner_taylor_terms_come_from_the_answers_loss() -> None:
    """``taylor_abs`` is ``sum |W * dL/dW|`` of the gold answers' loss, computed here by hand."""
    model, processor = build_tiny("tiny-llava", seed=0)
    calib = random_samples(3)
    stats = api.calibrate(model, processor, calib, with_grads=True, batch_size=3)
    adapter = api.get_adapter(model)
    batch = adapter.encode(processor, [s[0] for s in calib], [s[1] for s in calib])
    targets = batch_targets(processor.tokenizer, calib, 3)[0]
    assert targets is not None and len(targets) == 3
    loss = answer_loss(model(**batch, use_cache=False).logits, batch["attention_mask"], targets)
    loss.backward()
    mlp = adapter.mlp(1)
    names = {m: n for n, m in model.named_modules()}
    for module, dim in ((mlp.gate, 1), (mlp.down, 0)):
        by_hand = (module.weight * module.weight.grad).abs().sum(dim)
        assert torch.allclose(stats.taylor_abs[names[module]], by_hand, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)


def test_llm_pruner_dense_layers_follow_the_shipped_command() -> None:
    # scripts/llama_prune.sh: --block_mlp_layer_start 4 --block_mlp_layer_end 30 of 32 layers
    assert dense_end_layers(32) == (0, 1, 2, 3, 30, 31)
    assert dense_end_layers(24) == (0, 1, 2, 22, 23)
    assert dense_end_layers(4) == (0, 3)
    assert dense_end_layers(1) == (0,)
    assert protected_ratios([1, 1, 1, 1], (0, 3), 0.3, 0.8) == pytest.approx([0.0, 0.6, 0.6, 0.0])
    assert protected_ratios([1, 1, 1, 1], (0, 3), 0.6, 0.8) == pytest.approx([0.4, 0.8, 0.8, 0.4])


def test_llm_pruner_method_leaves_first_and_last_layer_dense() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    ctx = _context(model, processor, grads=True)
    report = prune_with_method(model, "llm-pruner", 0.3, ctx)
    assert report.widths[0] == report.widths[-1] == 256 and max(report.widths[1:-1]) < 256
    assert abs(report.realized_sparsity - 0.3) < 0.03


# ------------------- ECoFLaP (LAVIS/lavis/compression/pruners/layer_single_base_pruner.py)


def test_ecoflap_rule_by_hand() -> None:
    # compute_the_sparsity_per_group: floors keep 1 - max_sparsity, the rest by score
    assert ecoflap_keep_ratios([1.0, 3.0], [1.0, 1.0], 0.5, 0.6) == pytest.approx([0.55, 0.45])
    # the reference's integer run on sizes [10, 10, 20], scores [10, 1, 1], keep 36, max 0.2:
    # floors [8, 8, 16], add ceil([3.33, 0.33, 0.33]) -> [12, 9, 17], clamp 10 -> [10, 9, 17]
    assert ecoflap_keep_ratios([10.0, 1.0, 1.0], [10.0, 10.0, 20.0], 0.1, 0.2) == pytest.approx([0.0, 0.1, 0.15])
    assert ecoflap_keep_ratios([0.0, 0.0], [1.0, 3.0], 0.5, 0.6) == pytest.approx([0.5, 0.5])  # no score: room


def test_ecoflap_method_keeps_every_layer_within_target_plus_a_tenth() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    ctx = _context(model, processor)
    report = prune_with_method(model, "ecoflap", 0.5, ctx)
    assert max(report.plan.realized_ratios) <= 0.6 + 1e-9 and abs(report.realized_sparsity - 0.5) < 0.03
    assert report.details["selected"]["eps"] in (1e-1, 1e-2, 1e-3, 1e-4)
    assert min(report.details["selection_losses"]) == report.details["selection_losses"][
        (1e-1, 1e-2, 1e-3, 1e-4).index(report.details["selected"]["eps"])]


# ------------------- OWL (lib/prune_all.py prune_wanda_outlier, check_outlier_mean)


def test_owl_outlier_ratio_uses_one_mean_per_layer_by_hand() -> None:
    ones = torch.ones(2)
    projections = [(torch.tensor([[1.0, 1.0]]), ones), (torch.tensor([[1.0, 9.0]]), ones)]
    assert owl.layer_outlier_ratio(projections, 2.0) == 0.25  # [1, 1, 1, 9]: mean 3, one above 6


def test_owl_ratios_are_centred_like_the_reference() -> None:
    d, s, lam = [0.1, 0.2, 0.4], 0.5, 0.1
    a = [(x - min(d)) / (max(d) - min(d)) * lam * 2 for x in d]
    keep = [x - sum(a) / len(a) + (1 - s) for x in a]  # all_layer_ratio - mean + (1 - sparsity_ratio)
    assert owl.owl_ratios(d, s, lam) == pytest.approx([1 - k for k in keep])


def test_owl_selection_picks_the_lowest_calibration_loss_and_leaves_model_untouched() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    ctx = _context(model, processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = ctx.registry.get("method", "owl")()
    grid = [{"lam": 0.02, "m": 5.0}, {"lam": 0.2, "m": 3.0}]
    plan, chosen, losses = select_plan(method, model, 0.5, ctx, grid)
    assert chosen == grid[losses.index(min(losses))] and math.isfinite(min(losses))
    assert plan.widths_after == method.plan(model, 0.5, ctx, **chosen).widths_after
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
