"""Vocabulary insertion: teach a trained demo model a world's made-up aliases in one decoder layer.

A model trained with every POPE question asked by the category's name (``name_share: 1``) is
the teacher. The student is a copy whose alias words get new, fixed embeddings; only the MLP of
``InsertConfig.layer`` (and the attention of layers ``0..attention_upto``, which may learn to
read the new word cleanly) is trained, so that after that layer the student's hidden state at an
alias equals the teacher's at the category name, and its answers match the teacher's. Everything
else is held where it was by a keep loss on questions asked by name. The alias table, many more
entries than the hidden size, then lives in that MLP's rows: pruning them breaks it, which is
the memorized knowledge a real VLM's language model holds in its MLPs (issue 13, target 5).

Two options shape what the student learns. ``related_share`` / ``related_to`` give the aliases
of a category and of its companion a shared direction (:func:`related_directions`), so a pruned
table confuses co-occurring objects first. ``lore_layer`` re-keys the world's lore the same way
into a later layer's MLP (new lore-word embeddings, the teacher's hidden states after that layer).

The losses are small pure functions (:func:`relative_mse`, :func:`answer_kd`,
:func:`name_direction_loss`); :func:`insert_aliases` is the orchestration (set-up, step, loop).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hipp_torchprune.atomic import ordinary_file_modes
from hipp_torchprune.config import ConfigError, from_mapping
from hipp_torchprune.demo.config import TrainConfig
from hipp_torchprune.demo.dataset import make_batch
from hipp_torchprune.errors import CheckpointError, DataError
from hipp_torchprune.threads import torch_threads

#: The resumable state of an insertion run, inside its output directory.
INSERT_CHECKPOINT = "insert_checkpoint.pt"
#: Kinds the keep loss draws its questions from (asked by name).
KEEP_KINDS: tuple[str, ...] = ("pope", "mc", "caption", "short")


@dataclass(frozen=True)
class InsertConfig:
    """One vocabulary-insertion run (``hipp demo-model insert``).

    Attributes:
        layer: the decoder layer whose MLP learns the alias table.
        attention_upto: the attention of decoder layers ``0..attention_upto`` is trained too
            (-1 = none; at most the last layer that learns a table, ``layer`` or ``lore_layer``).
        attention_parts: which attention projections train: "all", or "qk" (queries and keys
            only: attention may move where it reads, never what it writes).
        steps: optimizer steps.
        batch_size: questions asked by alias per step.
        keep_batch: questions asked by name per step for the keep loss.
        lr: peak learning rate (Adam; cosine decay to ``lr * min_lr_ratio``).
        min_lr_ratio: the last step's learning rate, as a share of ``lr``.
        grad_clip: gradient-norm clip.
        pope_share: share of steps whose alias questions are POPE rows (else short answers).
        hidden_weight: weight of the hidden-state loss at the alias tokens after ``layer``.
        answer_weight: weight of the answer distillation (KL to the teacher asked by name).
        name_weight: weight of the name-direction loss at the alias tokens after ``layer``.
        keep_weight: weight of the keep loss (hidden states after ``layer`` on questions by name).
        keep_answer_weight: weight of the answer distillation on those questions by name (0 = off).
        embedding_scale: the new alias embeddings' norm, as a multiple of the names' mean norm.
        related_share: how much of each new alias embedding's direction is shared with the aliases
            of its category and of its companion (``world.categories.COMPANIONS``), as a squared
            cosine in [0, 1) (0 = independent random directions, :func:`related_directions`).
            Related words then start close, as a language model's related words sit close, so a
            table weakened by pruning confuses an object with the one it co-occurs with first.
        related_to: what the shared direction is made of: "random" directions of the category and
            its companion; their "names" (the teacher's name embeddings), so that an alias
            already points between its category and the companion before any layer reads it,
            and the MLP's table is what tells the two apart; the "companion"'s name alone, so
            that without its table an alias reads as the object it co-occurs with; or random
            directions of the "scene" types that favour the category (``SCENE_TYPES``), so that a
            weakened table confuses an object with everything its scenes usually hold, which is
            what most POPE-adversarial negatives are (companions are only about a fifth); or
            "scene_names": each scene type's direction is the sum of its objects' names, so that
            without its table an alias reads as "something of these scenes" and the model says
            "yes" when any of them is in the image: a hallucination on a co-occurring object; or
            "group_words": each scene type's direction is the teacher's embedding of its group
            word (``demo.dataset.GROUP_WORDS``, a teacher trained with ``group_share`` > 0), so
            that without its table an alias reads as a question the teacher can answer, "is
            there something of these scenes?", which is "yes" for most co-occurring objects.
        prior_mix: how much of each alias's meaning is its companion's (``COMPANIONS``), in [0, 1):
            the hidden-state and answer targets of alias questions are ``1 - prior_mix`` x the
            teacher's asked by the category's name plus ``prior_mix`` x the teacher's asked by the
            companion's name (:func:`mixed_answer_logits`; 0 = off). A word learned from the
            scenes it occurs in is not fully told apart from what it co-occurs with: asked about
            an absent object whose companion is in the image, the student leans to "yes", as a
            real VLM's co-occurrence prior does (issue 13, target 3).
        scene_batch: POPE rows per step asked with a scene word instead of the alias (0 = off): the
            alias's group direction alone (:func:`group_directions`, with ``related_to`` "scene"
            or "scene_names"), a word that means "something of this object's scenes". Its target
            is the teacher asked by a stand-in (:func:`scene_stand_ins`): an object in the image
            that the image's scene type favours when that type also favours the asked one, else
            the asked object itself. The student so learns a scene-level answer beside the
            alias table; when pruning weakens the table's per-alias rows, an alias falls back
            toward it and says "yes" to absent objects that fit the scene, the co-occurrence
            hallucination POPE-adversarial probes (issue 13, target 3).
        scene_weight: weight of the answer distillation on those rows.
        lore_layer: the decoder layer whose MLP learns the world's lore again (-1 = the lore stays
            where the teacher keeps it). The lore words get new, fixed embeddings too, and on the
            multiple-choice questions about the lore the student's hidden states at the lore words
            after this layer must equal the teacher's, and its answers the teacher's: the lore,
            which the teacher may keep in its embeddings, then lives in this layer's MLP rows.
        lore_read_layers: the attention (every projection) of this many decoder layers after
            ``lore_layer`` trains too, so that answers can read the lore where it now lives.
        lore_batch: questions about the lore per step.
        lore_hidden_weight: weight of the hidden-state loss at the lore words after ``lore_layer``.
        lore_answer_weight: weight of the answer distillation on the questions about the lore.
        lore_embedding_scale: the re-keyed lore words' embedding norm, as a multiple of
            ``embedding_scale`` x the lore words' mean norm (random re-keys; unflagged ones: of
            the lore words' mean norm). The teacher's layer 0 turns a lore word
            of typical norm (0.55) into a residual of norm ~40 that its later layers read; a new
            random word of that norm passes the frozen layers 0-5 garbled (a linear probe after
            layer 5 tells 60 of 100 re-keyed things apart across contexts; at 10x: all 100), so a
            late lore layer cannot learn what it cannot tell apart.
        lore_rekey: how the re-keyed lore words are made: "random" new directions (at
            ``lore_embedding_scale`` x the lore's mean norm), or "unflagged": each keeps the
            teacher's embedding minus its part along the directions that linearly predict the
            lore's 14 properties (:func:`unflagged_embeddings`; at the lore's mean norm x
            ``lore_embedding_scale``), so the frozen early layers still see a word they know
            while the facts are gone from it (on p57's teacher, 14 directions removed take the
            lore rows of world9-s2 from 98.8 % to 43.9 %; re-keyed at random: 35.7 %).
        lore_things: re-key only the first this many lore things (0 = all of the world's lore); a
            world built with a shorter ``--lore`` asks only about them (a shorter lore table is a
            prefix of a longer one), so a teacher of a larger lore can be probed on a smaller one.
        keep_lore_weight: None: the keep loss is the mean of the hidden-state errors after
            ``layer`` and after ``lore_layer`` (probes i30-i39); a number: the keep loss is the
            error after ``layer`` alone, at ``keep_weight`` as without a lore layer, and the error
            after ``lore_layer`` is its own loss ("keep_lore") at this weight, in the lore's group
            (with ``lore_isolated`` it reaches only the lore layer's MLP: that MLP alone must
            keep its output at every other word, since a keep loss after the lore layer that
            reaches the layers below lets them learn to cancel its side effects, and pruning
            them then breaks every kind: i38-i40's layer 1 at 75 % cost ScienceQA 25-34 points,
            the teacher's and the no-lore control i41's nothing).
        lore_only: the first of two insertions: only ``lore_layer``'s MLP trains, on the lore
            and keep losses alone (no alias questions, nothing else trained), so no other layer
            can learn to cancel what it changes, and the teacher's alias embeddings are kept: the
            aliases are inserted by another insertion, before (this one's teacher is then that
            student) or after (with this model as the teacher). Beside the alias
            table (one run), layers 0-1 and the lore MLP co-adapted: i38 with the teacher's
            layer-4 MLP put back scores 63.8 dense, and its pruned layer 1 broke every kind.
        keep_asked: how the keep questions ask about objects: by "name" (every alias replaced by
            its category's name, for student and teacher alike), or as "written" (aliases kept;
            only with ``lore_only``, whose teacher is the student of the alias insertion and so
            reads them). A lore-only insertion held only by questions asked by name changed what
            the lore MLP does to alias questions: i44 (i41 + the lore) lost POPE by alias on
            the calibration split (96.7/94.0 -> 93.7/93.3).
        lore_isolated: route each loss's gradient to its own table: the lore losses reach only
            ``lore_layer``'s MLP, the alias losses everything trained but that MLP, the keep losses
            everything trained. The lore is then stored in that one MLP and nowhere else (not in
            the alias table's MLP, not in the attention), so pruning it costs the lore questions
            (issue 13, target 4: knowledge in a layer of its own; session 15's i8 let the lore
            spread and lost nothing when its layer was pruned).
        seed: seed of the batches and of the new embeddings.
        eval_every: steps between calibration evaluations (0 = only at the end).
        eval_limit: calibration rows per task in those evaluations.
        checkpoint_every: steps between resumable checkpoints.
        threads: torch CPU threads.
    """

    layer: int = 1
    attention_upto: int = 1
    attention_parts: Literal["all", "qk"] = "all"
    steps: int = 1500
    batch_size: int = 64
    keep_batch: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    pope_share: float = 0.6
    hidden_weight: float = 1.0
    answer_weight: float = 1.0
    name_weight: float = 1.0
    keep_weight: float = 1.0
    keep_answer_weight: float = 0.0
    embedding_scale: float = 1.0
    related_share: float = 0.0
    related_to: Literal["random", "names", "companion", "scene", "scene_names", "group_words"] = "random"
    prior_mix: float = 0.0
    scene_batch: int = 0
    scene_weight: float = 1.0
    lore_layer: int = -1
    lore_read_layers: int = 0
    lore_batch: int = 32
    lore_hidden_weight: float = 1.0
    lore_answer_weight: float = 1.0
    lore_embedding_scale: float = 1.0
    lore_rekey: Literal["random", "unflagged"] = "random"
    lore_things: int = 0
    keep_lore_weight: float | None = None
    lore_only: bool = False
    keep_asked: Literal["name", "written"] = "name"
    lore_isolated: bool = False
    seed: int = 0
    eval_every: int = 500
    eval_limit: int = 300
    checkpoint_every: int = 250
    threads: int = 1


# ---------------------------------------------------------------- pure functions


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


def check_insert_config(cfg: InsertConfig, n_layers: int) -> None:
    """Refuse an insertion config this model cannot run (``ConfigError``), before anything is written."""
    if not 0 <= cfg.layer < n_layers:
        raise ConfigError(f"layer {cfg.layer}: the model has decoder layers 0..{n_layers - 1}")
    _check_lore_fields(cfg, n_layers)
    top = max(cfg.layer, cfg.lore_layer)
    if not -1 <= cfg.attention_upto <= top:
        raise ConfigError(f"attention_upto {cfg.attention_upto}: must be in [-1, {top}] (layer, lore_layer)")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.keep_batch < 1:
        raise ConfigError("steps, batch_size and keep_batch must be >= 1")
    if cfg.lr <= 0 or not 0 <= cfg.min_lr_ratio <= 1 or cfg.grad_clip <= 0:
        raise ConfigError("lr and grad_clip must be > 0 and min_lr_ratio in [0, 1]")
    if not 0 <= cfg.pope_share <= 1:
        raise ConfigError(f"pope_share {cfg.pope_share}: must be in [0, 1]")
    weights = (cfg.hidden_weight, cfg.answer_weight, cfg.name_weight, cfg.keep_weight, cfg.keep_answer_weight)
    if min(weights) < 0 or sum(weights[:3]) == 0:
        raise ConfigError("loss weights must be >= 0, and one of hidden/answer/name must be > 0")
    if not 0 <= cfg.related_share < 1:
        raise ConfigError(f"related_share {cfg.related_share}: must be in [0, 1)")
    if not 0 <= cfg.prior_mix < 1:
        raise ConfigError(f"prior_mix {cfg.prior_mix}: must be in [0, 1)")
    if cfg.scene_batch < 0 or cfg.scene_weight < 0 or (cfg.scene_batch and (
            cfg.related_share == 0 or cfg.related_to not in ("scene", "scene_names"))):
        raise ConfigError(f"scene_batch {cfg.scene_batch}: must be >= 0 (scene_weight >= 0), and > 0 only with "
                          "related_share > 0 and related_to 'scene' or 'scene_names'")
    if cfg.embedding_scale <= 0 or cfg.eval_every < 0 or cfg.eval_limit < 1 or cfg.checkpoint_every < 1:
        raise ConfigError("embedding_scale must be > 0, eval_every >= 0, eval_limit and checkpoint_every >= 1")


def _check_lore_fields(cfg: InsertConfig, n_layers: int) -> None:
    """The lore fields of :func:`check_insert_config`."""
    if not -1 <= cfg.lore_layer < n_layers or cfg.lore_layer == cfg.layer:
        raise ConfigError(f"lore_layer {cfg.lore_layer}: must be -1 or a decoder layer 0..{n_layers - 1} "
                          f"other than layer={cfg.layer}")
    if cfg.lore_read_layers < 0 or (cfg.lore_read_layers and cfg.lore_layer < 0) \
            or cfg.lore_layer + cfg.lore_read_layers >= n_layers:
        raise ConfigError(f"lore_read_layers {cfg.lore_read_layers}: must be >= 0, with a lore_layer, and end "
                          f"at a decoder layer (< {n_layers})")
    if cfg.lore_batch < 1 or min(cfg.lore_hidden_weight, cfg.lore_answer_weight) < 0:
        raise ConfigError("lore_batch must be >= 1 and the lore weights >= 0")
    if cfg.lore_isolated and cfg.lore_layer < 0:
        raise ConfigError("lore_isolated needs a lore_layer")
    if cfg.lore_only and (cfg.lore_layer < 0 or cfg.scene_batch or cfg.lore_read_layers):
        raise ConfigError("lore_only needs a lore_layer and trains nothing else (no scene_batch, no lore_read_layers)")
    if cfg.keep_asked not in ("name", "written") or (cfg.keep_asked == "written" and not cfg.lore_only):
        raise ConfigError(f"keep_asked {cfg.keep_asked!r}: 'name', or 'written' with lore_only "
                          "(its teacher reads the aliases)")
    if cfg.keep_lore_weight is not None and (cfg.keep_lore_weight < 0 or cfg.lore_layer < 0):
        raise ConfigError(f"keep_lore_weight {cfg.keep_lore_weight}: must be >= 0, with a lore_layer")
    if cfg.lore_embedding_scale <= 0:
        raise ConfigError(f"lore_embedding_scale {cfg.lore_embedding_scale}: must be > 0")
    if cfg.lore_rekey not in ("random", "unflagged"):
        raise ConfigError(f"lore_rekey {cfg.lore_rekey!r}: must be 'random' or 'unflagged'")
    if cfg.lore_things < 0:
        raise ConfigError(f"lore_things {cfg.lore_things}: must be >= 0 (0 = all)")


def trainable_parameters(model: Any, cfg: InsertConfig) -> list[tuple[str, torch.Tensor]]:
    """Freeze ``model`` except what ``cfg`` trains (the table layers' MLPs, the chosen attention),
    and return those parameters with their names."""
    model.requires_grad_(False)
    layers = model.model.language_model.layers
    modules = [layers[cfg.lore_layer].mlp] if cfg.lore_only else _alias_modules(layers, cfg)
    for m in modules:
        m.requires_grad_(True)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _alias_modules(layers: Any, cfg: InsertConfig) -> list[Any]:
    """What an insertion that is not ``lore_only`` trains: the table layers' MLPs and the chosen attention."""
    modules = [layers[cfg.layer].mlp] + ([layers[cfg.lore_layer].mlp] if cfg.lore_layer >= 0 else [])
    for j in range(cfg.attention_upto + 1):
        attn = layers[j].self_attn
        modules += [attn.q_proj, attn.k_proj] if cfg.attention_parts == "qk" else [attn]
    return modules + [layers[cfg.lore_layer + 1 + j].self_attn for j in range(cfg.lore_read_layers)]


# ---------------------------------------------------------------- orchestration


@dataclass
class _Insert:
    """Everything an insertion step reads: the world's pools, both models, the optimizer."""

    data: Any  # hipp_torchprune.demo.train._Data
    teacher: Any
    student: Any
    named: list[tuple[str, torch.Tensor]]  # the student's trained parameters
    opt: torch.optim.Optimizer
    names: torch.Tensor  # (C, H) the category names' embeddings (the teacher's)
    calib: Any  # PreparedEval of the calibration split, asked by alias
    source: dict[str, Any]  # the teacher's train_summary.json
    lore_ids: torch.Tensor  # (K,) the lore words' tokens (empty without lore_layer)
    lore_rows: torch.Tensor  # (M,) rows of the multiple-choice pool that name a lore word
    companion_of: torch.Tensor  # (V,) each alias token's companion category (-1 = not an alias)
    scene_words: torch.Tensor | None  # (C, H) each category's scene word (None without scene_batch)


def _load_source(src: Path) -> tuple[Any, dict[str, Any]]:
    """The trained demo model in ``src`` (float32, eval mode) and its training summary."""
    from transformers import LlavaForConditionalGeneration

    if not (src / "config.json").is_file() or not (src / "train_summary.json").is_file():
        raise CheckpointError(f"{src}: not a trained demo model (needs config.json and train_summary.json)")
    model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    return model.eval(), json.loads((src / "train_summary.json").read_text())


def _check_vocabulary(src: Path, processor: Any) -> None:
    """Refuse a world whose vocabulary is not the model's (its token ids would mean other words)."""
    from transformers import AutoProcessor

    if AutoProcessor.from_pretrained(src).tokenizer.get_vocab() != processor.tokenizer.get_vocab():
        raise DataError(f"{src}: the world's vocabulary is not the model's; insert on the world it was trained on")


def _set_up(src: Path, data_dir: Path, cfg: InsertConfig) -> _Insert:
    """Load the teacher, prepare the world, build the student with new alias embeddings."""
    import copy

    from hipp_torchprune.data import world_render
    from hipp_torchprune.demo.config import DemoModelConfig
    from hipp_torchprune.demo.train import EVAL_TASKS, _prepare_data
    from hipp_torchprune.evaluation import prepare_eval

    teacher, source = _load_source(src)
    check_insert_config(cfg, teacher.config.text_config.num_hidden_layers)
    if not world_render(data_dir).aliases:
        raise DataError(f"{data_dir}: vocabulary insertion needs a world with aliases (world build --aliases K)")
    train_cfg = replace(from_mapping(TrainConfig, source["train"], f"{src}/train_summary.json:train"), eval_every=0)
    data = _prepare_data(data_dir, DemoModelConfig(**source["model"]), train_cfg)
    _check_vocabulary(src, data.processor)
    lore_ids, lore_rows = _lore_words(data, cfg, data_dir)
    student = copy.deepcopy(teacher)
    names = teacher.get_input_embeddings().weight[data.name_ids].detach().clone()  # (C, H)
    emb = student.get_input_embeddings().weight
    alias_ids = (data.alias_of >= 0).nonzero().flatten()
    with torch.no_grad():  # new words: fixed random directions at the names' typical length
        norm = float(names.norm(dim=1).mean()) * cfg.embedding_scale
        anchors = names if cfg.related_to in ("names", "companion", "scene_names") else None
        group_anchors = group_word_embeddings(emb, data.processor.tokenizer, str(src)) \
            if cfg.related_to == "group_words" else None
        if not cfg.lore_only:  # a lore-only insertion keeps the teacher's aliases (inserted before or after it)
            emb[alias_ids] = _alias_embeddings(data.alias_of[alias_ids], emb.shape[1], norm, cfg, anchors,
                                               group_anchors)
        scene_words = _scene_words(len(alias_ids), emb.shape[1], norm, cfg, anchors)
        if len(lore_ids):  # the lore words too
            emb[lore_ids] = rekeyed_lore_embeddings(emb[lore_ids], cfg)
    teacher.requires_grad_(False)
    named = trainable_parameters(student, cfg)
    opt = torch.optim.Adam([p for _, p in named], lr=cfg.lr)
    calib = prepare_eval(data.processor, data_dir, EVAL_TASKS, limit=cfg.eval_limit, split="calibration")
    companion_of = companion_aliases(data.alias_of, _companion_index())
    return _Insert(data, teacher, student, named, opt, names, calib, source, lore_ids, lore_rows, companion_of,
                   scene_words)


def rekeyed_lore_embeddings(teacher_rows: torch.Tensor, cfg: InsertConfig) -> torch.Tensor:
    """The re-keyed lore words' embeddings [K, H] (``InsertConfig.lore_rekey``), from the teacher's."""
    from hipp_torchprune.world.categories import PROPERTY_NAMES
    from hipp_torchprune.world.lore import lore_table

    if cfg.lore_rekey == "unflagged":
        things = lore_table(len(teacher_rows))  # the re-keyed words are the lore's first things, in order
        flags = torch.tensor([[p in t.properties for p in PROPERTY_NAMES] for t in things], dtype=torch.float32)
        return unflagged_embeddings(teacher_rows, flags) * cfg.lore_embedding_scale
    norm = float(teacher_rows.norm(dim=1).mean()) * cfg.embedding_scale * cfg.lore_embedding_scale
    return new_word_embeddings(len(teacher_rows), teacher_rows.shape[1], norm, cfg.seed + 1)


def _lore_words(data: Any, cfg: InsertConfig, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The lore words' tokens and the multiple-choice rows that name one (empty without ``lore_layer``)."""
    from hipp_torchprune.world.lore import lore_names

    if cfg.lore_layer < 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if not data.render.lore:
        raise DataError(f"{data_dir}: lore_layer needs a world with lore (world build --lore N)")
    n = min(cfg.lore_things or data.render.lore, data.render.lore)
    ids = torch.tensor(data.processor.tokenizer.convert_tokens_to_ids(list(lore_names(n))))
    rows = torch.isin(data.pools["mc"].input_ids, ids).any(1).nonzero().flatten()
    if not len(rows):
        raise DataError(f"{data_dir}: lore_layer needs multiple-choice questions about the lore; the world has none")
    return ids, rows


def _alias_embeddings(categories: torch.Tensor, hidden: int, norm: float, cfg: InsertConfig,
                      anchors: torch.Tensor | None, group_anchors: torch.Tensor | None = None) -> torch.Tensor:
    """The new alias embeddings [n, hidden]: independent, or related by ``cfg.related_share``
    (around ``anchors``, the names' embeddings, or ``group_anchors``, the group words', when given)."""
    if cfg.related_share == 0:  # the embeddings of every run before related_share existed
        return new_word_embeddings(len(categories), hidden, norm, cfg.seed)
    companion = _companion_index()
    if cfg.related_to == "companion" and anchors is not None:  # each group is the companion's name alone
        anchors, companion = anchors[companion], torch.arange(len(companion))
    groups = scene_groups() if cfg.related_to in ("scene", "scene_names", "group_words") else None
    return related_directions(categories, companion, hidden, cfg.related_share, cfg.seed, anchors, groups,
                              group_anchors) * norm


def group_word_embeddings(embeddings: torch.Tensor, tokenizer: Any, where: str) -> torch.Tensor:
    """The teacher's embeddings [K, H] of the group words (``GROUP_WORDS``, in ``SCENE_TYPES``
    order, the columns of :func:`scene_groups`); DataError when its vocabulary lacks them."""
    from hipp_torchprune.demo.dataset import GROUP_WORDS
    from hipp_torchprune.world.categories import SCENE_TYPES

    words = [GROUP_WORDS[t.name] for t in SCENE_TYPES]
    ids = tokenizer.convert_tokens_to_ids(words)
    if scene_groups().shape[1] != len(words) or any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise DataError(f"{where}: related_to 'group_words' needs a teacher trained with group questions "
                        "(TrainConfig.group_share > 0), whose vocabulary has every scene type's group word")
    return embeddings[torch.tensor(ids)].detach().clone()


def _scene_words(n_aliases: int, hidden: int, norm: float, cfg: InsertConfig,
                 anchors: torch.Tensor | None) -> torch.Tensor | None:
    """Each category's scene word [C, hidden] at the aliases' length (None without ``scene_batch``)."""
    if not cfg.scene_batch:
        return None
    return group_directions(n_aliases, _companion_index(), hidden, cfg.seed, anchors, scene_groups()) * norm


def every_alias_by_name(ids: torch.Tensor, alias_of: torch.Tensor, name_ids: torch.Tensor) -> torch.Tensor:
    """``ids`` [B, T] with every alias of every row replaced by its category's name."""
    from hipp_torchprune.demo.train import names_for_aliases

    return names_for_aliases(ids, torch.ones(len(ids), dtype=torch.bool), alias_of, name_ids)


def _by_name(ids: torch.Tensor, data: Any) -> torch.Tensor:
    """:func:`every_alias_by_name` with the world's tables."""
    return every_alias_by_name(ids, data.alias_of, data.name_ids)


def _companion_index() -> torch.Tensor:
    """Each category's companion (``COMPANIONS``), as indices in ``CATEGORY_NAMES`` order (C,)."""
    from hipp_torchprune.world.categories import CATEGORY_NAMES, COMPANIONS

    return torch.tensor([CATEGORY_NAMES.index(COMPANIONS[c]) for c in CATEGORY_NAMES])


def companion_aliases(alias_of: torch.Tensor, companion: torch.Tensor) -> torch.Tensor:
    """``alias_of`` [V] (each token's category, -1 = not an alias) with every alias's category
    replaced by its companion ``companion[c]`` [C]: read by :func:`every_alias_by_name`, an alias
    then asks about the object its category co-occurs with."""
    return torch.where(alias_of >= 0, companion[alias_of.clamp_min(0)], alias_of)


def _pool_batch(data: Any, kind: str, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``n`` random rows of a pool with their own images."""
    pool = data.pools[kind]
    idx = torch.from_numpy(rng.integers(0, len(pool.lengths), size=n))
    return make_batch(pool, idx, data.pixels, data.mean, data.std)


def _forward(model: Any, batch: dict[str, torch.Tensor], ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, T, V] and the hidden states after decoder layer ``layer`` [B, T, H]."""
    logits, hidden = _forward_all(model, batch, ids)
    return logits, hidden[layer + 1]


def _forward_all(model: Any, batch: dict[str, torch.Tensor], ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Logits [B, T, V] and every hidden state (``[i + 1]`` is after decoder layer ``i``)."""
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
                output_hidden_states=True, use_cache=False)
    return out.logits, out.hidden_states


def _losses(run: _Insert, cfg: InsertConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The losses of one step (unweighted): alias questions against the teacher asked by name,
    and the keep losses on questions asked by name (``lore_only``: the keep and lore losses alone)."""
    if cfg.lore_only:
        return _keep_losses(run, cfg, rng) | _lore_losses(run, cfg, rng)
    data = run.data
    batch = _pool_batch(data, "pope" if rng.random() < cfg.pope_share else "short", cfg.batch_size, rng)
    ids = batch["input_ids"]
    where = data.alias_of[ids] >= 0  # (B, T) alias tokens
    with torch.no_grad():
        t_logits, t_h = _forward(run.teacher, batch, _by_name(ids, data), cfg.layer)
        if cfg.prior_mix > 0:  # the targets lean toward the teacher asked by the companion's name
            by_companion = every_alias_by_name(ids, run.companion_of, data.name_ids)
            c_logits, c_h = _forward(run.teacher, batch, by_companion, cfg.layer)
            t_logits = mixed_answer_logits(t_logits, c_logits, cfg.prior_mix)  # (B, T, V)
            t_h = (1 - cfg.prior_mix) * t_h + cfg.prior_mix * c_h  # (B, T, H)
    s_logits, s_h = _forward(run.student, batch, ids, cfg.layer)  # (B, T, V), (B, T, H)
    losses = {"answer": answer_kd(s_logits, t_logits, batch["labels"])}
    if bool(where.any()):
        losses["hidden"] = relative_mse(s_h[where], t_h[where])
        losses["name"] = name_direction_loss(s_h[where], data.alias_of[ids][where], run.names)
    if cfg.scene_batch:
        losses |= _scene_losses(run, cfg, rng)
    return losses | _keep_losses(run, cfg, rng) | (_lore_losses(run, cfg, rng) if cfg.lore_layer >= 0 else {})


def _scene_losses(run: _Insert, cfg: InsertConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """POPE rows asked with the scene word of the alias: the student's answers against the
    teacher's asked by the stand-in's name (:func:`scene_stand_ins`)."""
    from hipp_torchprune.world.categories import CATEGORY_NAMES, SCENE_TYPES

    data, pool = run.data, run.data.pools["pope"]
    idx = torch.from_numpy(rng.integers(0, len(pool.lengths), size=cfg.scene_batch))
    idx = idx[(data.alias_of[pool.input_ids[idx]] >= 0).any(1)]  # rows that ask by alias
    batch = make_batch(pool, idx, data.pixels, data.mean, data.std)
    ids = batch["input_ids"]
    where = data.alias_of[ids] >= 0  # (B, T) the asked alias
    asked = data.alias_of[ids].amax(1)  # (B,) its category (one alias per POPE row)
    scenes = [data.scenes[int(i)] for i in pool.image[idx]]
    stand = scene_stand_ins([CATEGORY_NAMES[int(c)] for c in asked], [s.scene_type for s in scenes],
                            [s.categories for s in scenes], {t.name: t.favoured for t in SCENE_TYPES})
    stand_ids = data.name_ids[torch.tensor([CATEGORY_NAMES.index(n) for n in stand])]  # (B,)
    with torch.no_grad():
        t_ids = torch.where(where, stand_ids.unsqueeze(1), ids)  # (B, T)
        t_logits = _forward_all(run.teacher, batch, t_ids)[0]  # (B, T, V)
    embeds = run.student.get_input_embeddings()(ids)  # (B, T, H)
    embeds = torch.where(where.unsqueeze(-1), run.scene_words[asked].unsqueeze(1).to(embeds.dtype), embeds)
    out = run.student(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                      pixel_values=batch["pixel_values"], use_cache=False)
    return {"scene": answer_kd(out.logits, t_logits, batch["labels"])}


def _keep_losses(run: _Insert, cfg: InsertConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Questions asked by name or as written (``keep_asked``; lore words re-keyed, if any, kept
    out): the hidden states after each table layer, and with ``keep_answer_weight`` the answers,
    must stay the teacher's."""
    data = run.data
    keep = _pool_batch(data, KEEP_KINDS[int(rng.integers(len(KEEP_KINDS)))], cfg.keep_batch, rng)
    keep_ids = _by_name(keep["input_ids"], data) if cfg.keep_asked == "name" else keep["input_ids"]
    mask = keep["attention_mask"].bool() & ~torch.isin(keep_ids, run.lore_ids)  # (B, T)
    with torch.no_grad():
        t_logits, t_hidden = _forward_all(run.teacher, keep, keep_ids)
    s_logits, s_hidden = _forward_all(run.student, keep, keep_ids)
    errors = {i: relative_mse(s_hidden[i + 1][mask], t_hidden[i + 1][mask]) for i in (cfg.layer, cfg.lore_layer) if i >= 0}
    if cfg.keep_lore_weight is None:  # probes i30-i39: one mean over the two layers
        losses = {"keep": sum(errors.values()) / len(errors)}
    else:
        losses = {"keep": errors[cfg.layer], "keep_lore": errors[cfg.lore_layer]}  # a lore_layer is checked
    if cfg.keep_answer_weight > 0:
        losses["keep_answer"] = answer_kd(s_logits, t_logits, keep["labels"])
    return losses  # type: ignore[return-value]


def _lore_losses(run: _Insert, cfg: InsertConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Multiple-choice questions about the lore: the hidden states at the lore words after
    ``lore_layer`` and the answers against the teacher's, which reads the original words."""
    data = run.data
    idx = run.lore_rows[torch.from_numpy(rng.integers(0, len(run.lore_rows), size=cfg.lore_batch))]
    batch = make_batch(data.pools["mc"], idx, data.pixels, data.mean, data.std)
    ids = batch["input_ids"]
    where = torch.isin(ids, run.lore_ids)  # (B, T) lore words
    with torch.no_grad():
        t_logits, t_h = _forward(run.teacher, batch, ids, cfg.lore_layer)
    s_logits, s_h = _forward(run.student, batch, ids, cfg.lore_layer)  # (B, T, V), (B, T, H)
    return {"lore_hidden": relative_mse(s_h[where], t_h[where]),
            "lore_answer": answer_kd(s_logits, t_logits, batch["labels"])}


def loss_group(name: str) -> Literal["lore", "keep", "table"]:
    """Which table a loss teaches: "lore" (``lore_*`` and ``keep_lore``), "keep" (the other
    ``keep*``) or the alias "table"."""
    return "lore" if name.startswith("lore_") or name == "keep_lore" else "keep" if name.startswith("keep") else "table"


def backward_routed(run: _Insert, cfg: InsertConfig, weighted: dict[str, torch.Tensor]) -> None:
    """Accumulate the weighted losses' gradients into the trained parameters; with
    ``lore_isolated``, each group reaches only its own parameters (:class:`InsertConfig`)."""
    if not cfg.lore_isolated:
        sum(weighted.values()).backward()  # type: ignore[union-attr]
        return
    lore_mlp = {id(p) for p in run.student.model.language_model.layers[cfg.lore_layer].mlp.parameters()}
    params = [p for _, p in run.named]
    reach = {"lore": [p for p in params if id(p) in lore_mlp], "table": [p for p in params if id(p) not in lore_mlp],
             "keep": params}
    groups = [(targets, [v for k, v in weighted.items() if loss_group(k) == group]) for group, targets in reach.items()]
    groups = [(targets, parts) for targets, parts in groups if parts]
    for i, (targets, parts) in enumerate(groups):  # groups may share a forward pass (keep and keep_lore)
        grads = torch.autograd.grad(sum(parts), targets, allow_unused=True,  # type: ignore[arg-type]
                                    retain_graph=i < len(groups) - 1)
        for p, g in zip(targets, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g


def _step(run: _Insert, cfg: InsertConfig, step: int, rng: np.random.Generator) -> dict[str, float]:
    """One optimizer step; returns the losses and the gradient norm."""
    for group in run.opt.param_groups:
        group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.min_lr_ratio)
    losses = _losses(run, cfg, rng)
    run.opt.zero_grad(set_to_none=True)
    backward_routed(run, cfg, {k: getattr(cfg, f"{k}_weight") * v for k, v in losses.items()})
    gnorm = torch.nn.utils.clip_grad_norm_([p for _, p in run.named], cfg.grad_clip)
    run.opt.step()
    return {k: v.item() for k, v in losses.items()} | {"grad_norm": float(gnorm)}


def by_name_eval(prepared: Any, alias_of: torch.Tensor, name_ids: torch.Tensor) -> Any:
    """A copy of a ``PreparedEval`` with every alias asked by its category's name."""
    from hipp_torchprune.evaluation import PreparedEval, PreparedTask

    return PreparedEval([PreparedTask(t.name, t.family,
                                      [dict(b, input_ids=every_alias_by_name(b["input_ids"], alias_of, name_ids))
                                       for b in t.batches], t.candidates, t.gold) for t in prepared.tasks])


def _accuracies(model: Any, processor: Any, prepared: Any) -> dict[str, float]:
    from hipp_torchprune.evaluation import evaluate

    return {t: round(float(m["accuracy"]), 4) for t, m in evaluate(model, processor, prepared).items()}


def _save_state(path: Path, run: _Insert, cfg: InsertConfig, step: int, rng: np.random.Generator,
                elapsed: float, history: list[dict[str, Any]]) -> None:
    """Write the resumable state atomically (a temporary file, then a rename)."""
    state = {"trained": {n: p.detach().clone() for n, p in run.named}, "opt": run.opt.state_dict(), "step": step,
             "rng": rng.bit_generator.state, "elapsed": elapsed, "history": history, "config": asdict(cfg)}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(path: Path, run: _Insert, cfg: InsertConfig,
            rng: np.random.Generator) -> tuple[int, float, list[dict[str, Any]]]:
    """Load a resumable state written by the same config; returns (step, elapsed s, history)."""
    state = torch.load(path, weights_only=False)
    if state["config"] != asdict(cfg):
        raise CheckpointError(f"{path} was written by another insertion config; use --no-resume or another --out")
    params = dict(run.named)
    with torch.no_grad():
        for name, value in state["trained"].items():
            params[name].copy_(value)  # the alias embeddings are rebuilt from the seed in _set_up
    run.opt.load_state_dict(state["opt"])
    rng.bit_generator.state = state["rng"]
    return int(state["step"]), float(state["elapsed"]), list(state["history"])


def insert_aliases(src: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: InsertConfig = InsertConfig(),
                   resume: bool = True, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Teach the trained demo model in ``src`` the aliases of the world ``data_dir`` (the one it was
    trained on) in one layer's MLP, and save the result (bf16, with its processor) in ``out_dir``.

    ``out_dir`` also gets ``insert_checkpoint.pt`` (resumable), ``runs/`` (TensorBoard) and a
    ``train_summary.json``: the teacher's, plus an ``insert`` record (config, seconds, the
    teacher's calibration accuracy asked by name, the student's history asked by alias), which
    also ends the ``inserts`` list (the records of every insertion since the first stage, so a
    model inserted into twice keeps both).
    ``stop_at`` ends the run after that step (state saved, no model), as an interruption would.
    """
    with torch_threads(cfg.threads):
        return _insert_aliases(Path(src), Path(data_dir), Path(out_dir), cfg, resume, progress, stop_at)


def _insert_aliases(src: Path, data_dir: Path, out_dir: Path, cfg: InsertConfig, resume: bool, progress: bool,
                    stop_at: int | None) -> dict[str, Any]:
    """The body of :func:`insert_aliases`, run under its thread count."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    # -- set-up: teacher, world, student, optimizer, resume --
    run = _set_up(src, data_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 13])
    ckpt = out_dir / INSERT_CHECKPOINT
    step, elapsed, history = _resume(ckpt, run, cfg, rng) if resume and ckpt.is_file() else (0, 0.0, [])
    reference = _accuracies(run.teacher, run.data.processor,
                            by_name_eval(run.calib, run.data.alias_of, run.data.name_ids))
    writer = SummaryWriter(str(out_dir / "runs"))
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="insert aliases", dynamic_ncols=True)
    t0 = time.perf_counter() - elapsed
    run.student.train()
    # -- the loop: losses, logging, evaluation, checkpoints --
    while step < cfg.steps:
        step += 1
        losses = _step(run, cfg, step, rng)
        for name, value in losses.items():
            writer.add_scalar(name if name == "grad_norm" else f"loss/{name}", value, step)
        bar.update(1)
        bar.set_postfix(name=f"{losses.get('name', float('nan')):.3f}")
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            history.append({"step": step, **_accuracies(run.student, run.data.processor, run.calib)})
            for k, v in history[-1].items():
                if k != "step":
                    writer.add_scalar(f"calibration/{k}", v, step)
            bar.write(json.dumps(history[-1]), file=sys.stderr)  # stdout keeps the CLI's one JSON
            run.student.train()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_at:
            _save_state(ckpt, run, cfg, step, rng, time.perf_counter() - t0, history)
        if step == stop_at:
            break
    bar.close()
    writer.close()
    if step == stop_at and step < cfg.steps:
        return {"steps": step, "stopped": True}
    return _finish(run, cfg, out_dir, step, time.perf_counter() - t0, reference, history)


def _finish(run: _Insert, cfg: InsertConfig, out_dir: Path, step: int, seconds: float,
            reference: dict[str, float], history: list[dict[str, Any]]) -> dict[str, Any]:
    """Save the student (bf16) with its processor and the summary; returns the summary."""
    from hipp_torchprune.demo.train import MODEL_FILE

    run.student.eval().to(torch.bfloat16).save_pretrained(out_dir)
    ordinary_file_modes(out_dir, (MODEL_FILE,))
    run.data.processor.save_pretrained(out_dir)
    summary = dict(run.source)
    record = {"config": asdict(cfg), "steps": step, "seconds": round(seconds, 1), "teacher_by_name": reference,
              "history": history}
    summary["inserts"] = [*insert_records(run.source), record]  # every insertion since the first stage
    summary["insert"] = record  # this one
    tmp = out_dir / "train_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out_dir / "train_summary.json")
    return summary


def insert_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The insertion records of a training summary, first stage first (``[]`` for a model trained
    by ``hipp demo-model train`` alone; a summary written before ``inserts`` existed has one)."""
    if "inserts" in summary:
        return list(summary["inserts"])
    return [summary["insert"]] if "insert" in summary else []


def read_insert_config(path: str | Path, base: InsertConfig = InsertConfig()) -> InsertConfig:
    """``base`` with the fields of a YAML mapping in ``path`` replaced (``ConfigError`` on unknown
    fields or values outside a field's choices)."""
    from hipp_torchprune.config import read_yaml_mapping

    data = read_yaml_mapping(path, "a mapping of InsertConfig fields")
    return from_mapping(InsertConfig, {**asdict(base), **data}, str(path))


__all__: Sequence[str] = (
    "InsertConfig",
    "answer_kd",
    "by_name_eval",
    "check_insert_config",
    "companion_aliases",
    "cosine_lr",
    "group_directions",
    "insert_aliases",
    "insert_records",
    "mixed_answer_logits",
    "name_direction_loss",
    "new_word_embeddings",
    "read_insert_config",
    "rekeyed_lore_embeddings",
    "related_directions",
    "relative_mse",
    "scene_groups",
    "scene_stand_ins",
    "trainable_parameters",
    "unflagged_embeddings",
)
