"""``float32_linears``: float32 arithmetic for 16-bit CPU models, parameters untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hipp_torchprune import api
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.pruning.calibration import collect_stats
from hipp_torchprune.pruning.compute import float32_linears, needs_upcast
from tests.conftest import samples


def _net(dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False)).to(dtype)


def test_linears_compute_in_float32_and_return_the_model_dtype() -> None:
    net = _net(torch.bfloat16)
    x = torch.randn(5, 8).to(torch.bfloat16)
    params = [(p, p.dtype) for p in net.parameters()]
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    with float32_linears(net):
        for linear in (net[0], net[2]):  # registered after the block's own hooks: sees what F.linear gets
            linear.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, m.weight.dtype)))
        out = net(x)
    assert seen == [(torch.float32, torch.float32)] * 2
    assert out.dtype == torch.bfloat16
    # float32 products of the bf16 values, rounded once per layer, as computed by hand:
    w0, b0, w2 = (p.float() for p in net.parameters())
    hidden = (x.float() @ w0.T + b0).to(torch.bfloat16).relu()
    assert torch.equal(out, (hidden.float() @ w2.T).to(torch.bfloat16))
    assert [(p, p.dtype) for p in net.parameters()] == params  # the same objects, still bf16
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())


def test_gradients_reach_the_stored_parameters() -> None:
    net = _net(torch.bfloat16)
    with float32_linears(net):
        net(torch.randn(3, 8).to(torch.bfloat16)).float().sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and g.dtype == torch.bfloat16 and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("dtype", "enabled"), [(torch.float32, True), (torch.float64, True),
                                               (torch.bfloat16, False)])
def test_full_precision_models_or_disabled_are_left_alone(dtype: torch.dtype, enabled: bool) -> None:
    net = _net(dtype)
    assert needs_upcast(net) is (dtype == torch.bfloat16)
    with float32_linears(net, enabled=enabled):
        assert not any(parametrize.is_parametrized(m) for m in net.modules())
        assert not any(m._forward_pre_hooks for m in net.modules())


def test_restored_after_an_error() -> None:
    net = _net(torch.bfloat16)
    with pytest.raises(RuntimeError, match="boom"), float32_linears(net):
        raise RuntimeError("boom")
    assert not any(parametrize.is_parametrized(m) for m in net.modules())


def test_bf16_calibration_statistics_match_float32_arithmetic() -> None:
    """A bf16 tiny LLaVA's statistics equal those of its float32 twin to bf16 rounding of the
    activations (they were bf16 matrix products before; now they are float32 ones)."""
    model, processor = build_tiny("tiny-llava", seed=0)
    twin = build_tiny("tiny-llava", seed=0)[0].to(torch.bfloat16).float()  # the same bf16 values in fp32
    model = model.to(torch.bfloat16)
    batches = list(api.calibration_batches(api.get_adapter(model), processor, samples(2)))
    low = collect_stats(model, api.get_adapter(model), batches)
    ref = collect_stats(twin, api.get_adapter(twin), batches)
    assert next(model.parameters()).dtype == torch.bfloat16
    for name, sq in ref.in_sq.items():
        assert torch.allclose(low.in_sq[name].double(), sq.double(), rtol=0.05, atol=1e-6), name


def test_gradient_calibration_keeps_bf16_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """``collect_stats(with_grads=True)`` does not upcast: autograd would keep a float32 copy of
    every weight for the backward pass (a float32 twin of the model)."""
    from hipp_torchprune.pruning import calibration

    model, processor = build_tiny("tiny-llava", seed=0)
    model = model.to(torch.bfloat16)
    flags: list[bool] = []
    real = calibration.float32_linears
    monkeypatch.setattr(calibration, "float32_linears",
                        lambda m, enabled=True: (flags.append(enabled), real(m, enabled))[1])
    batches = list(api.calibration_batches(api.get_adapter(model), processor, samples(2)))
    stats = collect_stats(model, api.get_adapter(model), batches, with_grads=True)
    collect_stats(model, api.get_adapter(model), batches)
    assert flags == [False, True] and stats.taylor
