"""The row-score options (``wanda-sp``, ``wanda-mix``) and element-wise Taylor, by hand and on a model."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.pruning import operator
from hipp_torchprune.pruning.rowscores import elementwise_taylor_scores, mean_normalized_sum
from hipp_torchprune.pruning.scores import wanda_column_scores, wanda_row_scores
from tests.conftest import samples


def test_mean_normalized_sum_by_hand() -> None:
    out = mean_normalized_sum([torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0])])
    assert torch.allclose(out, torch.tensor([1.0, 3.0]))
    assert torch.allclose(mean_normalized_sum([torch.tensor([2.0, 6.0]), torch.zeros(2)]), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError):
        mean_normalized_sum([])


def test_elementwise_taylor_sums_absolute_terms() -> None:
    assert torch.allclose(elementwise_taylor_scores([torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([0.5])]),
                          torch.tensor([5.5]))


def test_row_score_options_on_a_model() -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    adapter = api.get_adapter(model)
    stats = api.calibrate(model, processor, samples(3))
    mlp = adapter.mlp(1)
    names = {m: n for n, m in model.named_modules()}
    gate_up = sum(wanda_row_scores(p.weight, stats.in_sq[names[p]]) for p in (mlp.gate, mlp.up))
    down = wanda_column_scores(mlp.down.weight, stats.in_sq[names[mlp.down]])
    got = {name: operator.layer_scores(adapter, api.importance(name, model, stats))[1]
           for name in ("wanda", "wanda-sp", "wanda-mix")}
    assert torch.allclose(got["wanda"], gate_up) and torch.allclose(got["wanda-sp"], down)
    assert torch.allclose(got["wanda-mix"], gate_up / gate_up.mean() + down / down.mean())
    assert not torch.equal(torch.argsort(got["wanda"]), torch.argsort(got["wanda-sp"]))
