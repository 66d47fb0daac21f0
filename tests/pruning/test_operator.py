"""The structured operator on every tiny model family: consistency, forward, mask == physical,
and no half-pruned model on failure."""

from __future__ import annotations

import copy

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.errors import HippError, PlanError
from hipp_torchprune.pruning import operator
from tests.conftest import PROMPTS, images, samples


def _logits(model, adapter, processor) -> torch.Tensor:
    batch = adapter.encode(processor, images(3, seed=7), PROMPTS)
    with torch.no_grad():
        return model(**batch).logits


def test_physical_keeps_same_indices_in_gate_up_down(tiny) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    before = [(m.gate.weight.clone(), m.up.weight.clone(), m.down.weight.clone()) for m in adapter.mlps()]
    scorer = api.importance("magnitude", model)
    scores = operator.layer_scores(adapter, scorer)
    plan = api.make_plan(model, "random", 0.4, round_to=16, seed=3)
    api.prune_model(model, plan, scorer)
    assert tuple(adapter.intermediate_widths()) == plan.widths_after
    for (g, u, d), mlp, s, kept in zip(before, adapter.mlps(), scores, plan.widths_after):
        keep = operator.keep_indices(s, kept)
        assert torch.equal(mlp.gate.weight, g[keep])
        assert torch.equal(mlp.up.weight, u[keep])
        assert torch.equal(mlp.down.weight, d[:, keep])


def test_mask_mode_equals_physical_and_is_reversible(tiny) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    dense = _logits(model, adapter, processor)
    stats = api.calibrate(model, processor, samples(4))
    scorer = api.importance("wanda", model, stats)
    plan = api.make_plan(model, "random", 0.5, round_to=16, seed=1)
    masked = api.prune_model(model, plan, scorer, mode="mask")
    masked_logits = _logits(model, adapter, processor)
    masked.masks.remove()
    assert torch.allclose(_logits(model, adapter, processor), dense)  # masks removed -> dense again
    assert not torch.allclose(masked_logits, dense, atol=1e-4)
    api.prune_model(model, plan, scorer, mode="physical")
    physical = _logits(model, adapter, processor)
    assert physical.shape == dense.shape and torch.isfinite(physical).all()
    assert torch.allclose(masked_logits, physical, atol=1e-5)


def test_failure_midway_restores_model(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    dense = _logits(model, adapter, processor)
    plan = api.make_plan(model, "uniform", 0.5, round_to=16)
    calls = {"n": 0}
    real_prune = operator.tp.dependency.Group.prune

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure in layer 2")
        return real_prune(self, *args, **kwargs)

    monkeypatch.setattr(operator.tp.dependency.Group, "prune", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        api.prune_model(model, plan, api.importance("magnitude", model))
    assert adapter.intermediate_widths() == list(plan.widths_before)
    assert torch.equal(_logits(model, adapter, processor), dense)


@pytest.mark.parametrize(
    ("ratios", "error"),
    [([0.2, 0.2], PlanError), ([0.2, float("nan"), 0.2, 0.2], PlanError), ([0.2, 0.95, 0.2, 0.2], PlanError),
     ([0.2, -0.01, 0.2, 0.2], PlanError)],
)
def test_bad_plans_leave_model_untouched(tiny, ratios: list[float], error: type) -> None:
    _, model, _ = tiny
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error):
        plan = api.plan_from_ratios(model, ratios, round_to=16)
        api.prune_model(model, plan, api.importance("magnitude", model))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_plan_for_other_widths_is_refused(tiny) -> None:
    _, model, _ = tiny
    plan = api.make_plan(model, "uniform", 0.25, round_to=16)
    api.prune_model(model, plan, api.importance("magnitude", model))
    with pytest.raises(PlanError, match="widths"):
        api.prune_model(model, plan, api.importance("magnitude", model))


def test_rows_outside_language_model_untouched(tiny) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    vision = copy.deepcopy(adapter.vision_module().state_dict())
    api.prune_model(model, api.make_plan(model, "uniform", 0.5, round_to=16), api.importance("magnitude", model))
    assert all(torch.equal(vision[k], v) for k, v in adapter.vision_module().state_dict().items())


def test_error_types_share_base() -> None:
    assert issubclass(PlanError, HippError) and issubclass(operator.GroupStructureError, HippError)


@pytest.mark.parametrize("kept", [0, 1, 5, 12])
def test_score_ranks_select_the_same_rows_as_keep_indices(kept: int) -> None:
    scores = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.9, 0.5, 0.0, 0.3, 0.7, 0.2, 0.9, 0.4])  # ties on purpose
    ranks = operator.score_ranks(scores)
    assert sorted(ranks.tolist()) == list(range(12))
    assert ranks[1].item() == 0 and ranks[4].item() == 1 and ranks[10].item() == 2  # ties: lower index first
    assert torch.equal(torch.nonzero(ranks < kept).flatten(), operator.keep_indices(scores, kept))


def test_set_ranked_equals_set_keep(tiny) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    scores = operator.layer_scores(adapter, api.importance("magnitude", model))
    kept = [w // 3 + i for i, w in enumerate(adapter.intermediate_widths())]
    with operator.PlanMasks(adapter) as masks:
        masks.set_keep([operator.keep_indices(s, k) for s, k in zip(scores, kept)])
        expected = [m.clone() for m in masks.masks]
        masks.set_keep(None)
        masks.set_ranked([operator.score_ranks(s) for s in scores], kept)
        assert all(torch.equal(a, b) for a, b in zip(masks.masks, expected))
        assert [int(m.sum()) for m in masks.masks] == kept
        with pytest.raises(PlanError):
            masks.set_ranked([operator.score_ranks(s) for s in scores][:-1], kept)
