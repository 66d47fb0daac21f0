"""``hipp_torchprune.methods``: what each method needs, the one pruning path, and refusals that
leave the model untouched."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.methods import (
    DEFAULT_ROW_SCORE,
    ROW_SCORES,
    MethodContext,
    MethodError,
    MethodNeeds,
    MethodReport,
    method_needs,
    pair_method,
    prune_with_method,
)
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.registry import Registry
from tests.conftest import baselines_registry, samples

pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")


@pytest.fixture
def reg() -> Registry:
    """A fresh registry with the baselines (and OWL) registered."""
    return baselines_registry()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("method", "needs"), [
    ("wanda", MethodNeeds(samples=True, stats=True, grads=False)),
    ("llm-pruner", MethodNeeds(samples=True, stats=True, grads=True)),
    ("owl", MethodNeeds(samples=True, stats=True, grads=False)),
    ("flap", MethodNeeds(samples=True, stats=True, grads=False)),
    ("slicegpt", MethodNeeds(samples=True, stats=False, grads=False)),
    ("hipp", MethodNeeds(samples=True, stats=True, grads=False)),
])
def test_registered_methods_declare_their_calibration(reg: Registry, method: str, needs: MethodNeeds) -> None:
    assert method_needs(reg.get("method", method)(), reg) == needs


def test_pair_needs_follow_scorer_and_strategy(reg: Registry) -> None:
    assert method_needs(pair_method("uniform", "magnitude"), reg) == MethodNeeds(False, False, False)
    assert method_needs(pair_method("ecoflap", "magnitude"), reg) == MethodNeeds(True, True, False)
    assert method_needs(object(), reg) == MethodNeeds()  # a method that does not say: samples and stats


def test_pair_method_is_the_registered_method(reg: Registry) -> None:
    """``--strategy uniform --importance wanda-sp`` and ``--method wanda`` prune the same rows."""
    calib = samples(3)
    pruned = []
    for method in ("wanda", pair_method("uniform", "wanda-sp")):
        model, processor = build_tiny("tiny-llava", seed=0)
        stats = api.calibrate(model, processor, calib, registry=reg)
        report = prune_with_method(model, method, 0.3, MethodContext(processor, calib, stats, round_to=16,
                                                                     registry=reg))
        assert isinstance(report, MethodReport) and report.plan is not None
        assert list(report.widths) == list(report.plan.widths_after)
        pruned.append(model.state_dict())
    assert pruned[0].keys() == pruned[1].keys() and all(torch.equal(pruned[0][k], pruned[1][k]) for k in pruned[0])


def test_missing_calibration_is_refused_before_pruning(reg: Registry) -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    before = _snapshot(model)
    with pytest.raises(MethodError, match="'wanda' needs calibration"):
        prune_with_method(model, "wanda", 0.3, MethodContext(processor, samples(2), None, round_to=16, registry=reg))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_slicegpt_on_qwen_is_refused_untouched(reg: Registry) -> None:
    from hipp_baselines.slicegpt import SliceGPTUnsupportedError

    model, processor = build_tiny("tiny-qwen2_5_vl", seed=0)
    before = _snapshot(model)
    with pytest.raises(SliceGPTUnsupportedError, match="slicegpt supports LLaVA only, not Qwen2_5_VL"):
        prune_with_method(model, "slicegpt", 0.3, MethodContext(processor, samples(2), None, registry=reg))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_method_lists_the_registered_ones(reg: Registry) -> None:
    from hipp_torchprune.errors import UnknownPluginError

    model, processor = build_tiny("tiny-llava", seed=0)
    with pytest.raises(UnknownPluginError, match="unknown method 'nope'; valid names: ecoflap, flap, hipp, llm-pruner"):
        prune_with_method(model, "nope", 0.3, MethodContext(processor, [], None, registry=reg))


def test_context_row_score_defaults_to_the_shared_constant() -> None:
    assert MethodContext(None, [], None).row_score == DEFAULT_ROW_SCORE
    assert DEFAULT_ROW_SCORE in ROW_SCORES
    with pytest.raises(MethodError, match="row score 'taylor' is not one of wanda, wanda-sp, wanda-mix"):
        MethodContext(None, [], None, row_score="taylor")


@pytest.mark.parametrize("score", ROW_SCORES)
def test_row_score_replaces_only_the_takers_importance(reg: Registry, score: str) -> None:
    """random, owl, ecoflap and hipp choose rows by the context's row score; wanda (Wanda-sp),
    llm-pruner (Taylor) and flap keep the score that defines them."""
    context = MethodContext(None, [], None, row_score=score)
    own = {"wanda": "wanda-sp", "llm-pruner": "taylor", "flap": "flap"}
    for name in ("random", "owl", "ecoflap", "hipp", *own):
        assert reg.get("method", name)().row_importance(context) == own.get(name, score)
