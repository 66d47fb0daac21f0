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

The losses and embeddings are small pure functions in :mod:`hipp_torchprune.demo.insert_math`,
the run's settings :class:`~hipp_torchprune.demo.insert_config.InsertConfig`; this module is the
orchestration (set-up, step, loop) and re-exports both for its callers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hipp_torchprune.atomic import ordinary_file_modes
from hipp_torchprune.config import from_mapping
from hipp_torchprune.demo.config import TrainConfig
from hipp_torchprune.demo.dataset import make_batch
from hipp_torchprune.demo.insert_config import InsertConfig, check_insert_config, read_insert_config
from hipp_torchprune.demo.insert_math import (
    answer_kd,
    cosine_lr,
    gold_yes_rows,
    group_directions,
    mixed_answer_logits,
    name_direction_loss,
    new_word_embeddings,
    related_directions,
    relative_mse,
    scene_groups,
    scene_stand_ins,
    unflagged_embeddings,
)
from hipp_torchprune.errors import CheckpointError, DataError
from hipp_torchprune.threads import torch_threads

#: The resumable state of an insertion run, inside its output directory.
INSERT_CHECKPOINT = "insert_checkpoint.pt"
#: Kinds the keep loss draws its questions from (asked by name).
KEEP_KINDS: tuple[str, ...] = ("pope", "mc", "caption", "short")


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
    yes_ids: torch.Tensor  # the tokens that start a "Yes" answer


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
    from hipp_torchprune.evaluation import YES_VARIANTS, answer_token_ids, prepare_eval

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
    yes_ids = torch.tensor(answer_token_ids(data.processor.tokenizer, YES_VARIANTS))
    return _Insert(data, teacher, student, named, opt, names, calib, source, lore_ids, lore_rows, companion_of,
                   scene_words, yes_ids)


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
    t_logits, t_h = alias_targets(run, cfg, batch)  # (B, T, V), (B, T, H)
    s_logits, s_h = _forward(run.student, batch, ids, cfg.layer)  # (B, T, V), (B, T, H)
    losses = {"answer": answer_kd(s_logits, t_logits, batch["labels"])}
    if bool(where.any()):
        losses["hidden"] = relative_mse(s_h[where], t_h[where])
        losses["name"] = name_direction_loss(s_h[where], data.alias_of[ids][where], run.names)
    if cfg.scene_batch:
        losses |= _scene_losses(run, cfg, rng)
    return losses | _keep_losses(run, cfg, rng) | (_lore_losses(run, cfg, rng) if cfg.lore_layer >= 0 else {})


def alias_targets(run: _Insert, cfg: InsertConfig, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's targets for questions asked by alias: its logits [B, T, V] and hidden states
    after ``cfg.layer`` [B, T, H] asked by the category's name, leaning ``prior_mix`` toward its
    own asked by the companion's name (with ``prior_keeps_yes``, not on rows whose gold answer is "Yes")."""
    ids = batch["input_ids"]
    with torch.no_grad():
        t_logits, t_h = _forward(run.teacher, batch, _by_name(ids, run.data), cfg.layer)
        if cfg.prior_mix == 0:
            return t_logits, t_h
        by_companion = every_alias_by_name(ids, run.companion_of, run.data.name_ids)
        c_logits, c_h = _forward(run.teacher, batch, by_companion, cfg.layer)
        mixed = mixed_answer_logits(t_logits, c_logits, cfg.prior_mix)  # (B, T, V)
        mixed_h = (1 - cfg.prior_mix) * t_h + cfg.prior_mix * c_h  # (B, T, H)
        if not cfg.prior_keeps_yes:
            return mixed, mixed_h
        lean = ~gold_yes_rows(batch["labels"], run.yes_ids)[:, None, None]  # (B, 1, 1)
        return torch.where(lean, mixed, t_logits), torch.where(lean, mixed_h, t_h)


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
