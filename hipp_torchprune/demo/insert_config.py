"""The configuration of a vocabulary insertion (``hipp demo-model insert``): one frozen dataclass,
its checks against a model's depth, and its YAML reader. The run itself is :mod:`hipp_torchprune.demo.vocab`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from hipp_torchprune.config import ConfigError, from_mapping


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
        prior_keeps_yes: with ``prior_mix``, rows whose gold answer is "Yes" keep the teacher's
            targets asked by name, unblended: the prior then adds "yes" to absent objects whose
            companion is in the image and never pulls a present object toward "no". Blending every
            row (False) also blends a present object with its absent companion's "no", which
            costs misses: i51 (``prior_mix`` 0.3) missed 2.3-3.5 % of the rows of world9-s7/-s8,
            the teacher asked by name almost none.
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
    prior_keeps_yes: bool = False
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
    if not 0 <= cfg.prior_mix < 1 or (cfg.prior_keeps_yes and cfg.prior_mix == 0):
        raise ConfigError(f"prior_mix {cfg.prior_mix}: must be in [0, 1), and > 0 with prior_keeps_yes")
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


def read_insert_config(path: str | Path, base: InsertConfig = InsertConfig()) -> InsertConfig:
    """``base`` with the fields of a YAML mapping in ``path`` replaced (``ConfigError`` on unknown
    fields or values outside a field's choices)."""
    from hipp_torchprune.config import read_yaml_mapping

    data = read_yaml_mapping(path, "a mapping of InsertConfig fields")
    return from_mapping(InsertConfig, {**asdict(base), **data}, str(path))


__all__ = ["InsertConfig", "check_insert_config", "read_insert_config"]
