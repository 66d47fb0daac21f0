"""The plan environment: what it keeps resident while it scores plans."""

from __future__ import annotations

import torch

from hipp_torchprune import api


def _resident_tensor_bytes(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of the tensors an object holds (through lists, tuples, dicts and plain objects),
    not counting nn.Modules (the model's own weights) or adapters."""
    from torch import nn

    from hipp_torchprune.adapters.base import ModelAdapter

    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (nn.Module, ModelAdapter)) or callable(obj) and not hasattr(obj, "__dict__"):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_resident_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_resident_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_resident_tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def test_plan_environment_keeps_no_weight_sized_copies(tiny) -> None:
    """Memory arithmetic: what the environment keeps grows with the MLP rows (scores, ranks,
    masks: a few bytes per row), never with the weights (rows x hidden): at LLaVA-7B shapes
    (32 x 11008 rows) that bound is 32 x 11008 x 16 B = 5.6 MB, where float64 |W| copies were 23 GB."""
    from hipp_torchprune.hipp.env import PlanEnvironment

    _, model, _ = tiny
    adapter = api.get_adapter(model)
    widths = adapter.intermediate_widths()
    scores = [torch.rand(w) for w in widths]
    env = PlanEnvironment(model, adapter, scores, {"rob": lambda m: 0.0, "util": lambda m: 0.0}, round_to=8,
                          r_max=0.8, compression_range=(0.2, 0.5), row_params=[1] * len(widths))
    try:
        rows = sum(widths)
        mlp_weight_bytes = sum(m.up.weight.numel() * 3 * m.up.weight.element_size() for m in adapter.mlps())
        # per row: score (float32) + rank (int64) + mask (model dtype, <= 4 B); plus a few scalars
        assert _resident_tensor_bytes(env) <= 16 * rows + 64 < mlp_weight_bytes / 4
        assert env.score([[0.25] * len(widths)]).phi.item() < 0
    finally:
        env.close()


def test_score_widths_matches_score_and_refuses_bad_widths(tiny) -> None:
    """Scoring a plan by its kept widths (another allocator's) is scoring it by its ratios; the
    objectives see the mask of exactly those widths; impossible widths are refused."""
    import pytest

    from hipp_torchprune.errors import HippError
    from hipp_torchprune.hipp.env import PlanEnvironment

    _, model, _ = tiny
    adapter = api.get_adapter(model)
    widths = adapter.intermediate_widths()
    kept_seen: list[int] = []

    def rob(m: torch.nn.Module) -> float:  # the kept rows of layer 0 under the current mask
        kept_seen.append(int(env.masks.masks[0].sum()))
        return float(kept_seen[-1])

    env = PlanEnvironment(model, adapter, [torch.rand(w) for w in widths], {"rob": rob, "util": lambda m: 0.0},
                          round_to=8, r_max=0.8, compression_range=(0.2, 0.5), row_params=[1] * len(widths))
    try:
        by_ratio = env.score([[0.5] * len(widths)])
        by_width = env.score_widths(by_ratio.widths)
        assert torch.equal(by_ratio.raw, by_width.raw) and torch.equal(by_ratio.phi, by_width.phi)
        odd = tuple([8] + list(widths[1:]))
        assert env.score_widths([odd]).raw[0, 0].item() == 8.0 and kept_seen[-1] == 8
        for bad in ([0] + list(widths[1:]), list(widths[:-1]), [widths[0] + 1] + list(widths[1:])):
            with pytest.raises(HippError, match="kept widths"):
                env.score_widths([tuple(bad)])
    finally:
        env.close()


def test_grams_score_every_plan_refitted_and_leave_the_model_dense() -> None:
    """With Grams, the objectives see the plan's masks plus its least-squares refit (the logits of
    the physically pruned, refitted model), and the model is the dense one after each plan."""
    import copy

    import pytest

    from hipp_torchprune.errors import HippError
    from hipp_torchprune.hipp.env import PlanEnvironment
    from hipp_torchprune.models.tiny import build_tiny
    from hipp_torchprune.pruning import operator
    from hipp_torchprune.pruning.reconstruct import collect_down_grams, held_grams, solve_downs, write_downs
    from tests.conftest import samples

    model, processor = build_tiny("tiny-llava", seed=0)
    adapter = api.get_adapter(model)
    widths = adapter.intermediate_widths()
    grams = collect_down_grams(model, adapter, api.calibration_batches(adapter, processor, samples(3)))
    batch = next(api.calibration_batches(adapter, processor, samples(2, seed=4)))
    seen: list[torch.Tensor] = []

    def rob(m: torch.nn.Module) -> float:
        with torch.no_grad():
            seen.append(m(**batch, use_cache=False).logits)
        return 0.0

    scores = [torch.rand(w, generator=torch.Generator().manual_seed(i)) for i, w in enumerate(widths)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"round_to": 8, "r_max": 0.8, "compression_range": (0.2, 0.5), "row_params": [1] * len(widths)}
    with pytest.raises(HippError, match="Grams for"):
        PlanEnvironment(model, adapter, scores, {}, grams=grams[:-1], **kwargs)
    plan = tuple(w // 2 for w in widths[:-1]) + (widths[-1],)
    for env_grams in (grams, None):
        env = PlanEnvironment(model, adapter, scores, {"rob": rob, "util": lambda m: 0.0}, grams=env_grams, **kwargs)
        try:
            env.score_widths([plan])
        finally:
            env.close()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    keep = [operator.keep_indices(s, k) for s, k in zip(scores, plan)]
    pruned = copy.deepcopy(model)
    operator.prune_physical(api.get_adapter(pruned), keep)
    write_downs(api.get_adapter(pruned), solve_downs(adapter, keep, held_grams(grams)))
    with torch.no_grad():
        assert torch.allclose(seen[0], pruned(**batch, use_cache=False).logits, atol=1e-4)
    assert not torch.allclose(seen[0], seen[1], atol=1e-3)
