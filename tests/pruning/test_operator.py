"""The structured operator on every tiny model family: consistency, forward, mask == physical,
and no half-pruned model on failure."""

from __future__ import annotations

import copy
import gc
import warnings

import pytest
import torch
import torch_pruning as tp

from hipp_torchprune import api
from hipp_torchprune.adapters.base import MLPProjections
from hipp_torchprune.errors import HippError, PlanError
from hipp_torchprune.models.tiny import tiny_llava
from hipp_torchprune.pruning import operator, removal
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


# gather_channels runs twice per parameter (kept, removed): call 1 fails before anything moved,
# call 4 inside layer 0 after its gate was swapped, call 15 inside layer 2 with two layers done
@pytest.mark.parametrize("fail_at", [1, 4, 15])
def test_failure_midway_restores_model(tiny, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    dense = _logits(model, adapter, processor)
    originals = [(m.gate.weight, m.up.weight, m.down.weight) for m in adapter.mlps()]
    plan = api.make_plan(model, "uniform", 0.5, round_to=16)
    calls = {"n": 0}
    real_gather = removal.gather_channels

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("simulated failure")
        return real_gather(*args, **kwargs)

    monkeypatch.setattr(removal, "gather_channels", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        api.prune_model(model, plan, api.importance("magnitude", model))
    assert adapter.intermediate_widths() == list(plan.widths_before)
    assert all(m.gate.in_features == m.up.in_features == m.down.out_features for m in adapter.mlps())
    assert [(m.gate.weight, m.up.weight, m.down.weight) for m in adapter.mlps()] == originals  # same objects
    assert torch.equal(_logits(model, adapter, processor), dense)


def test_removal_matches_torch_pruning_group_prune(tiny) -> None:
    """hipp removes exactly what Torch-Pruning's own group.prune() removes, dtype included."""
    _, model, _ = tiny
    model = model.to(torch.bfloat16)
    twin = copy.deepcopy(model)
    plan = api.make_plan(model, "random", 0.4, round_to=16, seed=2)
    scorer = api.importance("magnitude", model)
    keep = [operator.keep_indices(s, k)
            for s, k in zip(operator.layer_scores(api.get_adapter(model), scorer), plan.widths_after)]
    api.prune_model(model, plan, scorer)
    twin_adapter = api.get_adapter(twin)
    graph = operator.build_mlp_graph(twin_adapter)
    for i, (idx, width) in enumerate(zip(keep, plan.widths_before)):
        removed = sorted(set(range(width)) - set(idx.tolist()))
        operator.mlp_group(graph, twin_adapter, i, removed).prune()
    ours, theirs = dict(model.named_parameters()), dict(twin.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    assert all((a.in_features, a.out_features) == (b.in_features, b.out_features)
               for m, t in zip(api.get_adapter(model).mlps(), twin_adapter.mlps())
               for a, b in ((m.gate, t.gate), (m.up, t.up), (m.down, t.down)))


def _held_full_width_tensors(model: torch.nn.Module, width: int) -> int:
    """Tensors alive with a full-width MLP shape that the model itself no longer holds."""
    in_model = {id(p) for p in model.parameters()}
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated module objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    return sum(1 for t in tensors if id(t) not in in_model and t.ndim == 2 and width in t.shape
               and not t.is_meta)  # a meta tensor holds no memory


def test_physical_pruning_holds_at_most_one_layers_old_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_llava(intermediate_size=336, num_layers=6)  # 336 is no other tensor's size
    peak = {"held": 0, "swaps": 0}
    real_setattr = torch.nn.Linear.__setattr__

    def watching_setattr(self, name, value):  # every weight swap, by us or by Torch-Pruning
        if name == "weight":
            peak["swaps"] += 1
            peak["held"] = max(peak["held"], _held_full_width_tensors(model, 336))
        real_setattr(self, name, value)

    monkeypatch.setattr(torch.nn.Linear, "__setattr__", watching_setattr)
    gc.collect()
    plan = api.make_plan(model, "uniform", 0.5, round_to=16)
    api.prune_model(model, plan, api.importance("magnitude", model))
    assert tuple(api.get_adapter(model).intermediate_widths()) == plan.widths_after
    assert peak["swaps"] >= 18  # every projection of every layer was watched
    assert peak["held"] <= 3  # at most gate, up, down of the layer being pruned, never the layers before


@pytest.mark.parametrize("group_scorer", [False, True])
def test_prune_model_traces_the_graph_once(tiny, monkeypatch: pytest.MonkeyPatch, group_scorer: bool) -> None:
    """Once in all: the weightless twin for built-in scorers, the real graph for scorers of groups."""
    _, model, _ = tiny
    scorer = tp.importance.GroupMagnitudeImportance() if group_scorer else api.importance("magnitude", model)
    traces = {"n": 0}
    real_build = operator.tp.DependencyGraph.build_dependency

    def counting(self, *args, **kwargs):
        traces["n"] += 1
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(operator.tp.DependencyGraph, "build_dependency", counting)
    plan = api.make_plan(model, "uniform", 0.25, round_to=16)
    api.prune_model(model, plan, scorer)
    assert traces["n"] == 1 and tuple(api.get_adapter(model).intermediate_widths()) == plan.widths_after


def test_physical_pruning_never_runs_the_real_language_model(tiny) -> None:
    """The coupling is traced on a weightless twin: no forward through the real weights."""
    _, model, processor = tiny
    adapter = api.get_adapter(model)
    lm = adapter.language_model()

    def no_forward(*args, **kwargs):
        raise AssertionError("the real language model ran")

    lm.forward = no_forward
    plan = api.make_plan(model, "uniform", 0.25, round_to=16)
    api.prune_model(model, plan, api.importance("magnitude", model))
    del lm.forward
    assert tuple(adapter.intermediate_widths()) == plan.widths_after
    assert torch.isfinite(_logits(model, adapter, processor)).all()


def test_coupling_check_falls_back_to_the_real_graph(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model, _ = tiny
    twin = copy.deepcopy(model)

    def no_twin(adapter):
        raise RuntimeError("this architecture has no meta twin")

    plan = api.make_plan(model, "random", 0.4, round_to=16, seed=4)
    api.prune_model(twin, plan, api.importance("magnitude", twin))
    monkeypatch.setattr(operator, "meta_twin", no_twin)
    api.prune_model(model, plan, api.importance("magnitude", model))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_unexpected_coupling_is_refused(tiny) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    graph = operator.build_mlp_graph(adapter)
    mlp = adapter.mlp(0)
    with pytest.raises(operator.GroupStructureError, match="layer 0"):
        operator._coupled_group(graph, MLPProjections(gate=mlp.gate, up=mlp.down, down=mlp.up), 0, [0])


@pytest.mark.parametrize("keep", [[torch.tensor([0, 0, 1])], [torch.tensor([0, 999])], [torch.tensor([[0, 1]])],
                                  [torch.tensor([0.0, 1.0])]])
def test_bad_keep_indices_are_refused_before_any_change(tiny, keep: list[torch.Tensor]) -> None:
    _, model, _ = tiny
    adapter = api.get_adapter(model)
    state = copy.deepcopy(model.state_dict())
    full = [torch.arange(w) for w in adapter.intermediate_widths()]
    with pytest.raises(PlanError):
        operator.prune_physical(adapter, keep + full[1:])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


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
