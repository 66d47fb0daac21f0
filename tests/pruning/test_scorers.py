"""Importance scorers: hand-checked pure scores, and every registered scorer on every tiny model."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.pruning import operator
from hipp_torchprune.pruning.scores import taylor_scores, wanda_column_scores, wanda_row_scores
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
