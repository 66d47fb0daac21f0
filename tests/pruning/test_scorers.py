"""Importance scorers: hand-checked pure scores, and every registered scorer on every tiny model."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning import operator
from hipp_torchprune.pruning.scorers import WandaConfig
from hipp_torchprune.pruning.scores import magnitude_row_sq, taylor_scores, wanda_column_scores, wanda_row_scores
from tests.conftest import samples


def test_wanda_row_scores_by_hand() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    in_sq = torch.tensor([4.0, 9.0])  # norms 2, 3
    assert torch.allclose(wanda_row_scores(w, in_sq), torch.tensor([1 * 2 + 2 * 3, 0.5 * 2.0]))


def test_wanda_column_scores_by_hand() -> None:
    w = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
    in_sq = torch.tensor([1.0, 16.0])  # norms 1, 4
    assert torch.allclose(wanda_column_scores(w, in_sq), torch.tensor([4.0 * 1, 3.0 * 4]))


def test_taylor_sums_before_abs() -> None:
    # gate +2, up -3, down +0.5 -> |-0.5| = 0.5 (not 5.5)
    terms = [torch.tensor([2.0]), torch.tensor([-3.0]), torch.tensor([0.5])]
    assert torch.allclose(taylor_scores(terms), torch.tensor([0.5]))


def test_every_registered_scorer_scores_every_layer(tiny, registry) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model, registry)
    for name, cls in registry.all("importance").items():
        stats = api.calibrate(model, processor, samples(3), with_grads=cls.needs_grads, registry=registry)
        scorer = api.importance(name, model, stats, registry=registry)
        scores = operator.layer_scores(adapter, scorer)
        assert [s.shape[0] for s in scores] == adapter.intermediate_widths(), name
        assert all(torch.isfinite(s).all() and (s >= 0).all() and s.std() > 0 for s in scores), name
    assert all(p.grad is None for p in model.parameters())  # calibration leaves no gradients


def test_wanda_scorer_matches_pure_function_on_group(tiny) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    stats = api.calibrate(model, processor, samples(3))
    scorer = api.importance("wanda", model, stats)
    mlp = adapter.mlp(1)
    expected = (wanda_row_scores(mlp.gate.weight, stats.in_sq[scorer.name_of(mlp.gate)])
                + wanda_row_scores(mlp.up.weight, stats.in_sq[scorer.name_of(mlp.up)]))
    assert torch.allclose(operator.layer_scores(adapter, scorer)[1], expected)


def test_calibration_counts_only_real_tokens(tiny) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    data = samples(3)
    batch = adapter.encode(processor, [s[0] for s in data], [s[1] for s in data])
    stats = api.calibrate(model, processor, data, batch_size=3)
    assert stats.n_tokens == int(batch["attention_mask"].sum()) and stats.n_samples == 3


def test_empty_calibration_set_is_rejected(tiny) -> None:
    _, model, processor = tiny
    with pytest.raises(CalibrationError, match="empty"):
        api.calibrate(model, processor, [])


@pytest.mark.parametrize("name", ["wanda", "taylor"])
def test_scorers_needing_calibration_refuse_without_it(tiny, name: str) -> None:
    _, model, _ = tiny
    with pytest.raises(CalibrationError):
        api.importance(name, model, None)


def test_taylor_loss_ignores_vision_placeholders(tiny, monkeypatch) -> None:
    """The calibration loss of the Taylor scorer targets text tokens only."""
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    seen = []
    real = model.forward

    def spy(*args, **kwargs):
        if kwargs.get("labels") is not None:
            seen.append((kwargs["input_ids"], kwargs["labels"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    api.calibrate(model, processor, samples(2), with_grads=True)
    ids, labels = seen[0]
    vision = adapter.non_text_positions(ids)
    assert vision.any() and (labels[vision] == -100).all()
    assert (labels[~vision & (ids != processor.tokenizer.pad_token_id)] != -100).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(7, 5), (77, 1001), (1001, 77), (300, 333), (64, 2048)])
def test_blockwise_scores_are_bit_identical_to_whole_tensor_formulas(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    """Scoring block by block changes no bit of any score (so no kept row changes either)."""
    gen = torch.Generator().manual_seed(shape[0])
    w = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
    before = w.clone()
    in_rows, in_cols = torch.rand(shape[1], generator=gen), torch.rand(shape[0], generator=gen)
    w_t = w.t().contiguous()  # a down_proj-shaped weight: reduce over its rows
    assert torch.equal(magnitude_row_sq(w, 1), w.float().pow(2).sum(1))
    assert torch.equal(magnitude_row_sq(w_t, 0), w_t.float().pow(2).sum(0))
    assert torch.equal(wanda_row_scores(w, in_rows), (w.float().abs() * in_rows.sqrt().unsqueeze(0)).sum(1))
    assert torch.equal(wanda_column_scores(w_t, in_cols), w_t.float().abs().sum(0) * in_cols.sqrt())
    assert torch.equal(w, before)  # an fp32 weight is never modified in place


@pytest.mark.parametrize("name", ["magnitude", "wanda", "taylor"])
def test_direct_mlp_scores_equal_scores_on_torch_pruning_groups(tiny, name: str) -> None:
    """prune_model scores MLPs without Torch-Pruning groups; a BasePruner gets the same numbers."""
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    stats = api.calibrate(model, processor, samples(3), with_grads=name == "taylor")
    configs = [WandaConfig(parts) for parts in ("gate_up", "down", "all")] if name == "wanda" else [None]
    graph = operator.build_mlp_graph(adapter)
    for config in configs:
        scorer = api.importance(name, model, stats, **({"config": config} if config else {}))
        for i, width in enumerate(adapter.intermediate_widths()):
            on_group = scorer(operator.mlp_group(graph, adapter, i, range(width)))
            assert torch.equal(scorer.score_mlp(adapter.mlp(i)), on_group), (name, config, i)
