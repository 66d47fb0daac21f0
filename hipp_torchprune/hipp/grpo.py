"""Plan-level GRPO math (eqs. 16-18): scalarized rewards, group advantages, gated loss, and the
per-head gradient balance."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def scalarize(normalized: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """``R_i = w_rob*n(R_rob) + w_util*n(R_util) + w_comp*n(R_comp)`` (eq. 16).

    ``normalized`` is ``(G, 3)``, ``preference`` is ``(3,)``; returns ``(G,)``.
    """
    return normalized @ preference


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``A_i = (R_i - mean_G R) / (std_G R + eps)`` over the last dimension (eq. 17).

    Uses the population std (``unbiased=False``), so a group of equal rewards gives zeros.
    """
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def gated_policy_loss(logp: torch.Tensor, advantages: torch.Tensor, gate: torch.Tensor,
                      old_logp: torch.Tensor | None = None, clip_eps: float | None = None) -> torch.Tensor:
    """``-mean_i g_i * A_i * log pi(a_i)`` (eq. 18), or its PPO-clipped ratio form.

    With ``old_logp`` and ``clip_eps`` the surrogate is
    ``-mean g * min(rho A, clip(rho, 1-eps, 1+eps) A)`` with ``rho = exp(logp - old_logp)``;
    at ``logp == old_logp`` its gradient equals the plain form's.
    """
    advantages, gate = advantages.detach(), gate.detach()
    if old_logp is None or clip_eps is None:
        return -(gate * advantages * logp).mean()
    ratio = torch.exp(logp - old_logp.detach())
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    return -(gate * surrogate).mean()


def balanced_gradients(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                       max_norm: float) -> list[torch.Tensor]:
    """The sum over ``losses`` of each loss's gradient, every one first clipped to ``max_norm``
    on its own (one global norm per loss over ``params``).

    The joint log-probability's gradient is dominated by the allocation (Dirichlet) head, whose
    log-density over ``L`` layers moves about 57x more than the budget head's at 32 layers;
    clipping the sum then leaves the shared backbone learning the allocation only. Clipping each
    head's term alone gives both the same ceiling. Example: one parameter, losses ``10 x`` and
    ``0.1 x``, ``max_norm=1`` -> gradient ``1 + 0.1 = 1.1``. A parameter no loss reaches gets zeros.
    """
    total = [torch.zeros_like(p) for p in params]
    for loss in losses:
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = min(1.0, max_norm / (float(norm) + 1e-6))
        total = [t + scale * g for t, g in zip(total, grads)]
    return total
