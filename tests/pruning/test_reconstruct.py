"""``hipp_torchprune.pruning.reconstruct``: the least-squares refit of pruned down_proj layers, by
hand, against its guarantees, and through ``prune_model`` and every registered MLP-row method."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.errors import CalibrationError, PlanError
from hipp_torchprune.methods import MethodContext, MethodError, prune_with_method
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.pruning import operator
from hipp_torchprune.pruning.reconstruct import (
    augmented_gram,
    collect_down_grams,
    gram_bytes,
    gram_chunks,
    held_grams,
    lstsq_down,
    refitted,
    solve_downs,
    write_downs,
)
from tests.conftest import baselines_registry, samples


def test_augmented_gram_by_hand() -> None:
    gram = augmented_gram(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    assert torch.equal(gram, torch.tensor([[10.0, -1.0, 4.0], [-1.0, 5.0, 1.0], [4.0, 1.0, 2.0]], dtype=torch.float64))


def test_a_removed_channel_that_is_affine_in_a_kept_one_is_folded_in_exactly() -> None:
    """Channel 2 = 2 * channel 0 + 0.5: removing it moves 2 * W[:, 2] onto column 0 and 0.5 * W[:, 2]
    into the bias, and leaves column 1 alone."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(200, 2, generator=g)
    h = torch.cat([h, 2 * h[:, :1] + 0.5], 1)
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    kept, bias = lstsq_down(w, augmented_gram(h), torch.tensor([0, 1]), damp=0.0)
    expected = torch.tensor([[1.0 + 6.0, -2.0], [0.5 - 2.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(kept, expected, atol=1e-8)
    assert torch.allclose(bias, torch.tensor([1.5, -0.5], dtype=torch.float64), atol=1e-8)


def test_nothing_removed_gives_the_same_weight_and_no_bias() -> None:
    h = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    kept, bias = lstsq_down(w, augmented_gram(h), torch.arange(4), damp=0.0)
    assert torch.allclose(kept, w.double(), atol=1e-8) and torch.allclose(bias, torch.zeros(3, dtype=torch.float64),
                                                                          atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_refit_is_no_worse_than_plain_removal_or_mean_compensation(seed: int) -> None:
    """On the tokens it was fitted to, the least-squares output error is at most that of keeping the
    columns (plain removal) and of FLAP's mean-bias compensation (both are points of its search)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g) + torch.randn(8, generator=g)
    w, keep = torch.randn(5, 8, generator=g), torch.tensor([0, 2, 3, 6])
    target = h.double() @ w.double().T
    kept, bias = lstsq_down(w, augmented_gram(h), keep, damp=0.0)
    refit = ((h[:, keep].double() @ kept.T + bias - target) ** 2).sum()
    plain_out = h[:, keep].double() @ w[:, keep].double().T
    mean_bias = (target - plain_out).mean(0)
    assert refit <= ((plain_out - target) ** 2).sum()
    assert refit <= ((plain_out + mean_bias - target) ** 2).sum() + 1e-9
    assert refit < 0.9 * ((plain_out + mean_bias - target) ** 2).sum()  # correlated channels: a real gain


def test_bad_grams_are_refused() -> None:
    w = torch.ones(2, 3)
    with pytest.raises(PlanError, match=r"must be \(4, 4\), got \(3, 3\)"):
        lstsq_down(w, torch.eye(3, dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(CalibrationError, match="at least one calibration token"):
        lstsq_down(w, torch.zeros(4, 4, dtype=torch.float64), torch.tensor([0]))


def test_collected_grams_agree_with_the_calibration_statistics() -> None:
    """The Gram's last row is the token count and each feature's input sum; its diagonal is the
    squared-input sum the calibration statistics hold (same tokens, same float32 pass)."""
    model, processor = build_tiny("tiny-llava", seed=0)
    calib = samples(3)
    adapter = api.get_adapter(model)
    stats = api.calibrate(model, processor, calib)
    grams = collect_down_grams(model, adapter, api.calibration_batches(adapter, processor, calib))
    names = {m: n for n, m in model.named_modules()}
    assert len(grams) == len(adapter.mlps())
    for mlp, gram in zip(adapter.mlps(), grams):
        d, name = mlp.down.in_features, names[mlp.down]
        assert gram.shape == (d + 1, d + 1) and gram[d, d] == stats.n_tokens
        assert torch.allclose(gram[:d, d], stats.in_sum[name], rtol=1e-4, atol=1e-4)
        assert torch.allclose(gram.diagonal()[:d], stats.in_sq[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("widths", "max_bytes", "chunks"), [
    ([3, 3, 1], 200, [[0], [1, 2]]),  # 128 + 128 + 32 bytes
    ([3, 3, 1], 300, [[0, 1, 2]]),
    ([3, 3, 1], 10, [[0], [1], [2]]),  # a Gram above the limit is a group of its own
    ([], 100, []),
])
def test_gram_chunks_by_hand(widths: list[int], max_bytes: int, chunks: list[list[int]]) -> None:
    assert gram_chunks(widths, max_bytes) == chunks


def test_a_gram_budget_of_one_layer_gives_the_same_solutions() -> None:
    """Solving the pruned layers one calibration pass each (a budget below one Gram) gives exactly the
    one-pass solutions, and only the pruned layers' Grams are asked for."""
    model, processor = build_tiny("tiny-llava", seed=0)
    adapter = api.get_adapter(model)
    widths = adapter.intermediate_widths()
    keep = [torch.arange(w) if i == 1 else torch.arange(0, w, 2) for i, w in enumerate(widths)]
    asked: list[list[int]] = []

    def grams(layers: list[int]) -> list[torch.Tensor]:
        asked.append(list(layers))
        return collect_down_grams(model, adapter, api.calibration_batches(adapter, processor, samples(3)), layers)

    once = solve_downs(adapter, keep, grams)
    each = solve_downs(adapter, keep, grams, max_bytes=1)
    pruned = [i for i in range(len(widths)) if i != 1]
    assert asked == [pruned, *[[i] for i in pruned]]
    assert once[1] is None and each[1] is None
    for a, b in zip(once, each):
        assert a is None or (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].dtype == model.dtype)


def test_gram_bytes_by_hand() -> None:
    assert [gram_bytes(w) for w in (0, 3, 11008)] == [8, 128, 8 * 11009 ** 2]


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def test_the_refit_in_mask_mode_is_the_physically_refitted_model_and_is_undone_exactly() -> None:
    """Masks plus :func:`refitted` compute what physical removal plus :func:`write_downs` computes;
    after the block (also when it raises) every weight is the dense one bit for bit and no hook is left."""
    import copy

    model, processor = build_tiny("tiny-llava", seed=0)
    adapter = api.get_adapter(model)
    widths = adapter.intermediate_widths()
    keep = [torch.arange(w) if i == 2 else torch.arange(1, w, 3) for i, w in enumerate(widths)]
    grams = collect_down_grams(model, adapter, api.calibration_batches(adapter, processor, samples(3)))
    solutions = solve_downs(adapter, keep, held_grams(grams))
    pruned = copy.deepcopy(model)
    operator.prune_physical(api.get_adapter(pruned), keep)
    write_downs(api.get_adapter(pruned), solutions)
    batch = next(api.calibration_batches(adapter, processor, samples(2, seed=5)))
    dense = _logits(model, batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with operator.PlanMasks(adapter) as masks:
        masks.set_keep(keep)
        plain = _logits(model, batch)
        with refitted(adapter, keep, solutions):
            inside = _logits(model, batch)
        with pytest.raises(RuntimeError, match="boom"), refitted(adapter, keep, solutions):
            raise RuntimeError("boom")
    assert torch.allclose(inside, _logits(pruned, batch), atol=1e-4)
    assert not torch.allclose(inside, plain, atol=1e-3)  # the refit changed the output
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m.down._forward_hooks for m in adapter.mlps())
    assert torch.equal(_logits(model, batch), dense)


def test_mask_mode_refuses_a_refit_untouched() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    adapter = api.get_adapter(model)
    stats = api.calibrate(model, processor, samples(2))
    def grams(layers: list[int]) -> list[torch.Tensor]:
        return collect_down_grams(model, adapter, api.calibration_batches(adapter, processor, samples(2)), layers)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = api.make_plan(model, "uniform", 0.5, round_to=8)
    with pytest.raises(PlanError, match="needs mode='physical'"):
        api.prune_model(model, plan, api.importance("wanda", model, stats), mode="mask", grams=grams)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_reconstruction_is_refused() -> None:
    assert MethodContext(None, [], None).reconstruct == "none"
    with pytest.raises(MethodError, match="reconstruction 'obs' is not one of none, lstsq"):
        MethodContext(None, [], None, reconstruct="obs")


def _dense_downs(model: torch.nn.Module, processor, calib) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each layer's dense down_proj input and output over the calibration tokens (real ones only)."""
    adapter = api.get_adapter(model)
    inputs: list[torch.Tensor] = []
    batch = adapter.encode(processor, [s[0] for s in calib], [s[1] for s in calib])
    mask = batch["attention_mask"].bool()
    handles = [m.down.register_forward_pre_hook(lambda mod, a: inputs.append(a[0].detach()[mask]))
               for m in adapter.mlps()]
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        return inputs, [m.down(h).double() for m, h in zip(adapter.mlps(), inputs)]


@pytest.mark.parametrize("method", ["random", "wanda", "llm-pruner", "owl", "ecoflap", "flap"])
def test_every_mlp_row_method_refits_under_lstsq(method: str) -> None:
    """Table-driven over the registered MLP-row baselines: ``reconstruct="lstsq"`` prunes to the same
    widths and rows, records the refit, and brings the layers' outputs on the calibration tokens
    closer to the dense ones than the same method without it (FLAP's own compensation included)."""
    reg = baselines_registry()
    calib = samples(4)
    errors, kept_rows = {}, {}
    for mode in ("none", "lstsq"):
        model, processor = build_tiny("tiny-llava", seed=0)
        adapter = api.get_adapter(model, reg)
        stats = api.calibrate(model, processor, calib, with_grads=True, registry=reg)
        inputs, dense_out = _dense_downs(model, processor, calib)
        impl = reg.get("method", method)()
        scorer = api.importance(impl.row_importance(MethodContext(None, [], None)), model, stats, registry=reg)
        scores = operator.layer_scores(adapter, scorer)
        report = prune_with_method(model, method, 0.4, MethodContext(processor, calib, stats, round_to=8,
                                                                     registry=reg, reconstruct=mode))
        assert report.details["reconstruct"] == mode
        keep = [operator.keep_indices(s, k) for s, k in zip(scores, report.widths)]
        with torch.no_grad():
            errors[mode] = sum(float(((m.down(h[:, k]).double() - want) ** 2).sum())
                               for m, h, want, k in zip(adapter.mlps(), inputs, dense_out, keep))
        kept_rows[mode] = [k.tolist() for k in keep]
    assert kept_rows["lstsq"] == kept_rows["none"]
    assert errors["lstsq"] < errors["none"]
