"""The hierarchical preference-conditioned policy (eqs. 7-8).

A shared backbone reads every layer's state and is conditioned on the preference (FiLM) and on
a pooled summary of all layers. Two heads sit on it:

- the budget head gives a Beta distribution over ``u`` in (0, 1); ``rho`` is
  ``rho_min + (rho_max - rho_min) * u``. It reads the pooled backbone (the paper's), or with
  ``PolicyConfig.budget_input = "compression"`` only ``w_comp`` and the budget interval, so that
  ``w_rob`` and ``w_util`` steer where the rows go at a sparsity ``w_comp`` alone sets;
- the allocation head gives per-layer logits; ``alpha ~ Dirichlet(kappa * L * softmax(tau * logits))``
  (a larger ``tau`` sharpens the allocation).

``log pi(a) = log Beta(u) + log Dirichlet(alpha)`` is exact.

:class:`FlatPolicy` is the "flat policy" ablation: the same backbone, one Beta per layer over
``r_l / r_max`` and no budget head, so the budget is whatever the layers' ratios add up to.
Both expose the same small interface to the trainer: ``sample`` -> ``(action, log_prob)``,
``log_prob_parts(states, *action)``, ``entropy_parts``, ``mean_action`` and ``plans``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributions import Beta, Dirichlet

from hipp_torchprune.config import ConfigError
from hipp_torchprune.hipp.planmap import plan_ratios

PolicyKind = Literal["hierarchical", "flat"]
BudgetInput = Literal["backbone", "compression"]


@dataclass(frozen=True)
class PolicyConfig:
    """Shape and sampling options of the policy."""

    #: Width of the backbone.
    hidden: int = 64
    #: Backbone blocks (each: per-layer MLP + pooled context + preference FiLM).
    blocks: int = 2
    #: Allocation temperature; larger is sharper.
    tau: float = 1.0
    #: Dirichlet concentration per layer (``kappa``); larger means less exploration noise.
    concentration: float = 30.0
    #: Lower end of the budget interval (target MLP sparsity).
    rho_min: float = 0.2
    #: Upper end of the budget interval.
    rho_max: float = 0.4
    #: Per-layer cap on the removal ratio.
    r_max: float = 0.8
    #: What the budget head reads: the pooled backbone, i.e. the layers' state and every
    #: preference weight (``"backbone"``, the paper's), or only ``w_comp`` and the budget interval
    #: (``"compression"``): then plans at one ``w_comp`` share a budget distribution whatever the
    #: robustness/utility split, and that split steers only the allocation. With the paper's
    #: reward, a utility-heavy query on a model whose utility barely drops with sparsity buys
    #: compression with it (``docs/method.md``).
    budget_input: BudgetInput = "backbone"


class _Block(nn.Module):
    """Per-layer MLP, plus the mean over layers, modulated by the preference (FiLM)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.local = nn.Linear(hidden, hidden)
        self.context = nn.Linear(hidden, hidden)
        self.film = nn.Linear(3, 2 * hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:  # h (P, L, H), pref (P, 3)
        scale, shift = self.film(pref).unsqueeze(1).chunk(2, dim=-1)  # (P, 1, H) each
        update = self.local(h) + self.context(h.mean(1, keepdim=True))  # (P, L, H)
        return self.norm(h + torch.tanh(update * (1 + scale) + shift))


class _Backbone(nn.Module):
    """Per-layer embedding and FiLM-conditioned blocks shared by both policies (its parameters
    are the subclass's own ``embed`` and ``blocks``, the names saved policies use)."""

    def __init__(self, n_features: int, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(n_features, config.hidden)
        self.blocks = nn.ModuleList(_Block(config.hidden) for _ in range(config.blocks))

    @property
    def n_features(self) -> int:
        """Per-layer state width the policy reads."""
        return self.embed.in_features

    def encode(self, states: torch.Tensor) -> torch.Tensor:  # states (P, L, F) -> (P, L, H)
        """The backbone's per-layer features, conditioned on the preference (the last 3 columns)."""
        pref = states[:, 0, -3:]  # (P, 3)
        h = torch.relu(self.embed(states))  # (P, L, H)
        for block in self.blocks:
            h = block(h, pref)
        return h


class HippPolicy(_Backbone):
    """``pi(u, alpha | states, w)``; ``states`` are ``(P, L, F)`` from
    :func:`~hipp_torchprune.hipp.state.layer_states` (the preference is their last 3 columns)."""

    kind: PolicyKind = "hierarchical"

    def __init__(self, n_features: int, config: PolicyConfig = PolicyConfig()) -> None:
        super().__init__(n_features, config)
        self.alloc_head = nn.Linear(config.hidden, 1)
        self.budget_head: nn.Module = nn.Linear(config.hidden, 2) if config.budget_input == "backbone" else \
            nn.Sequential(nn.Linear(3, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 2))
        nn.init.zeros_(self.alloc_head.weight)  # start from the uniform allocation
        nn.init.zeros_(self.alloc_head.bias)

    def distributions(self, states: torch.Tensor) -> tuple[Beta, Dirichlet]:
        """The budget and allocation distributions for a batch of states."""
        h = self.encode(states)  # (P, L, H)
        logits = self.alloc_head(h).squeeze(-1)  # (P, L)
        n_layers = logits.shape[-1]
        conc = self.config.concentration * n_layers * torch.softmax(self.config.tau * logits, dim=-1)  # (P, L)
        ab = nn.functional.softplus(self.budget_head(self._budget_input(states, h))) + 1.0  # (P, 2)
        return Beta(ab[:, 0], ab[:, 1]), Dirichlet(conc.clamp_min(1e-3))

    def _budget_input(self, states: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The budget head's input: the pooled backbone ``(P, H)``, or (budget lo, hi, ``w_comp``) ``(P, 3)``
        (``states``' columns -5, -4 and -1, :func:`~hipp_torchprune.hipp.state.layer_states`)."""
        if self.config.budget_input == "backbone":
            return h.mean(1)
        return states[:, 0, [-5, -4, -1]]

    def sample(self, states: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Sample ``((u (P,), alpha (P, L)), log_prob (P,))``."""
        beta, dirichlet = self.distributions(states)
        u = beta.sample().clamp(1e-5, 1 - 1e-5)
        alpha = _renormalize(dirichlet.sample())
        return (u, alpha), beta.log_prob(u) + dirichlet.log_prob(alpha)

    def log_prob(self, states: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Exact ``log pi(u, alpha)`` ``(P,)`` under the current parameters."""
        return sum(self.log_prob_parts(states, u, alpha))

    def log_prob_parts(self, states: torch.Tensor, u: torch.Tensor,
                       alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log Beta(u), log Dirichlet(alpha))``, each ``(P,)``: the budget and allocation heads' terms."""
        beta, dirichlet = self.distributions(states)
        return beta.log_prob(u), dirichlet.log_prob(alpha)

    def entropy(self, states: torch.Tensor) -> torch.Tensor:
        """Entropy of the joint action distribution ``(P,)``."""
        return sum(self.entropy_parts(states))

    def entropy_parts(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entropies of the budget and allocation distributions, each ``(P,)``."""
        beta, dirichlet = self.distributions(states)
        return beta.entropy(), dirichlet.entropy()

    @torch.no_grad()
    def mean_action(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic query: Beta mean and Dirichlet mean."""
        beta, dirichlet = self.distributions(states)
        return beta.mean, dirichlet.mean

    def plans(self, action: Sequence[torch.Tensor], sizes: Sequence[float]) -> list[tuple[float, ...]]:
        """Per-layer ratios of each action in the batch (the plan map, eq. 8)."""
        u, alpha = action
        cfg = self.config
        return [plan_ratios(float(u[i]), alpha[i].tolist(), sizes, cfg.rho_min, cfg.rho_max, cfg.r_max)
                for i in range(len(u))]


class FlatPolicy(_Backbone):
    """The "flat policy" ablation: ``r_l = r_max * x_l`` with ``x_l ~ Beta(a_l, b_l)`` per layer,
    on the same backbone, and no budget head."""

    kind: PolicyKind = "flat"

    def __init__(self, n_features: int, config: PolicyConfig = PolicyConfig()) -> None:
        super().__init__(n_features, config)
        self.head = nn.Linear(config.hidden, 2)

    def distribution(self, states: torch.Tensor) -> Beta:
        """Independent Betas, batch shape ``(P, L)``."""
        ab = nn.functional.softplus(self.head(self.encode(states))) + 1.0  # (P, L, 2)
        return Beta(ab[..., 0], ab[..., 1])

    def sample(self, states: torch.Tensor) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        """Sample ``((x (P, L),), log_prob (P,))``."""
        beta = self.distribution(states)
        x = beta.sample().clamp(1e-5, 1 - 1e-5)
        return (x,), beta.log_prob(x).sum(-1)

    def log_prob_parts(self, states: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor]:
        """``(sum_l log Beta(x_l),)`` ``(P,)``: one head, one term."""
        return (self.distribution(states).log_prob(x).sum(-1),)

    def entropy_parts(self, states: torch.Tensor) -> tuple[torch.Tensor]:
        """``(sum_l H(Beta_l),)`` ``(P,)``."""
        return (self.distribution(states).entropy().sum(-1),)

    @torch.no_grad()
    def mean_action(self, states: torch.Tensor) -> tuple[torch.Tensor]:
        """The deterministic query: each layer's Beta mean."""
        return (self.distribution(states).mean,)

    def plans(self, action: Sequence[torch.Tensor], sizes: Sequence[float]) -> list[tuple[float, ...]]:
        """``r_max * x`` per layer."""
        return [tuple(float(self.config.r_max * v) for v in row) for row in action[0]]


Policy = HippPolicy | FlatPolicy


def make_policy(kind: PolicyKind, n_features: int, config: PolicyConfig) -> Policy:
    """A fresh policy of ``kind`` (``"hierarchical"``: :class:`HippPolicy`); a flat policy has no
    budget head, so it refuses a ``budget_input`` other than the default (``ConfigError``)."""
    if kind == "flat" and config.budget_input != "backbone":
        raise ConfigError(f"budget_input {config.budget_input!r}: the flat policy has no budget head")
    return FlatPolicy(n_features, config) if kind == "flat" else HippPolicy(n_features, config)


def _renormalize(alpha: torch.Tensor) -> torch.Tensor:
    """Keep Dirichlet samples strictly inside the simplex (float32 can round tiny parts to 0)."""
    alpha = alpha.clamp_min(1e-6)
    return alpha / alpha.sum(-1, keepdim=True)
