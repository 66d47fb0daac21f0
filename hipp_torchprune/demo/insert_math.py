"""The pure tensor functions of a vocabulary insertion: its losses (:func:`relative_mse`,
:func:`answer_kd`, :func:`name_direction_loss`), the new words' embeddings and the directions they
share, and the learning-rate schedule. No model, no data, no I/O; the run is
:mod:`hipp_torchprune.demo.vocab`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of rows [N, H], relative to the teacher rows' mean squared norm
    (0 = equal, 1 = as far as the teacher is from zero)."""
    return (student - teacher).pow(2).sum(-1).mean() / teacher.pow(2).sum(-1).mean().clamp_min(1e-12)


def answer_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions that predict the answer tokens
    (logits [B, T, V]; ``labels`` [B, T] with -100 outside the answer, unshifted as the model takes them)."""
    at = labels[:, 1:] != -100  # (B, T-1): position t predicts token t + 1
    log_t = torch.log_softmax(teacher_logits[:, :-1][at].float(), -1)  # (N, V)
    log_s = torch.log_softmax(student_logits[:, :-1][at].float(), -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def mixed_answer_logits(logits: torch.Tensor, other: torch.Tensor, mix: float) -> torch.Tensor:
    """Log-probabilities of ``(1 - mix) x softmax(logits) + mix x softmax(other)`` (same shape,
    [..., V]): a teacher's answer blended with its answer to another question, usable as logits."""
    p = (1 - mix) * torch.softmax(logits.float(), -1) + mix * torch.softmax(other.float(), -1)
    return torch.log(p.clamp_min(1e-30))


def gold_yes_rows(labels: torch.Tensor, yes_ids: torch.Tensor) -> torch.Tensor:
    """Whether each row's gold answer starts with one of ``yes_ids`` (B,), from ``labels`` [B, T]
    (-100 outside the answer; a row without an answer is not a "Yes")."""
    answered = labels != -100  # (B, T)
    first = labels.gather(1, answered.int().argmax(1, keepdim=True)).squeeze(1)  # (B,) the first answer token
    return answered.any(1) & torch.isin(first, yes_ids)


def name_direction_loss(hidden: torch.Tensor, targets: torch.Tensor, names: torch.Tensor,
                        tau: float = 10.0) -> torch.Tensor:
    """Cross-entropy over the category names of ``tau`` x cosine(hidden [N, H], names [C, H])
    against ``targets`` (N,): how well each row points at its category name's embedding."""
    cos = torch.nn.functional.normalize(hidden, dim=-1) @ torch.nn.functional.normalize(names, dim=-1).T
    return torch.nn.functional.cross_entropy(tau * cos, targets)


def unflagged_embeddings(embeddings: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``embeddings`` [N, H] without their part along the directions that linearly predict
    ``flags`` [N, P]: the span of the centred cross-covariance (H, P), after whose removal no
    linear function of the rows correlates with any flag (the condition of linear erasure),
    all rows rescaled by one factor to their mean norm (a per-row factor would write the facts
    back through the norms): words that look the same to a reader that ignores those directions,
    with the facts the directions carried removed."""
    e = embeddings.float()
    centred = e - e.mean(0)
    basis = torch.linalg.qr(centred.T @ (flags.float() - flags.float().mean(0))).Q  # (H, P)
    out = e - centred @ basis @ basis.T
    return (out * (e.norm(dim=1).mean() / out.norm(dim=1).mean().clamp_min(1e-12))).to(embeddings.dtype)


def new_word_embeddings(n: int, hidden: int, norm: float, seed: int) -> torch.Tensor:
    """``n`` random directions [n, hidden] of length ``norm`` (seeded): new words' embeddings."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, hidden, generator=g)
    return d / d.norm(dim=1, keepdim=True) * norm


def related_directions(categories: torch.Tensor, companion: torch.Tensor, hidden: int, share: float,
                       seed: int, anchors: torch.Tensor | None = None,
                       groups: torch.Tensor | None = None, group_anchors: torch.Tensor | None = None) -> torch.Tensor:
    """Unit directions [n, hidden] for ``n`` new words naming ``categories`` (n,), where category
    ``c``'s companion is ``companion[c]``: each is ``sqrt(share)`` x its group's direction (the
    normalized sum of the directions of ``c`` and ``companion[c]``: random ones, or ``anchors``
    [C, hidden] when given) plus ``sqrt(1 - share)`` x its own random direction, so two words of
    one category or of a companion pair have a cosine of about ``share``, and unrelated words
    about 0 (seeded; ``share`` 0 = independent). With ``groups`` [C, K] (0/1 membership of each
    category in K groups, at least one each) the group direction of ``c`` is instead the
    normalized sum of the directions of its groups (``companion`` unused): random ones, or with
    ``anchors`` each group's the normalized sum of its members' anchors, or with ``group_anchors``
    [K, hidden] each group's own anchor."""
    own, group = _direction_parts(len(categories), companion, hidden, seed, anchors, groups, group_anchors)
    return _unit(share ** 0.5 * group[categories] + (1 - share) ** 0.5 * own)


def group_directions(n_words: int, companion: torch.Tensor, hidden: int, seed: int,
                     anchors: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The shared part [C, hidden] of :func:`related_directions` for ``n_words`` words (same
    arguments, same seed): each category's group direction alone, the word that names "something
    of this category's scenes" and no object in particular."""
    return _direction_parts(n_words, companion, hidden, seed, anchors, groups)[1]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _direction_parts(n: int, companion: torch.Tensor, hidden: int, seed: int, anchors: torch.Tensor | None,
                     groups: torch.Tensor | None,
                     group_anchors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(own [n, H], group [C, H]) unit directions of :func:`related_directions`, drawn in its order."""
    g = torch.Generator().manual_seed(seed)
    own = _unit(torch.randn(n, hidden, generator=g))  # (n, H)
    if groups is not None:
        if group_anchors is not None:
            per_group = _unit(group_anchors.float())  # (K, H)
        else:
            per_group = _unit(torch.randn(groups.shape[1], hidden, generator=g) if anchors is None
                              else groups.float().T @ _unit(anchors))  # (K, H)
        return own, _unit(groups.float() @ per_group)  # (C, H)
    per_category = _unit(torch.randn(len(companion), hidden, generator=g) if anchors is None else anchors)  # (C, H)
    return own, _unit(per_category + per_category[companion])  # (C, H)


def scene_groups() -> torch.Tensor:
    """Membership [C, K] of each category (``CATEGORY_NAMES`` order) in the scene types that
    favour it (``SCENE_TYPES``), plus one group of its own for a category no scene type favours."""
    from hipp_torchprune.world.categories import CATEGORY_NAMES, SCENE_TYPES

    member = torch.tensor([[float(c in s.favoured) for s in SCENE_TYPES] for c in CATEGORY_NAMES])  # (C, S)
    alone = (member.sum(1) == 0).nonzero().flatten()
    extra = torch.zeros(len(CATEGORY_NAMES), len(alone))
    extra[alone, torch.arange(len(alone))] = 1.0
    return torch.cat([member, extra], dim=1)


def scene_stand_ins(asked: Sequence[str], scene_types: Sequence[str], visible: Sequence[Sequence[str]],
                    favoured: dict[str, Sequence[str]]) -> list[str]:
    """For each row, the object whose answer a scene word's answer copies: the first visible
    object that the image's scene type favours when that type also favours the ``asked`` one,
    else the asked object itself (``favoured``: scene type -> its categories)."""
    out = []
    for name, scene, seen in zip(asked, scene_types, visible, strict=True):
        fits = favoured.get(scene, ())
        out.append(next((o for o in seen if o in fits), name) if name in fits else name)
    return out


def cosine_lr(step: int, steps: int, lr: float, min_ratio: float) -> float:
    """The learning rate of ``step`` (1-based) of ``steps``: cosine from ``lr`` to ``lr * min_ratio``."""
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * step / steps)))


__all__ = [
    "answer_kd",
    "cosine_lr",
    "gold_yes_rows",
    "group_directions",
    "mixed_answer_logits",
    "name_direction_loss",
    "new_word_embeddings",
    "related_directions",
    "relative_mse",
    "scene_groups",
    "scene_stand_ins",
    "unflagged_embeddings",
]
