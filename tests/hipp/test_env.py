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
