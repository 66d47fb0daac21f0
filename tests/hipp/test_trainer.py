"""The GRPO loop on a fast synthetic environment: learning, resuming, determinism, the gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.hipp.env import PlanOutcome
from hipp_torchprune.hipp.gate import GateConfig
from hipp_torchprune.hipp.normalization import compression_return
from hipp_torchprune.hipp.policy import PolicyConfig
from hipp_torchprune.hipp.profile import LayerProfile, ModelProfile
from hipp_torchprune.hipp.trainer import TrainConfig, run_setup, train_policy

PROFILE = ModelProfile("Toy", tuple(LayerProfile(i, 256, 0.1 + 0.2 * (i == 0), 1.0, 0.1, 5.0 - i, 1.0,
                                                 (0.1, 0.1, 0.1), (0.01, 0.01, 0.01)) for i in range(4)),
                       (192,) * 4, 8).with_grounding_drops(
    torch.tensor([[2.25, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 2.25]]))  # what ToyEnv loses at 75 % of one layer


class ToyEnv:
    """Robustness falls when layer 0 (the 'visual' layer) is pruned; utility when layer 3 is."""

    def score(self, plans: list[list[float]]) -> PlanOutcome:
        r = torch.tensor(plans, dtype=torch.float32)  # (N, L)
        realized = r.mean(-1)
        raw = torch.stack([-3 * r[:, 0], -3 * r[:, 3], compression_return(realized, 0.2, 0.4)], dim=-1)
        phi = -(r.sum(-1) * 2)
        return PlanOutcome(raw=raw, phi=phi, realized=realized, widths=[(0,)] * len(plans))


CONFIG = TrainConfig(steps=60, group=8, prefs_per_step=2, lr=1e-2, checkpoint_every=10, sampler="anchors",
                     policy=PolicyConfig(hidden=32, rho_min=0.2, rho_max=0.4), gate=GateConfig(min_history=16))


def test_policy_learns_to_spare_the_layer_the_preference_needs(tmp_path: Path) -> None:
    from hipp_torchprune.hipp.planmap import plan_ratios
    from hipp_torchprune.hipp.state import layer_states, static_features

    policy, history = train_policy(ToyEnv(), PROFILE, CONFIG, tmp_path, progress=False)
    evals = [h["anchor_reward"] for h in history if "anchor_reward" in h]
    assert evals[-1] > evals[0] + 0.1
    static = static_features(PROFILE, CONFIG.state)

    def plan(w: list[float]) -> tuple[float, ...]:
        u, alpha = policy.mean_action(layer_states(static, torch.tensor(w), (0.2, 0.4)))
        return plan_ratios(float(u[0]), alpha[0].tolist(), [1.0] * 4, 0.2, 0.4, 0.8)

    rob, util, comp = plan([1, 0, 0]), plan([0, 1, 0]), plan([0, 0, 1])
    # each preference nearly spares the layer its objective needs (the untrained policy prunes it 0.2-0.4).
    # Which layers the compression plan spares, and whether the robustness plan also spares layer 3, the
    # toy's rewards leave open (every such plan is optimal): asserting them tested seed luck, and failed
    # on another CPU (AVX-512 rounding). Over seeds 0-4 both plans spare both layers 0 and 3.
    assert rob[0] < 0.05 and util[3] < 0.05
    assert sum(comp) > sum(rob) and sum(comp) > sum(util)  # compression asks for the larger budget


class OvershootEnv(ToyEnv):
    """ToyEnv whose robustness return rises above the dense plan's when layer 3 is pruned (as a
    yes/no made sharper on the reward rows would), while utility falls with it."""

    def score(self, plans: list[list[float]]) -> PlanOutcome:
        out = super().score(plans)
        r = torch.tensor(plans, dtype=torch.float32)  # (N, L)
        out.raw[:, 0] = -3 * r[:, 0] + 2 * r[:, 3]
        return out


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_cap_stops_a_robustness_heavy_plan_trading_utility_for_gains_above_dense(tmp_path: Path,
                                                                                       seed: int) -> None:
    """Uncapped, a (0.8, 0.2, 0) query prunes layer 3, whose cut lifts robustness above the dense
    plan's (0.8 * 2 > 0.2 * 3); with ``objective_cap="dense"``, or ``"robustness"`` (which caps
    only the return that overshoots), that gain is worth nothing and the utility weight spares layer 3."""
    from hipp_torchprune.hipp.planmap import plan_ratios
    from hipp_torchprune.hipp.state import layer_states, static_features

    def layer3(cap: str) -> float:
        config = TrainConfig(**{**CONFIG.__dict__, "sampler": "mixed", "objective_cap": cap, "seed": seed})
        policy, _ = train_policy(OvershootEnv(), PROFILE, config, tmp_path / cap, progress=False)
        u, alpha = policy.mean_action(layer_states(static_features(PROFILE, config.state),
                                                   torch.tensor([0.8, 0.2, 0.0]), (0.2, 0.4)))
        return plan_ratios(float(u[0]), alpha[0].tolist(), [1.0] * 4, 0.2, 0.4, 0.8)[3]

    capped, robustness_capped, raw = layer3("dense"), layer3("robustness"), layer3("none")
    assert capped < 0.1 and robustness_capped < 0.1 and raw > 0.4


def test_resume_equals_uninterrupted_and_seed_is_deterministic(tmp_path: Path) -> None:
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 20})
    straight, h1 = train_policy(ToyEnv(), PROFILE, short, tmp_path / "a", progress=False)
    again, _ = train_policy(ToyEnv(), PROFILE, short, tmp_path / "b", progress=False)
    half = TrainConfig(**{**CONFIG.__dict__, "steps": 10})
    train_policy(ToyEnv(), PROFILE, half, tmp_path / "c", progress=False)
    resumed, h3 = train_policy(ToyEnv(), PROFILE, short, tmp_path / "c", progress=False)
    for a, b, c in zip(straight.state_dict().values(), again.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b) and torch.allclose(a, c)
    assert [h.get("reward") for h in h1] == [h.get("reward") for h in h3] and len(h1) == 21
    assert (tmp_path / "a" / "checkpoint.pt").exists() and list((tmp_path / "a" / "runs").iterdir())


def test_a_checkpoint_resumes_only_under_its_own_setup(tmp_path: Path) -> None:
    """A longer --steps resumes; another learning rate, or another reward set-up given by the
    caller, is refused before a step is taken; a checkpoint from before set-ups were recorded
    resumes as it always did."""
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 2})
    setup = run_setup(short, {"reward": {"reconstruct": "lstsq"}})
    train_policy(ToyEnv(), PROFILE, short, tmp_path, progress=False, setup=setup)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["setup"] == setup and "steps" not in setup and setup["lr"] == CONFIG.lr
    longer = TrainConfig(**{**CONFIG.__dict__, "steps": 3})
    assert run_setup(longer, {"reward": {"reconstruct": "lstsq"}}) == setup
    for config, reward, what in ((TrainConfig(**{**CONFIG.__dict__, "steps": 3, "lr": 0.5}), "lstsq", "another lr"),
                                 (longer, "none", "another reward")):
        with pytest.raises(CheckpointError, match=what):
            train_policy(ToyEnv(), PROFILE, config, tmp_path, progress=False,
                         setup=run_setup(config, {"reward": {"reconstruct": reward}}))
    assert len(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["history"]) == 3  # untouched
    _, history = train_policy(ToyEnv(), PROFILE, longer, tmp_path, progress=False, setup=setup)
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    torch.save({k: v for k, v in torch.load(tmp_path / "checkpoint.pt", weights_only=False).items() if k != "setup"},
               tmp_path / "checkpoint.pt")  # as written before session 33
    _, history = train_policy(ToyEnv(), PROFILE, TrainConfig(**{**CONFIG.__dict__, "steps": 4, "lr": 0.5}), tmp_path,
                              progress=False)
    assert [h["step"] for h in history] == [0, 1, 2, 3, 4]


class RandomDrawingEnv(ToyEnv):
    """ToyEnv that also draws from the global RNG while scoring, as a rank scoring its own share
    of a group (or a stochastic reward task) would."""

    def score(self, plans: list[list[float]]) -> PlanOutcome:
        torch.rand(len(plans) * 7)
        return super().score(plans)


def test_sampled_plans_depend_on_the_seed_alone(tmp_path: Path) -> None:
    """What the environment or the caller draws from the global RNG changes no sampled plan, and
    training hands the caller's global RNG back untouched."""
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 3, "eval_every": 1})
    torch.manual_seed(123)
    caller_rng = torch.get_rng_state()
    _, quiet = train_policy(ToyEnv(), PROFILE, short, tmp_path / "a", progress=False)
    assert torch.equal(torch.get_rng_state(), caller_rng)
    torch.rand(5)  # a different global RNG state on entry
    _, drawing = train_policy(RandomDrawingEnv(), PROFILE, short, tmp_path / "b", progress=False)
    assert len(quiet) == 4 and quiet == drawing


def test_gate_is_open_until_the_band_exists_then_weighs_outliers(tmp_path: Path) -> None:
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 30, "gate": GateConfig(min_history=24, warmup=5)})
    _, history = train_policy(ToyEnv(), PROFILE, short, tmp_path, progress=False)
    gates = [h["gate"] for h in history if "gate" in h]  # per-step mean gate weight of the group
    assert gates[0] == 1.0  # 16 episodes seen < min_history: no band yet
    assert min(gates[10:]) < 1.0  # after warm-up, plans outside the phi band are down-weighted
    assert all(0.0 < g <= 1.0 for g in gates)


def test_clipped_epochs_and_entropy_bonus_change_the_update_and_still_learn(tmp_path: Path) -> None:
    base = TrainConfig(**{**CONFIG.__dict__, "steps": 40})
    multi = TrainConfig(**{**base.__dict__, "update_epochs": 3, "entropy_coef": 0.01})
    plain, _ = train_policy(ToyEnv(), PROFILE, base, tmp_path / "plain", progress=False)
    policy, history = train_policy(ToyEnv(), PROFILE, multi, tmp_path / "multi", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), policy.state_dict().values()))
    evals = [h["anchor_reward"] for h in history if "anchor_reward" in h]
    assert evals[-1] > evals[0] + 0.1
    assert all(torch.isfinite(torch.tensor([h["loss"], h["entropy"]])).all() for h in history if "loss" in h)


def test_flat_policy_trains_saves_and_queries(tmp_path: Path) -> None:
    """The flat ablation: one Beta per layer, no budget head; it learns on the toy environment,
    and a saved flat policy is queried as one."""
    from hipp_torchprune.hipp.policy import FlatPolicy
    from hipp_torchprune.hipp.policy_io import load_policy, query, save_policy

    flat = TrainConfig(**{**CONFIG.__dict__, "policy_kind": "flat"})
    policy, history = train_policy(ToyEnv(), PROFILE, flat, tmp_path / "run", progress=False)
    assert isinstance(policy, FlatPolicy) and not hasattr(policy, "budget_head")
    evals = [h["anchor_reward"] for h in history if "anchor_reward" in h]
    assert evals[-1] > evals[0] + 0.1
    save_policy(tmp_path / "saved", policy, PROFILE, 16, state=flat.state)
    loaded = load_policy(tmp_path / "saved")
    assert isinstance(loaded.policy, FlatPolicy) and loaded.meta["kind"] == "flat"
    (x,) = policy.mean_action(layer_states_for(flat, [1.0, 0.0, 0.0]))
    result = query(loaded, (1.0, 0.0, 0.0))
    assert result.plan == pytest.approx(tuple(0.8 * float(v) for v in x[0]))  # r_l = r_max * mean(x_l)
    assert result.plan[0] < result.plan[1]  # robustness spares layer 0, which ToyEnv's robustness needs


def layer_states_for(config: TrainConfig, preference: list[float]) -> torch.Tensor:
    """The toy profile's states for one preference under ``config``'s state features."""
    from hipp_torchprune.hipp.state import layer_states, static_features

    return layer_states(static_features(PROFILE, config.state), torch.tensor(preference),
                        (config.policy.rho_min, config.policy.rho_max))


def test_best_step_by_hand() -> None:
    from hipp_torchprune.hipp.trainer import best_step

    log = [{"step": 0, "anchor_reward": 0.1}, {"step": 1}, {"step": 5, "anchor_reward": 0.4},
           {"step": 10, "anchor_reward": 0.4}, {"step": 15, "anchor_reward": 0.3}]
    assert best_step(log) == 5 and best_step([{"step": 3}]) == 0  # ties go to the earlier step


def test_deployed_policy_is_the_best_evaluated_one(tmp_path: Path) -> None:
    """``deploy="best"`` returns the weights of the evaluation with the highest anchor reward (the
    paper's ``best_agent``), also after a resume; ``"last"`` the final weights."""
    from hipp_torchprune.hipp.state import static_features
    from hipp_torchprune.hipp.trainer import anchor_reward, anchor_scales, best_step

    short = TrainConfig(**{**CONFIG.__dict__, "steps": 24, "eval_every": 3, "lr": 5e-2})
    best, history = train_policy(ToyEnv(), PROFILE, short, tmp_path / "best", progress=False)
    last, _ = train_policy(ToyEnv(), PROFILE, TrainConfig(**{**short.__dict__, "deploy": "last"}), tmp_path / "last",
                           progress=False)
    static, sizes = static_features(PROFILE, short.state), [1.0] * 4
    dense, scales = anchor_scales(ToyEnv(), 4, 0.4)
    assert scales.tolist() == pytest.approx([1.2, 1.2, 1.0])  # ToyEnv loses 3 * 0.4 of each return at rho_max
    assert dense.tolist() == pytest.approx([0.0, 0.0, 0.0])
    evals = {h["step"]: h["anchor_reward"] for h in history if "anchor_reward" in h}
    assert anchor_reward(best, ToyEnv(), static, sizes, scales, dense) == max(evals.values()) == evals[best_step(history)]
    assert anchor_reward(last, ToyEnv(), static, sizes, scales, dense) == evals[24]
    half = TrainConfig(**{**short.__dict__, "steps": 12})
    train_policy(ToyEnv(), PROFILE, half, tmp_path / "resumed", progress=False)
    resumed, _ = train_policy(ToyEnv(), PROFILE, short, tmp_path / "resumed", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), resumed.state_dict().values()))


def test_budget_read_from_compression_alone_is_shared_by_one_w_comp_and_still_steers(tmp_path: Path) -> None:
    """``budget_input="compression"``: the budget head sees only w_comp and the interval, so queries
    at one w_comp get one budget whatever the robustness/utility split, which still steers the
    allocation; the mode survives saving. (Every toy preference wants the largest budget: layers 1
    and 2 cost nothing, so how w_comp moves it is checked by hand in ``test_math``.)"""
    from hipp_torchprune.hipp.policy_io import load_policy, query, save_policy

    cfg = TrainConfig(**{**CONFIG.__dict__, "policy": PolicyConfig(hidden=32, rho_min=0.2, rho_max=0.4,
                                                                   budget_input="compression")})
    policy, history = train_policy(ToyEnv(), PROFILE, cfg, tmp_path / "run", progress=False)
    evals = [h["anchor_reward"] for h in history if "anchor_reward" in h]
    assert evals[-1] > evals[0] + 0.1
    save_policy(tmp_path / "saved", policy, PROFILE, 16, state=cfg.state)
    loaded = load_policy(tmp_path / "saved")
    assert loaded.policy.config.budget_input == "compression"
    rob, util = (policy.mean_action(layer_states_for(cfg, w)) for w in ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1]))
    assert torch.equal(rob[0], util[0])  # one w_comp, one budget
    # each split still spares the layer its objective needs (as the paper's budget head does, above)
    assert query(loaded, (0.8, 0.1, 0.1)).plan[0] < 0.05 and query(loaded, (0.1, 0.8, 0.1)).plan[3] < 0.05
    saved_rob = loaded.policy.mean_action(layer_states_for(cfg, [0.8, 0.1, 0.1]))
    assert torch.equal(saved_rob[0], rob[0]) and torch.allclose(saved_rob[1], rob[1])  # the saved policy is it


def test_plan_advantages_are_relative_within_each_preference_group() -> None:
    """Advantages are centred per preference group, and a group ranks its plans by that group's
    preference: robustness first for (1, 0, 0), utility first for (0, 1, 0)."""
    from hipp_torchprune.hipp.normalization import RunningNorm
    from hipp_torchprune.hipp.trainer import plan_advantages

    returns = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] * 2)  # (P*G, 3), P = G = 2
    prefs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # (P, 3)
    adv = plan_advantages(returns, prefs, RunningNorm(3)).view(2, 2)  # (P, G)
    assert torch.allclose(adv.sum(-1), torch.zeros(2), atol=1e-5)
    assert adv[0, 0] > adv[0, 1] and adv[1, 1] > adv[1, 0]
