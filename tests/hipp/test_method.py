"""``method="hipp"``: registered built in, and refused without a policy and a preference."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.hipp.method import HippMethod
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, MethodError, prune_with_method
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.registry import Registry
from tests.conftest import samples


def test_hipp_is_a_builtin_method(registry: Registry) -> None:
    assert registry.get("method", "hipp") is HippMethod
    assert (HippMethod.strategy, HippMethod.importance) == ("hipp", DEFAULT_ROW_SCORE)
    assert HippMethod.shared_row_score


@pytest.mark.parametrize("options", [{}, {"policy": "some/dir"}, {"preference": (1.0, 1.0, 1.0)}])
def test_hipp_without_policy_and_preference_is_refused(registry: Registry, options: dict) -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    stats = api.calibrate(model, processor, samples(2), registry=registry)
    widths = api.get_adapter(model, registry).intermediate_widths()
    context = MethodContext(processor, samples(2), stats, round_to=16, registry=registry, options=options)
    with pytest.raises(MethodError, match="'hipp' needs a trained policy and a preference"):
        prune_with_method(model, "hipp", 0.3, context)
    assert api.get_adapter(model, registry).intermediate_widths() == widths



def test_hipp_refits_its_pruned_layers_under_lstsq(registry: Registry) -> None:
    """The shipped policy on the demo model: the same plan with and without the refit, and with it
    every pruned down_proj gains a bias while unpruned ones are left as they were."""
    from hipp_torchprune.demo_job import DEMO_POLICY_DIR
    from hipp_torchprune.hipp.policy_io import load_policy
    from hipp_torchprune.loading import load_model

    policy = load_policy(DEMO_POLICY_DIR)
    reports, downs = {}, {}
    for mode in ("none", "lstsq"):
        model, processor = load_model("demo")
        stats = api.calibrate(model, processor, samples(4), registry=registry)
        context = MethodContext(processor, samples(4), stats, round_to=policy.round_to,
                                r_max=policy.policy.config.r_max, registry=registry, reconstruct=mode,
                                options={"policy": policy, "preference": (0.1, 0.9, 0.0)})
        reports[mode] = prune_with_method(model, "hipp", 0.0, context)
        downs[mode] = [mlp.down for mlp in api.get_adapter(model, registry).mlps()]
    assert reports["lstsq"].widths == reports["none"].widths and reports["lstsq"].details["reconstruct"] == "lstsq"
    full = policy.profile.signature()["widths"]
    assert any(w < f for w, f in zip(reports["lstsq"].widths, full))
    for i, (plain, refit) in enumerate(zip(downs["none"], downs["lstsq"])):
        pruned = reports["lstsq"].widths[i] < full[i]
        assert plain.bias is None
        assert (refit.bias is not None) == pruned
        if pruned:
            assert refit.weight.dtype == plain.weight.dtype and not torch.equal(refit.weight, plain.weight)
