"""Recovery loss terms as small pure tensor functions (METHOD_NOTES §8).

Every term reads the next-token distribution at the answer position (the last prompt position,
prompts left-padded), exactly where :mod:`hipp_torchprune.evaluation` reads it:

* :func:`next_token_nll`: ``-log p(gold answer token)`` over the whole vocabulary;
* :func:`class_balanced_mean`: the mean of a per-example loss with every class (POPE "yes" /
  "no") weighted equally, whatever the batch's class mix;
* :func:`margin_hinge`: ``relu(margin - (log p(gold) - log p(other)))``;
* :func:`yes_rate_penalty`: ``(mean p(Yes) - r)^2`` with ``p(Yes) = sigmoid(log p(yes) - log p(no))``,
  the two-way probability the POPE decision rule thresholds at 0.5, and ``r`` the batch's gold
  yes-rate (a batch of 3 "yes" and 1 "no" rows should say "yes" 75 % of the time, not 50 %);
* :func:`answer_nll`: the token loss with every row counted once: ScienceQA rows plainly, POPE
  rows class-balanced within their share of the batch;
* :func:`pope_fraction`: the POPE share of a mixed batch, biased by the robustness weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["answer_nll", "class_balanced_mean", "margin_hinge", "next_token_nll", "option_logprobs",
           "pope_fraction", "yes_rate_penalty"]


def option_logprobs(logprobs: torch.Tensor, candidates: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Per example and option, ``log sum_{t in variants} p(t)``; ``(B, K_max)``, ``-inf`` padding.

    ``logprobs`` is ``(B, V)`` log-softmax at the answer position; ``candidates[b][k]`` lists the
    token ids of option ``k``'s variants (e.g. ``[[Yes, yes], [No, no]]``).
    """
    k_max = max(len(c) for c in candidates)
    rows = []
    for b, options in enumerate(candidates):
        vals = [torch.logsumexp(logprobs[b, list(ids)], dim=0) for ids in options]
        vals += [logprobs.new_tensor(float("-inf"))] * (k_max - len(options))
        rows.append(torch.stack(vals))
    return torch.stack(rows)


def next_token_nll(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example ``-logprobs[b, targets[b]]`` (``(B,)``)."""
    return -logprobs.gather(1, targets.view(-1, 1)).squeeze(1)


def class_balanced_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_c mean_{i: labels_i = c} values_i`` over the classes present; 0 for an empty batch.

    Example: values ``[1, 2, 3]``, labels ``[0, 0, 1]`` -> ``(1.5 + 3) / 2 = 2.25``.
    """
    if values.numel() == 0:
        return values.new_zeros(())
    means = [values[labels == c].mean() for c in torch.unique(labels)]
    return torch.stack(means).mean()


def margin_hinge(option_lp: torch.Tensor, gold: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean ``relu(margin - (lp[gold] - logsumexp(lp[others])))`` over examples.

    ``option_lp`` is ``(B, K)`` (``-inf`` padding allowed); ``gold`` is ``(B,)`` option indices.
    """
    if option_lp.numel() == 0:
        return option_lp.new_zeros(())
    gold_lp = option_lp.gather(1, gold.view(-1, 1)).squeeze(1)
    others = option_lp.scatter(1, gold.view(-1, 1), float("-inf"))
    gap = gold_lp - torch.logsumexp(others, dim=1)
    return torch.relu(margin - gap).mean()


def yes_rate_penalty(yes_lp: torch.Tensor, no_lp: torch.Tensor, target: float | torch.Tensor = 0.5) -> torch.Tensor:
    """``(mean_i sigmoid(yes_lp_i - no_lp_i) - target)^2``; 0 for an empty batch.

    ``target`` is the yes-rate the rows should have: their gold yes-rate in training.
    Example: margins ``[0, 0]`` -> 0; margins ``[+inf, +inf]`` -> 0.25 at target 0.5 and 0 at
    target 1; ``[+inf, -inf]`` -> 0 at target 0.5.
    """
    if yes_lp.numel() == 0:
        return yes_lp.new_zeros(())
    return (torch.sigmoid(yes_lp - no_lp).mean() - target) ** 2


def answer_nll(nll: torch.Tensor, is_pope: torch.Tensor, gold: torch.Tensor, w_pope: float = 1.0) -> torch.Tensor:
    """``(sum_{mc} nll_i + w_pope * n_pope * balanced_pope) / (n_mc + n_pope)``; 0 for an empty batch.

    Every row counts once: ScienceQA rows at their own loss, the POPE rows as ``n_pope`` times
    their class-balanced mean (:func:`class_balanced_mean` over ``gold``), so a batch with more
    "no" than "yes" rows does not teach "no". ``w_pope`` scales the POPE part.
    Example: nll ``[1, 2, 4]``, POPE ``[F, T, T]``, gold ``[0, 0, 1]`` ->
    ``(1 + 2 * (2 + 4) / 2) / 3 = 7 / 3``.
    """
    if nll.numel() == 0:
        return nll.new_zeros(())
    n_pope = int(is_pope.sum())
    pope = class_balanced_mean(nll[is_pope], gold[is_pope]) * (w_pope * n_pope)
    return (nll[~is_pope].sum() + pope) / nll.numel()


def pope_fraction(base: float, w_rob: float | None = None, cap: float = 0.9) -> float:
    """POPE share of a mixed batch: ``base`` or, with a preference, ``base + (cap - base) * w_rob``.

    ``w_rob = 0`` keeps ``base``; ``w_rob = 1`` gives ``cap`` (ScienceQA never vanishes from the mix).
    Example: ``pope_fraction(0.5, 0.5) = 0.5 + 0.4 * 0.5 = 0.7``.
    """
    if w_rob is None:
        return base
    return base + (max(cap, base) - base) * min(max(w_rob, 0.0), 1.0)
