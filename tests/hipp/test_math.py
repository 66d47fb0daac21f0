"""HiPP's pure math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hipp_torchprune.hipp.gate import GateConfig, QuantileBand, band_loss, budget_bins, gate_weight
from hipp_torchprune.hipp.grpo import balanced_gradients, gated_policy_loss, group_advantages, scalarize
from hipp_torchprune.hipp.normalization import RunningNorm, cap_at_dense, compression_return, reference_scales
from hipp_torchprune.hipp.planmap import budget, plan_ratios
from hipp_torchprune.hipp.preferences import PreferenceError, parse_preference, sample_preferences, validate_preference
from hipp_torchprune.hipp.synflow import log_synflow, phi


def test_group_advantages_by_hand() -> None:
    # rewards 1, 2, 3: mean 2, population std sqrt(2/3)
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), eps=0.0)
    s = math.sqrt(2 / 3)
    assert torch.allclose(adv, torch.tensor([[-1 / s, 0.0, 1 / s]]))
    assert torch.equal(group_advantages(torch.tensor([[5.0, 5.0]])), torch.zeros(1, 2))


def test_scalarize_by_hand() -> None:
    n = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -3.0]])
    assert torch.allclose(scalarize(n, torch.tensor([0.5, 0.25, 0.25])), torch.tensor([0.375, -0.25]))


def test_gated_loss_by_hand() -> None:
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss = gated_policy_loss(logp, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(-(1 * 1 * -1 + 0.5 * -1 * -2) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([-0.5, 0.25]))  # -g*A/G


def test_clipped_loss_matches_plain_gradient_on_policy() -> None:
    adv, gate = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, 0.3, 0.9])
    a = torch.tensor([-1.0, -0.5, -3.0], requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    gated_policy_loss(a, adv, gate).backward()
    gated_policy_loss(b, adv, gate, old_logp=b.detach(), clip_eps=0.2).backward()
    assert torch.allclose(a.grad, b.grad)
    # far off-policy with positive advantage: clipped, no gradient
    c = torch.tensor([0.0], requires_grad=True)
    gated_policy_loss(c, torch.tensor([1.0]), torch.tensor([1.0]), old_logp=torch.tensor([-1.0]), clip_eps=0.2).backward()
    assert c.grad.item() == 0.0


def test_band_loss_and_gate_by_hand() -> None:
    phi_values = torch.tensor([-5.0, -2.0, 0.5])
    loss = band_loss(phi_values, lo=-3.0, hi=0.0, kappa=2.0)
    assert torch.allclose(loss, torch.tensor([4.0, 0.0, 1.0]))
    assert torch.allclose(gate_weight(loss, beta=0.5), torch.exp(torch.tensor([-2.0, 0.0, -0.5])))


def test_quantile_band_warmup_narrows() -> None:
    band = QuantileBand(GateConfig(binning="pooled", side="both", quantiles=(0.0, 1.0), warmup=4, warmup_widen=1.0,
                                   min_history=4))
    assert torch.equal(band.weights(torch.tensor([-100.0])), torch.ones(1))  # no band yet
    band.update(torch.tensor([-2.0, -1.0, -1.5, -1.2]))
    assert band.band() == pytest.approx((-2.0 - 0.75, -1.0 + 0.75))  # 3 of 4 warm-up updates left
    for _ in range(3):
        band.update(torch.tensor([-1.5]))
    assert band.band() == pytest.approx((-2.0, -1.0))
    w = band.weights(torch.tensor([-1.5, -10.0]))
    assert w[0] == 1.0 and w[1] < 1e-3


def test_budget_bins_by_hand() -> None:
    assert budget_bins(torch.tensor([0.0, 0.049, 0.05, 0.31]), 0.05).tolist() == [0, 0, 1, 6]
    with pytest.raises(ValueError):
        budget_bins(torch.tensor([0.1]), 0.0)


def _two_budget_history(config: GateConfig) -> QuantileBand:
    """Eight plans at 20 % sparsity with phi in [-1.2, -1.0], eight at 40 % with phi in [-3.2, -3.0]."""
    band = QuantileBand(config)
    spread = torch.linspace(0.0, -0.2, 8)
    band.update(torch.cat([-1.0 + spread, -3.0 + spread]), torch.tensor([0.2] * 8 + [0.4] * 8))
    return band


def test_pooled_band_fights_the_budget_and_the_binned_band_does_not() -> None:
    # plans: light and healthy, sparse and healthy, light but collapsed, sparse and collapsed
    phi, realized = torch.tensor([-0.9, -2.0, -2.5, -3.6]), torch.tensor([0.2, 0.4, 0.2, 0.4])
    common = {"quantiles": (0.1, 0.9), "warmup": 0, "min_history": 8}
    pooled = _two_budget_history(GateConfig(binning="pooled", side="both", **common)).weights(phi, realized)
    binned = _two_budget_history(GateConfig(**common)).weights(phi, realized)
    # the paper's pooled two-sided band penalizes the light healthy plan and misses the light collapsed one
    assert pooled[0] < 0.95 and pooled[1] == 1.0 and pooled[2] == 1.0 and pooled[3] < 0.8
    # per budget bin and one-sided: only the plans that lost flow against their own bin
    assert binned[0] == 1.0 and binned[1] == 1.0 and binned[2] < 0.3 and binned[3] < 0.7
    assert torch.equal(_two_budget_history(GateConfig(enabled=False, **common)).weights(phi, realized),
                       torch.ones(4))


def test_binned_band_waits_for_its_own_bin_and_resumes() -> None:
    band = _two_budget_history(GateConfig(quantiles=(0.1, 0.9), warmup=0, min_history=8))
    assert band.band(0.3) is None and band.band(0.2) is not None  # nothing seen at 30 % yet
    restored = QuantileBand(band.config)
    restored.load_state_dict(band.state_dict())
    assert restored.band(0.4) == band.band(0.4) and restored.band(0.4)[1] == float("inf")


def test_running_norm_matches_batch_statistics() -> None:
    data = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0, 0.1]) + 4
    norm = RunningNorm(3, clip=100.0, eps=0.0)
    for chunk in data.split(7):
        norm.update(chunk)
    assert torch.allclose(norm.mean.float(), data.mean(0), atol=1e-5)
    assert torch.allclose(norm.std.float(), data.std(0, unbiased=False), atol=1e-5)
    assert RunningNorm(1, clip=3.0).normalize(torch.tensor([[10.0]])).item() == 3.0  # clipped


def test_compression_ramp() -> None:
    s = torch.tensor([0.1, 0.2, 0.25, 0.3, 0.5])
    assert torch.allclose(compression_return(s, 0.2, 0.3), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_cap_at_dense_by_hand() -> None:
    """Robustness and utility above the dense plan's are cut to it; below it, and compression, untouched."""
    raw = torch.tensor([[-0.2, -0.5, 0.3], [-0.3, -0.1, 1.0], [-0.25, -0.3, 0.0]])
    dense = torch.tensor([-0.25, -0.3, 0.0])
    expected = torch.tensor([[-0.25, -0.5, 0.3], [-0.3, -0.3, 1.0], [-0.25, -0.3, 0.0]])
    torch.testing.assert_close(cap_at_dense(raw, dense), expected)
    assert raw[0, 0] == pytest.approx(-0.2)  # the input is not modified
    robustness_only = torch.tensor([[-0.25, -0.5, 0.3], [-0.3, -0.1, 1.0], [-0.25, -0.3, 0.0]])
    torch.testing.assert_close(cap_at_dense(raw, dense, columns=1), robustness_only)
    with pytest.raises(ValueError):
        cap_at_dense(raw, dense, columns=3)


def test_reference_scales_by_hand() -> None:
    dense, pruned = torch.tensor([4.0, -0.2, 0.0]), torch.tensor([3.0, -0.4, 1.0])
    assert reference_scales(dense, pruned).tolist() == pytest.approx([1.0, 0.2, 1.0])
    # an objective the reference plan does not move gets the floor, not a division by zero
    assert reference_scales(torch.tensor([1.0]), torch.tensor([1.0]), floor=1e-3).tolist() == pytest.approx([1e-3])
    # in those units a 0.1 loss of a log-likelihood weighs as a 0.5 loss of a margin of twice its range
    assert float(torch.tensor([0.0, 0.1, 0.0]).div(reference_scales(dense, pruned))[1]) == pytest.approx(0.5)


def test_plan_map_budget_and_cap() -> None:
    assert budget(0.5, 0.2, 0.4) == pytest.approx(0.3)
    ratios = plan_ratios(0.5, [0.7, 0.1, 0.1, 0.1], [1, 1, 1, 1], 0.2, 0.4, r_max=0.8)
    assert max(ratios) <= 0.8 and sum(ratios) / 4 == pytest.approx(0.3)
    assert ratios[0] == pytest.approx(0.8)  # 0.3*4*0.7 = 0.84 clipped, overflow redistributed
    assert plan_ratios(1.0, [0.25] * 4, [1] * 4, 0.2, 0.4, 0.8) == pytest.approx((0.4,) * 4)


@pytest.mark.parametrize(("text", "expected"), [("1,1,2", (0.25, 0.25, 0.5)), ("0,0,3", (0.0, 0.0, 1.0))])
def test_parse_preference(text: str, expected: tuple[float, float, float]) -> None:
    assert parse_preference(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [[1, 1], [0, 0, 0], [-1, 1, 1], [float("nan"), 1, 1]])
def test_bad_preferences(bad: list[float]) -> None:
    with pytest.raises(PreferenceError):
        validate_preference(bad)


@pytest.mark.parametrize("mode", ["mixed", "anchors", "dirichlet"])
def test_preference_sampler(mode: str) -> None:
    w = sample_preferences(400, mode, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert w.shape == (400, 3) and torch.allclose(w.sum(-1), torch.ones(400)) and (w >= 0).all()
    is_anchor = (w.max(-1).values == 1.0) | torch.isclose(w, torch.full_like(w, 1 / 3)).all(-1)
    expected = {"anchors": 1.0, "dirichlet": 0.0, "mixed": 0.5}[mode]
    assert abs(is_anchor.float().mean().item() - expected) < 0.08


def test_synflow_log_domain_equals_direct_product() -> None:
    g = torch.Generator().manual_seed(0)
    ups = [torch.rand(6, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    downs = [torch.rand(4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    masks = [torch.tensor([1, 0, 1, 1, 0, 1.0], dtype=torch.float64) for _ in range(3)]
    direct = torch.ones(4, dtype=torch.float64)
    for up, down, m in zip(ups, downs, masks):
        direct = down @ torch.diag(m) @ up @ direct
    assert log_synflow(ups, downs, masks).item() == pytest.approx(math.log(direct.sum().item()), rel=1e-12)
    assert phi(ups, downs, masks).item() < 0
    batched = log_synflow(ups, downs, [torch.stack([m, torch.ones(6, dtype=torch.float64)]) for m in masks])
    assert batched[0].item() == pytest.approx(log_synflow(ups, downs, masks).item())
    assert batched[1].item() == pytest.approx(log_synflow(ups, downs).item())


def test_synflow_never_overflows() -> None:
    ups = [torch.full((64, 32), 50.0) for _ in range(40)]
    downs = [torch.full((32, 64), 50.0) for _ in range(40)]
    value = log_synflow(ups, downs)
    assert math.isfinite(value.item()) and value.item() > 300  # direct product would be ~1e600


def test_policy_log_prob_is_exact() -> None:
    from torch.distributions import Beta, Dirichlet

    from hipp_torchprune.hipp.policy import HippPolicy, PolicyConfig

    torch.manual_seed(0)
    policy = HippPolicy(n_features=9, config=PolicyConfig(hidden=16, concentration=5.0))
    states = torch.randn(2, 4, 9)
    (u, alpha), logp = policy.sample(states)
    assert u.shape == (2,) and alpha.shape == (2, 4) and torch.allclose(alpha.sum(-1), torch.ones(2))
    beta, dirichlet = policy.distributions(states)
    a, b = beta.concentration1, beta.concentration0
    manual_beta = ((a - 1) * torch.log(u) + (b - 1) * torch.log1p(-u)
                   - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)))
    c = dirichlet.concentration
    manual_dir = ((c - 1) * torch.log(alpha)).sum(-1) + torch.lgamma(c.sum(-1)) - torch.lgamma(c).sum(-1)
    assert torch.allclose(logp, manual_beta + manual_dir, atol=1e-4)
    assert torch.allclose(policy.log_prob(states, u, alpha), logp, atol=1e-5)
    parts = policy.log_prob_parts(states, u, alpha)
    assert torch.allclose(parts[0], manual_beta, atol=1e-4) and torch.allclose(parts[1], manual_dir, atol=1e-4)
    assert isinstance(beta, Beta) and isinstance(dirichlet, Dirichlet)
    mean_u, mean_alpha = policy.mean_action(states)
    assert torch.allclose(mean_alpha, torch.full((2, 4), 0.25), atol=1e-6)  # zero-init allocation head


def test_train_config_loads_from_nested_yaml(tmp_path) -> None:
    from hipp_torchprune.config import ConfigError, load_yaml
    from hipp_torchprune.hipp.trainer import TrainConfig

    path = tmp_path / "train.yaml"
    path.write_text("steps: 7\nsampler: anchors\npolicy:\n  rho_min: 0.3\n  rho_max: 0.5\ngate:\n  quantiles: [0.1, 0.9]\n")
    config = load_yaml(TrainConfig, path)
    assert config.steps == 7 and config.sampler == "anchors" and config.policy.rho_max == 0.5
    assert config.gate.quantiles == (0.1, 0.9) and config.policy.hidden == 64
    path.write_text("policy:\n  rho_mn: 0.3\n")
    with pytest.raises(ConfigError, match="policy: unknown field"):
        load_yaml(TrainConfig, path)
    path.write_text("head_balance: joint\ngate:\n  binning: pooled\n  side: both\n  enabled: false\n")
    config = load_yaml(TrainConfig, path)
    assert config.head_balance == "joint" and config.gate == GateConfig(enabled=False, binning="pooled", side="both")
    for bad in ("sampler: anchor\n", "gate:\n  side: upper\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="is not one of"):
            load_yaml(TrainConfig, path)


def test_synflow_of_lazy_float32_weights_matches_float64_copies() -> None:
    from torch import nn

    from hipp_torchprune.hipp.synflow import AbsWeights

    torch.manual_seed(0)
    ups = [nn.Linear(16, 48, bias=False).to(torch.bfloat16) for _ in range(3)]  # (d_ff, h), bf16 like a 7B
    downs = [nn.Linear(48, 16, bias=False).to(torch.bfloat16) for _ in range(3)]
    masks = [(torch.rand(48) < 0.6).float() for _ in range(3)]
    exact = log_synflow([u.weight.double().abs() for u in ups], [d.weight.double().abs() for d in downs],
                        [m.double() for m in masks])
    lazy_up, lazy_down = AbsWeights(ups), AbsWeights(downs)
    assert log_synflow(lazy_up, lazy_down, masks).item() == pytest.approx(exact.item(), rel=1e-6)
    assert lazy_up[1].dtype == torch.float32 and torch.equal(lazy_up[1], ups[1].weight.float().abs())
    assert len(lazy_up[0:2]) == 2 and len(lazy_up) == 3
    assert not any(isinstance(v, torch.Tensor) for v in vars(lazy_up).values())  # nothing resident


def test_balanced_gradients_by_hand() -> None:
    x, unused = torch.tensor(2.0, requires_grad=True), torch.zeros(2, requires_grad=True)
    grads = balanced_gradients([10 * x, 0.1 * x], [x, unused], max_norm=1.0)
    assert grads[0].item() == pytest.approx(1.1, rel=1e-5) and torch.equal(grads[1], torch.zeros(2))
    assert balanced_gradients([10 * x + 0.1 * x], [x], max_norm=1.0)[0].item() == pytest.approx(1.0, rel=1e-5)


def test_per_head_balance_keeps_the_budget_heads_gradient_at_32_layers() -> None:
    """At 32 layers the allocation term's gradient is > 50x the budget term's, so one joint clip
    shrinks the budget head's update by as much; clipping each head's term alone does not."""
    from hipp_torchprune.hipp.policy import HippPolicy, PolicyConfig
    from hipp_torchprune.hipp.state import layer_states

    torch.manual_seed(0)
    prefs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    states = layer_states(torch.randn(32, 14), prefs, (0.2, 0.4)).repeat_interleave(6, dim=0)  # (24, 32, 19)
    policy = HippPolicy(states.shape[-1], PolicyConfig())
    with torch.no_grad():
        (u, alpha), _ = policy.sample(states)
    advantages, gate, params = torch.randn(24), torch.ones(24), list(policy.parameters())
    budget_loss, alloc_loss = (gated_policy_loss(lp, advantages, gate) for lp in policy.log_prob_parts(states, u, alpha))
    norms = [torch.linalg.vector_norm(torch.cat([g.flatten() for g in torch.autograd.grad(
        loss, params, retain_graph=True, allow_unused=True) if g is not None])) for loss in (budget_loss, alloc_loss)]
    assert norms[1] > 50 * norms[0] and norms[0] < 1.0
    head = [i for i, (n, _) in enumerate(policy.named_parameters()) if n == "budget_head.weight"][0]
    alone = torch.autograd.grad(budget_loss, params[head], retain_graph=True)[0]
    joint = balanced_gradients([budget_loss + alloc_loss], params, max_norm=1.0)[head]
    balanced = balanced_gradients([budget_loss, alloc_loss], params, max_norm=1.0)[head]
    assert torch.allclose(balanced, alone, atol=1e-6)  # the alloc term never reaches the budget head
    assert torch.linalg.vector_norm(joint) < torch.linalg.vector_norm(alone) / 30


def test_budget_from_compression_reads_only_w_comp_and_the_interval() -> None:
    from hipp_torchprune.config import ConfigError
    from hipp_torchprune.hipp.policy import HippPolicy, PolicyConfig, make_policy
    from hipp_torchprune.hipp.state import layer_states

    torch.manual_seed(0)
    policy = HippPolicy(n_features=4 + 5, config=PolicyConfig(hidden=8, budget_input="compression"))
    static = torch.randn(3, 4)

    def budget(static: torch.Tensor, w: list[float], interval: tuple[float, float] = (0.2, 0.4)) -> torch.Tensor:
        beta, _ = policy.distributions(layer_states(static, torch.tensor(w), interval))
        return torch.stack([beta.concentration1, beta.concentration0])

    base = budget(static, [0.8, 0.1, 0.1])
    assert torch.equal(base, budget(static, [0.1, 0.8, 0.1]))  # the robustness/utility split is not read
    assert torch.equal(base, budget(torch.randn(3, 4), [0.5, 0.4, 0.1]))  # nor the layers' state
    assert not torch.equal(base, budget(static, [0.4, 0.1, 0.5]))  # w_comp is
    assert not torch.equal(base, budget(static, [0.8, 0.1, 0.1], (0.3, 0.6)))  # and so is the interval
    paper = HippPolicy(n_features=9, config=PolicyConfig(hidden=8))
    states = [layer_states(static, torch.tensor(w), (0.2, 0.4)) for w in ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1])]
    assert not torch.equal(*(paper.distributions(s)[0].concentration1 for s in states))  # the paper's reads all
    with pytest.raises(ConfigError, match="flat policy"):
        make_policy("flat", 9, PolicyConfig(budget_input="compression"))
