"""Plan-level GRPO training of the HiPP policy (eqs. 16-18), top to bottom.

Per step: sample ``P`` preferences, sample a group of ``G`` plans for each, score every plan
in mask mode (robustness, utility, compression, SynFlow ``phi``), normalize the objectives,
scalarize with the preference, take group-relative advantages, weight each episode with the
stability gate and update the policy. Resumable; the same seed gives the same policy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import trange

from hipp_torchprune.atomic import write_text_atomic
from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.gate import GateConfig, QuantileBand
from hipp_torchprune.hipp.grpo import balanced_gradients, gated_policy_loss, group_advantages, scalarize
from hipp_torchprune.hipp.normalization import RunningNorm, cap_at_dense, reference_scales
from hipp_torchprune.hipp.policy import Policy, PolicyConfig, PolicyKind, make_policy
from hipp_torchprune.hipp.preferences import ANCHORS, SamplerMode, sample_preferences
from hipp_torchprune.hipp.profile import ModelProfile
from hipp_torchprune.hipp.state import StateConfig, layer_states, static_features


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``hipp train``."""

    #: Policy updates.
    steps: int = 100
    #: Preferences sampled per update.
    prefs_per_step: int = 2
    #: Plans per preference (the GRPO group).
    group: int = 6
    #: Adam learning rate.
    lr: float = 3e-3
    #: Preference sampler: anchors + Dirichlet mixture, or one of them alone (ablation).
    sampler: SamplerMode = "mixed"
    #: Probability of an anchor in the mixed sampler.
    anchor_prob: float = 0.5
    #: Gradient passes over each group (> 1 enables PPO-style ratio clipping).
    update_epochs: int = 1
    #: Ratio clipping epsilon used when ``update_epochs > 1``.
    clip_eps: float = 0.2
    #: Entropy bonus coefficient.
    entropy_coef: float = 0.0
    #: Gradient-norm clip.
    max_grad_norm: float = 1.0
    #: ``"per_head"``: the budget and allocation heads' loss terms are clipped to
    #: ``max_grad_norm`` each, then summed (:func:`~hipp_torchprune.hipp.grpo.balanced_gradients`);
    #: ``"joint"``: one clip of the joint loss's gradient (the allocation head dominates it).
    head_balance: Literal["per_head", "joint"] = "per_head"
    #: Seed of preferences and plan sampling.
    seed: int = 0
    #: Steps between resumable checkpoints.
    checkpoint_every: int = 10
    #: Clip of normalized objectives.
    norm_clip: float = 3.0
    #: ``"none"``: raw returns (the paper's); ``"dense"``: robustness and utility returns are
    #: capped at the dense plan's before normalization
    #: (:func:`~hipp_torchprune.hipp.normalization.cap_at_dense`), so no plan is paid for beating
    #: the unpruned model on the reward rows (measured in ``docs/method.md``, "Dense cap");
    #: ``"robustness"``: the robustness return alone is capped, utility stays raw.
    objective_cap: Literal["none", "dense", "robustness"] = "none"
    #: Steps between evaluations of the deterministic plans at the anchor preferences.
    eval_every: int = 5
    #: Policy network and budget interval.
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: ``"hierarchical"``: budget head + allocation head (the paper's); ``"flat"``: one Beta per
    #: layer and no budget head (the ablation).
    policy_kind: PolicyKind = "hierarchical"
    #: Which policy is returned and saved: ``"best"``, the evaluation with the highest anchor
    #: reward (the paper's ``best_agent``; ties go to the earlier step), or ``"last"``.
    deploy: Literal["best", "last"] = "best"
    #: Stability gate.
    gate: GateConfig = field(default_factory=GateConfig)
    #: Optional per-layer state features.
    state: StateConfig = field(default_factory=StateConfig)


class BestAgent:
    """The policy weights of the evaluation with the highest anchor reward so far."""

    def __init__(self) -> None:
        self.reward, self.weights = float("-inf"), None

    def offer(self, policy: Policy, record: dict[str, float]) -> None:
        """Keep ``policy``'s weights if ``record`` has an anchor reward above the best so far."""
        if record.get("anchor_reward", float("-inf")) > self.reward:
            self.reward = record["anchor_reward"]
            self.weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Serializable state (for resumable checkpoints)."""
        return {"reward": self.reward, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.reward, self.weights = state["reward"], state["weights"]


def best_step(history: list[dict[str, float]]) -> int:
    """The step of the first evaluation with the highest anchor reward (what ``deploy="best"`` returns)."""
    evals = [(h["anchor_reward"], -h["step"]) for h in history if "anchor_reward" in h]
    return -max(evals)[1] if evals else 0


@dataclass
class _Learner:
    """Everything a run carries from step to step (and saves in ``checkpoint.pt``)."""

    policy: Policy
    optim: torch.optim.Optimizer
    norm: RunningNorm
    band: QuantileBand
    best: BestAgent
    gen: torch.Generator
    history: list[dict[str, float]]
    start: int = 0
    setup: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path, step: int) -> None:
        """Write a resumable checkpoint atomically."""
        tmp = path.with_suffix(".tmp")
        torch.save({"step": step, "policy": self.policy.state_dict(), "optim": self.optim.state_dict(),
                    "norm": self.norm.state_dict(), "band": self.band.state_dict(), "gen": self.gen.get_state(),
                    "history": self.history, "best": self.best.state_dict(), "setup": self.setup}, tmp)
        tmp.replace(path)


def run_setup(config: TrainConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed, one flat JSON dict: ``config``'s fields
    without ``steps`` (a run may be extended or finished early at a checkpoint), plus ``extra``
    (the caller's reward, model and world; keys that are not ``TrainConfig`` fields). The number of processes and the device are not in it: they train alike."""
    train = {k: v for k, v in config_dict(config).items() if k != "steps"}
    return json.loads(json.dumps({**train, **(extra or {})}, default=str))


def _check_setup(saved: dict[str, Any], setup: dict[str, Any], ckpt: Path) -> None:
    """Refuse a checkpoint written by another set-up (one saved before set-ups were recorded passes)."""
    theirs = saved.get("setup")
    if not theirs or theirs == setup:
        return
    differ = sorted(k for k in {*theirs, *setup} if theirs.get(k) != setup.get(k))
    raise CheckpointError(f"{ckpt} was written by a run with another {', '.join(differ)}; resume it with the same "
                          "settings, or start over with --no-resume or another --out")


def _start(config: TrainConfig, n_features: int, ckpt: Path, resume: bool,
           setup: dict[str, Any] | None = None) -> _Learner:
    """A fresh learner for ``config`` (seeded), or the one saved in ``ckpt`` when resuming
    (:class:`CheckpointError` when ``ckpt`` was written by another :func:`run_setup`)."""
    gen = torch.Generator().manual_seed(config.seed)
    with seeded_global_rng(config.seed):
        policy = make_policy(config.policy_kind, n_features, config.policy)
    learner = _Learner(policy, torch.optim.Adam(policy.parameters(), lr=config.lr),
                       RunningNorm(3, clip=config.norm_clip), QuantileBand(config.gate), BestAgent(), gen, [],
                       setup=setup if setup is not None else run_setup(config))
    if resume and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        _check_setup(saved, learner.setup, ckpt)
        learner.policy.load_state_dict(saved["policy"])
        learner.optim.load_state_dict(saved["optim"])
        learner.norm.load_state_dict(saved["norm"])
        learner.band.load_state_dict(saved["band"])
        learner.gen.set_state(saved["gen"])
        learner.start, learner.history = saved["step"], saved["history"]
        if "best" in saved:  # checkpoints written before best-agent deployment have none
            learner.best.load_state_dict(saved["best"])
    return learner


def _write_scalars(writer: Any, record: dict[str, float]) -> None:
    """One step's record to TensorBoard (``charts/`` and ``losses/``)."""
    step = int(record["step"])
    for key in ("reward", "rob_raw", "util_raw", "comp_raw", "sparsity", "phi", "gate", "anchor_reward"):
        if key in record:
            writer.add_scalar(f"charts/{key}", record[key], step)
    writer.add_scalar("losses/policy", record["loss"], step)
    writer.add_scalar("losses/entropy", record["entropy"], step)


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Run the block on the global CPU RNG seeded with ``seed``, and give the caller's global RNG
    back afterwards. ``torch.distributions`` sample from the global RNG only; this keeps the
    policy's initialization and samples a function of the training seed alone, whatever else
    (earlier code in the process, another rank's share of the scoring) drew from it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def anchor_scales(env: PlanEnvironment, n_layers: int, rho_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense plan's raw objectives ``(3,)`` and the units of the anchor reward ``(3,)``: how
    far each raw objective moves from the dense plan to the uniform plan at ``rho_max``
    (:func:`~hipp_torchprune.hipp.normalization.reference_scales`)."""
    raw = env.score([[0.0] * n_layers, [rho_max] * n_layers]).raw  # (2, 3)
    return raw[0], reference_scales(raw[0], raw[1])


CAPPED_COLUMNS = {"none": 0, "dense": 2, "robustness": 1}
"""How many leading returns (robustness, then utility) each ``TrainConfig.objective_cap`` caps."""


def shaped_returns(raw: torch.Tensor, dense: torch.Tensor, cap: str) -> torch.Tensor:
    """``raw (N, 3)`` as the rewards see them: the returns that ``objective_cap`` names capped at
    ``dense``, the rest raw."""
    columns = CAPPED_COLUMNS[cap]
    return cap_at_dense(raw, dense, columns) if columns else raw


def plan_advantages(returns: torch.Tensor, prefs: torch.Tensor, norm: RunningNorm) -> torch.Tensor:
    """Group-relative advantages ``(P*G,)`` of ``returns (P*G, 3)``, grouped by preference
    (``prefs (P, 3)``): ``norm`` is updated with the returns, normalizes them, and each group's
    scalarized rewards are centred and scaled within the group (eqs. 11-14)."""
    P = prefs.shape[0]
    norm.update(returns)
    normalized = norm.normalize(returns).view(P, -1, 3)  # (P, G, 3)
    rewards = torch.stack([scalarize(normalized[i], prefs[i]) for i in range(P)])  # (P, G)
    return group_advantages(rewards).flatten()  # (P*G,)


def anchor_reward(policy: Policy, env: PlanEnvironment, static: torch.Tensor, sizes: list[float],
                  scales: torch.Tensor, dense: torch.Tensor | None = None, cap: str = "dense") -> float:
    """Mean over the anchor preferences of ``w . raw / scales`` for the policy's deterministic
    plans: the training-progress signal that is comparable across steps, with each objective in
    the units of ``scales`` (:func:`anchor_scales`), so no reward's units dominate it. With
    ``dense`` the returns are first capped at the dense plan's, as the training rewards are."""
    cfg = policy.config
    prefs = torch.tensor(ANCHORS)  # (4, 3)
    plans = policy.plans(policy.mean_action(layer_states(static, prefs, (cfg.rho_min, cfg.rho_max))), sizes)
    raw = env.score(plans).raw  # (4, 3)
    if dense is not None:
        raw = shaped_returns(raw, dense, cap)
    return float((raw / scales * prefs).sum(-1).mean())


def head_losses(parts: tuple[torch.Tensor, ...], old_parts: tuple[torch.Tensor, ...],
                entropies: tuple[torch.Tensor, ...], advantages: torch.Tensor, gate: torch.Tensor,
                clip: float | None, config: TrainConfig) -> list[torch.Tensor]:
    """The gated GRPO loss (minus the entropy bonus) of each head, or one joint loss
    (``head_balance="joint"``, the paper's), for :func:`~hipp_torchprune.hipp.grpo.balanced_gradients`."""
    if config.head_balance == "joint":
        joint = gated_policy_loss(sum(parts), advantages, gate, sum(old_parts), clip)
        return [joint - config.entropy_coef * sum(entropies).mean()]
    return [gated_policy_loss(logp, advantages, gate, old, clip) - config.entropy_coef * ent.mean()
            for logp, old, ent in zip(parts, old_parts, entropies)]


def _update(policy: Policy, optim: torch.optim.Optimizer, states: torch.Tensor, action: tuple[torch.Tensor, ...],
            advantages: torch.Tensor, gate: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.update_epochs`` gated policy-gradient steps on one batch of plans, each head's loss
    clipped on its own (:func:`balanced_gradients`); returns the last loss and mean entropy."""
    clip = config.clip_eps if config.update_epochs > 1 else None
    with torch.no_grad():
        old_parts = policy.log_prob_parts(states, *action)  # heads x (P*G,)
    for _ in range(config.update_epochs):
        parts = policy.log_prob_parts(states, *action)  # heads x (P*G,)
        entropies = policy.entropy_parts(states)  # heads x (P*G,)
        losses = head_losses(parts, old_parts, entropies, advantages, gate, clip, config)
        params = list(policy.parameters())
        optim.zero_grad()
        for param, grad in zip(params, balanced_gradients(losses, params, config.max_grad_norm)):
            param.grad = grad
        optim.step()
    return sum(losses), sum(entropies).mean()  # type: ignore[return-value]


def _step_record(step: int, prefs: torch.Tensor, outcome: Any, gate: torch.Tensor, loss: torch.Tensor,
                 entropy: torch.Tensor) -> dict[str, float]:
    """One step's log line: the preference-weighted raw reward (prefs (P, 3), raw (P*G, 3)) and means."""
    raw = outcome.raw.view(prefs.shape[0], -1, 3)  # (P, G, 3)
    return {"step": step, "reward": float((prefs[:, None, :] * raw).sum(-1).mean()),
            "rob_raw": float(outcome.raw[:, 0].mean()), "util_raw": float(outcome.raw[:, 1].mean()),
            "comp_raw": float(outcome.raw[:, 2].mean()), "sparsity": float(outcome.realized.mean()),
            "phi": float(outcome.phi.mean()), "gate": float(gate.mean()), "loss": loss.item(), "entropy": entropy.item()}


def train_policy(env: PlanEnvironment, profile: ModelProfile, config: TrainConfig, out_dir: str | Path,
                 resume: bool = True, state: Any = None, progress: bool = True,
                 setup: dict[str, Any] | None = None) -> tuple[Policy, list[dict]]:
    """Train a policy on ``env``; returns it (the best evaluated one unless ``config.deploy="last"``)
    and the per-step log. Checkpoints go to ``out_dir``; one is resumed only when it was written
    with the same :func:`run_setup` (``setup``, default: ``config``'s alone)."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    static = static_features(profile, config.state)  # (L, F)
    pcfg = config.policy
    budget_range = (pcfg.rho_min, pcfg.rho_max)
    sizes = [w * p for w, p in zip(profile.widths, profile.row_params)]
    ckpt = out_dir / "checkpoint.pt"
    learner = _start(config, static.shape[1] + 5, ckpt, resume, setup)
    policy, optim, norm, band, best, gen, history = (learner.policy, learner.optim, learner.norm, learner.band,
                                                     learner.best, learner.gen, learner.history)
    is_main = state is None or state.is_main_process
    writer = SummaryWriter(str(out_dir / "runs")) if is_main else None
    P, G = config.prefs_per_step, config.group
    dense, scales = anchor_scales(env, len(sizes), pcfg.rho_max)  # (3,) each, deterministic: recomputed on resume
    progress_reward = partial(anchor_reward, policy, env, static, sizes, scales, dense, config.objective_cap)
    if learner.start == 0:  # every rank scores (plan scoring is collective across processes)
        history.append({"step": 0, "anchor_reward": progress_reward()})
        best.offer(policy, history[0])

    for step in trange(learner.start, config.steps, desc="hipp train", disable=not (progress and is_main)):
        # 1. preferences and a group of plans per preference
        prefs = sample_preferences(P, config.sampler, gen, config.anchor_prob)  # (P, 3)
        states = layer_states(static, prefs, budget_range).repeat_interleave(G, dim=0)  # (P*G, L, F+5)
        with torch.no_grad(), seeded_global_rng(int(torch.randint(0, 2**62, (), generator=gen))):
            action, _ = policy.sample(states)  # hierarchical: u (P*G,), alpha (P*G, L); flat: x (P*G, L)
        plans = policy.plans(action, sizes)

        # 2. score every plan: raw objectives (P*G, 3), stability phi (P*G,)
        outcome = env.score(plans)
        advantages = plan_advantages(shaped_returns(outcome.raw, dense, config.objective_cap), prefs, norm)  # (P*G,)
        gate = band.weights(outcome.phi.float(), outcome.realized)  # (P*G,)
        band.update(outcome.phi, outcome.realized)

        # 3. gated policy-gradient update(s), per head: budget (Beta) and allocation (Dirichlet)
        loss, entropy = _update(policy, optim, states, action, advantages, gate, config)

        # 4. log and checkpoint
        record = _step_record(step + 1, prefs, outcome, gate, loss, entropy)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            record["anchor_reward"] = progress_reward()
        history.append(record)
        best.offer(policy, record)
        if writer is not None:
            _write_scalars(writer, record)
        if is_main and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            learner.save(ckpt, step + 1)
    if writer is not None:
        writer.close()
        write_text_atomic(out_dir / "train_log.json", json.dumps(history))
    if config.deploy == "best" and best.weights is not None:
        policy.load_state_dict(best.weights)
    return policy.eval(), history


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-friendly form of a :class:`TrainConfig`."""
    return dataclasses.asdict(config)
