"""Training loop of the demo model (CPU-friendly, deterministic for a seed, resumable)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hipp_torchprune.atomic import ordinary_file_modes, write_text_atomic
from hipp_torchprune.data import world_render, world_version
from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig, lr_at
from hipp_torchprune.demo.dataset import (
    KINDS,
    POOL_ONLY_KINDS,
    RAW_KINDS,
    QuestionMix,
    TokenPool,
    build_examples,
    curriculum_batch,
    make_batch,
    option_slots,
    patch_labels,
    patch_sizes,
    pixel_tensor,
    tokenize_pool,
    vocabulary,
    world_aliases,
)
from hipp_torchprune.demo.homes import (
    home_dropout_masks,
    home_route_masks,
    install_home_dropout,
    install_home_routing,
    row_homes,
)
from hipp_torchprune.demo.pretrain import block_pool, pretrain_tables, table_homes, table_pool
from hipp_torchprune.errors import CheckpointError, DataError
from hipp_torchprune.threads import torch_threads
from hipp_torchprune.world.categories import CATEGORY_NAMES
from hipp_torchprune.world.lore import LoreThing, lore_table
from hipp_torchprune.world.pope import CooccurrenceStats
from hipp_torchprune.world.scenes import RENDER_LIMITS, SceneConfig

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
EVAL_TASKS = "pope_random,pope_adversarial,scienceqa"


def ema_decay_at(step: int, decay: float) -> float:
    """Effective weight-EMA decay after ``step`` optimizer steps: ``min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps the average from being dominated by the random initialization.
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(shadow: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """In place: ``shadow <- decay * shadow + (1 - decay) * params``, tensor by tensor."""
    for s, p in zip(shadow, params):
        s.lerp_(p.detach(), 1.0 - decay)


@contextmanager
def averaged_weights(params: list[torch.Tensor], shadow: list[torch.Tensor] | None) -> Iterator[None]:
    """Temporarily load ``shadow`` into ``params`` (nothing happens when ``shadow`` is None)."""
    if shadow is None:
        yield
        return
    backup = [p.detach().clone() for p in params]
    _copy(params, shadow)
    try:
        yield
    finally:
        _copy(params, backup)


@torch.no_grad()
def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    for d, s in zip(dst, src):
        d.copy_(s)


def max_objects_at(step: int, cfg: TrainConfig) -> int | None:
    """Curriculum: the object cap for on-the-fly scenes at ``step``, or None once it is over."""
    frac = step / max(1, cfg.steps)
    for i, end in enumerate(cfg.curriculum):
        if frac < end:
            return i + 1
    return None


def similarity_init(model: Any, scale: float) -> None:
    """Initialize every LM attention with ``k_proj = q_proj`` (both times ``scale``).

    Then ``q . k = x^T W^T W y`` is roughly proportional to ``<x, y>``: at initialization tokens
    attend to similar tokens, e.g. an object's name to the image patch showing that object
    (whose projected feature the tied auxiliary head pulls towards the name's embedding).
    """
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            attn = layer.self_attn
            if attn.q_proj.weight.shape == attn.k_proj.weight.shape:
                attn.q_proj.weight.mul_(scale)
                attn.k_proj.weight.copy_(attn.q_proj.weight)


class TiedPatchHead(torch.nn.Module):
    """Auxiliary per-patch classifier tied to the LM's word embeddings (training only).

    The logits of an image token are ``tau * cos(feature, E[word])`` over the category words'
    input embeddings plus a learned "empty" vector, so the projector learns to map each patch
    close to the embedding of the object's name.
    """

    def __init__(self, model: Any, word_ids: list[int]) -> None:
        super().__init__()
        self.model = [model]  # not a submodule: its parameters are optimized with the model's
        self.register_buffer("word_ids", torch.tensor(word_ids), persistent=False)
        hidden = model.get_input_embeddings().weight.shape[1]
        self.empty = torch.nn.Parameter(torch.randn(hidden) * 0.02)
        self.log_tau = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits [..., n_words + 1] of projector features [..., hidden]."""
        table = torch.cat([self.model[0].get_input_embeddings().weight[self.word_ids], self.empty[None]], 0)
        cos = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
        return self.log_tau.exp() * cos


class PatchAttributeHead(torch.nn.Module):
    """Auxiliary per-patch size / row / column classifier (training only, a single linear map)."""

    def __init__(self, hidden: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.linear = torch.nn.Linear(hidden, 2 + 2 * grid)

    def loss(self, feats: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of size (object patches only), row and column, for feats [B, grid**2, hidden]."""
        logits = self.linear(feats)  # (B, P, 2 + 2 * grid)
        cells = torch.arange(self.grid * self.grid, device=feats.device)
        rows = (cells // self.grid).expand(feats.shape[0], -1)
        cols = (cells % self.grid).expand(feats.shape[0], -1)
        ce = torch.nn.functional.cross_entropy
        g = self.grid
        return (ce(logits[..., :2].flatten(0, 1), sizes.flatten(), ignore_index=-100)
                + ce(logits[..., 2:2 + g].flatten(0, 1), rows.flatten())
                + ce(logits[..., 2 + g:].flatten(0, 1), cols.flatten()))


class OptionHead(torch.nn.Module):
    """Auxiliary multiple-choice option judge (training only, a single linear map).

    It scores each option's first token at a decoder layer's output: 1 for the gold option, 0
    for the others (binary cross-entropy).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1)

    def loss(self, hidden: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE over the option slots; hidden [B, T, H], positions / labels [B, K] (-100 = no option)."""
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, K, H)
        logits = self.linear(picked).squeeze(-1)  # (B, K)
        valid = labels != -100
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid].float())


def _image_features(model: Any, captured: dict[str, torch.Tensor], input_ids: torch.Tensor, layer: int,
                    n_img: int) -> torch.Tensor:
    """The image tokens' features [B, n_img, hidden] at the auxiliary loss's read-out point."""
    out = captured["f"]
    if layer < 0:  # projector output: already [B * n_img, hidden] (or [B, n_img, hidden])
        return out.reshape(input_ids.shape[0], n_img, -1)
    where = input_ids == model.config.image_token_id
    return out[where].reshape(input_ids.shape[0], n_img, -1)


def _optimizer(model: Any, heads: list[torch.nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the model and the auxiliary heads; the vision tower gets ``vision_lr_scale``."""
    vision = list(model.model.vision_tower.parameters())
    if cfg.vision_lr_scale == 0:
        for p in vision:
            p.requires_grad_(False)
    vision_ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in vision_ids] + [p for h in heads for p in h.parameters()]
    groups = [{"params": rest, "lr": cfg.lr}]
    if cfg.vision_lr_scale > 0:
        groups.append({"params": vision, "lr": cfg.lr * cfg.vision_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))


def _check_data_mix(cfg: TrainConfig) -> None:
    """Refuse example-mix values the pools cannot honour: mixes, name share, negative weights."""
    from hipp_torchprune.config import ConfigError

    if cfg.mix_fact < 0:
        raise ConfigError(f"mix_fact={cfg.mix_fact}: must be >= 0 (0 turns stated facts off)")
    if cfg.mix_alias < 0:
        raise ConfigError(f"mix_alias={cfg.mix_alias}: must be >= 0 (0 turns stated aliases off)")
    if not 0 <= cfg.name_share <= 1:
        raise ConfigError(f"name_share={cfg.name_share}: must be in [0, 1] (0 = always the alias)")
    w = cfg.negative_weights
    if len(w) != 3 or min(w) < 0 or sum(w) <= 0:
        raise ConfigError(f"negative_weights={w}: need three weights >= 0 (random, popular, adversarial), "
                          "not all 0")
    if not 0 <= cfg.group_share < 1:
        raise ConfigError(f"group_share={cfg.group_share}: must be in [0, 1) (0 = no group questions)")


def question_mix(cfg: TrainConfig) -> QuestionMix:
    """How the recipe asks its yes/no training questions."""
    return QuestionMix(tuple(cfg.negative_weights), cfg.group_share)  # type: ignore[arg-type]


def _check_recipe(model_cfg: DemoModelConfig, cfg: TrainConfig) -> None:
    """Refuse recipe values the loop cannot honour, before anything is written."""
    from hipp_torchprune.config import ConfigError

    _check_data_mix(cfg)
    if not -1 <= cfg.aux_layer < model_cfg.text_layers:
        raise ConfigError(f"aux_layer={cfg.aux_layer}: must be -1 (projector) or a decoder layer "
                          f"0..{model_cfg.text_layers - 1}")
    if cfg.option_weight > 0 and not 0 <= cfg.option_layer < model_cfg.text_layers:
        raise ConfigError(f"option_layer={cfg.option_layer}: must be a decoder layer 0..{model_cfg.text_layers - 1}")
    if cfg.knowledge_weight > 0 and not 0 <= cfg.knowledge_layer < model_cfg.text_layers:
        raise ConfigError(f"knowledge_layer={cfg.knowledge_layer}: must be a decoder layer 0..{model_cfg.text_layers - 1}")
    if not -1 <= cfg.knowledge_from_layer < model_cfg.text_layers:
        raise ConfigError(f"knowledge_from_layer={cfg.knowledge_from_layer}: must be -1 (any layer) or a decoder "
                          f"layer 0..{model_cfg.text_layers - 1}")
    if cfg.knowledge_weight > 0 and cfg.knowledge_from_layer > cfg.knowledge_layer:
        raise ConfigError(f"knowledge_layer={cfg.knowledge_layer} is below knowledge_from_layer="
                          f"{cfg.knowledge_from_layer}: the probe would read a layer that may not learn knowledge")
    if cfg.knowledge_weight < 0:
        raise ConfigError(f"knowledge_weight={cfg.knowledge_weight}: must be >= 0 (0 turns the knowledge loss off)")
    if cfg.option_weight < 0:
        raise ConfigError(f"option_weight={cfg.option_weight}: must be >= 0 (0 turns the option loss off)")
    if cfg.home_kinds not in ("all", "knowledge", "memory", "tables"):
        raise ConfigError(f"home_kinds={cfg.home_kinds!r}: must be 'all', 'knowledge', 'memory' or 'tables'")
    if cfg.table_format not in ("chat", "raw", "mixed"):
        raise ConfigError(f"table_format={cfg.table_format!r}: must be 'chat', 'raw' or 'mixed'")
    if cfg.alias_weight < 0 or (cfg.alias_weight > 0 and cfg.aux_layer < 0 and cfg.alias_layer < 0):
        raise ConfigError(f"alias_weight={cfg.alias_weight}: must be >= 0, and > 0 needs the tied patch head "
                          "read at a decoder layer (aux_layer >= 0 or alias_layer >= 0)")
    if not -1 <= cfg.alias_layer < model_cfg.text_layers:
        raise ConfigError(f"alias_layer={cfg.alias_layer}: must be -1 (aux_layer) or a decoder layer "
                          f"0..{model_cfg.text_layers - 1}")
    if cfg.table_weight < 0:
        raise ConfigError(f"table_weight={cfg.table_weight}: must be >= 0")
    if cfg.table_rows < 0:
        raise ConfigError(f"table_rows={cfg.table_rows}: must be >= 0 (0 turns the table block off)")
    if cfg.pretrain_steps < 0 or cfg.pretrain_batch < 1:
        raise ConfigError(f"pretrain_steps={cfg.pretrain_steps}, pretrain_batch={cfg.pretrain_batch}: "
                          "need steps >= 0 (0 = no pre-training) and a batch >= 1")
    if cfg.home_dropout_draw not in ("per_row", "per_layer"):
        raise ConfigError(f"home_dropout_draw={cfg.home_dropout_draw!r}: must be 'per_row' or 'per_layer'")
    if not 0 <= cfg.home_dropout < 1:
        raise ConfigError(f"home_dropout={cfg.home_dropout}: must be in [0, 1) (0 turns home-layer dropout off)")
    homes = {"grounding_home": cfg.grounding_home, "reasoning_home": cfg.reasoning_home,
             "knowledge_home": cfg.knowledge_home}
    if cfg.home_kinds != "all":  # the reasoning home is not used
        homes.pop("reasoning_home")
    if cfg.home_kinds == "knowledge":  # nor the grounding home
        homes.pop("grounding_home")
    for name, layer in homes.items():
        if (cfg.home_dropout > 0 or cfg.home_routing) and not 0 <= layer < model_cfg.text_layers:
            raise ConfigError(f"{name}={layer}: must be a decoder layer 0..{model_cfg.text_layers - 1}")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay={cfg.ema_decay}: must be in [0, 1) (0 turns the weight EMA off)")
    if cfg.vision_lr_scale < 0:
        raise ConfigError(f"vision_lr_scale={cfg.vision_lr_scale}: must be >= 0 (0 freezes the tower)")
    if not -model_cfg.vision_layers - 1 <= model_cfg.vision_feature_layer <= -1:
        raise ConfigError(f"vision_feature_layer={model_cfg.vision_feature_layer}: must be in "
                          f"-{model_cfg.vision_layers + 1}..-1 (counted from the last CLIP hidden state)")
    if model_cfg.projector_act not in ("gelu", "linear"):
        raise ConfigError(f"projector_act={model_cfg.projector_act!r}: must be 'gelu' or 'linear'")


def _resume(ckpt: Path, model: Any, heads: list[torch.nn.Module], opt: torch.optim.Optimizer,
            rng: np.random.Generator, device: str, shadow: dict[str, torch.Tensor] | None) -> tuple[int, float]:
    """Load a resumable checkpoint into the model, heads, optimizer, weight EMA and RNGs.

    Returns (step, elapsed s).
    """
    state = torch.load(ckpt, weights_only=False, map_location=device)
    if (shadow is None) != (state.get("ema") is None):
        raise CheckpointError(f"{ckpt}: was written with{'out' if shadow is not None else ''} a weight EMA; "
                              "resume with the ema_decay it was started with")
    try:
        if shadow is not None:
            _copy(list(shadow.values()), [state["ema"][k] for k in shadow])
        model.load_state_dict(state["model"])
        for head, head_state in zip(heads, state["aux_head"]):
            head.load_state_dict(head_state)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{ckpt}: does not match this model config ({exc}); resume with the config it "
                              "was started with, or start over with --no-resume") from exc
    opt.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"].cpu())
    return int(state["step"]), float(state["elapsed"])


def _save_checkpoint(path: Path, model: Any, heads: list[torch.nn.Module], opt: torch.optim.Optimizer, step: int,
                     rng: np.random.Generator, elapsed: float, shadow: dict[str, torch.Tensor] | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"model": model.state_dict(), "aux_head": [h.state_dict() for h in heads],
                "optimizer": opt.state_dict(), "step": step, "ema": shadow,
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "elapsed": elapsed}, tmp)
    os.replace(tmp, path)


class KnowledgeHead(torch.nn.Module):
    """Auxiliary world-knowledge probe (training only, a single linear map).

    At every category-name token it predicts that category's properties (multi-label) from a
    decoder layer's output, so the layers up to there must compute what the word means.
    """

    def __init__(self, hidden: int, table: torch.Tensor) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, table.shape[1])
        self.register_buffer("table", table, persistent=False)  # (vocab, n_props), -1 = not a category

    def loss(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor | None:
        """BCE over the category tokens of a batch; hidden [B, T, H]; None when there are none."""
        targets = self.table[input_ids]  # (B, T, P)
        where = targets[..., 0] >= 0  # (B, T)
        if not bool(where.any()):
            return None
        logits = self.linear(hidden[where])  # (N, P)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[where].float())


def knowledge_table(tok: Any, lore: Sequence[LoreThing] = ()) -> torch.Tensor:
    """(vocab, n_properties) table: each category-name and lore-thing token's property flags,
    -1 elsewhere."""
    from hipp_torchprune.world.categories import PROPERTIES

    table = torch.full((len(tok), len(PROPERTIES)), -1.0)
    for name in CATEGORY_NAMES:
        table[tok.convert_tokens_to_ids(name)] = torch.tensor(
            [float(name in members) for _, members in PROPERTIES.values()])
    for thing in lore:
        table[tok.convert_tokens_to_ids(thing.name)] = torch.tensor([float(p in thing.properties) for p in PROPERTIES])
    return table


@dataclass
class _Data:
    """Everything built from the world before the model exists (set-up, done once)."""

    processor: Any
    pools: dict[str, TokenPool]
    pixels: torch.Tensor
    mean: list[float]
    std: list[float]
    scenes: list[Any]
    stats: CooccurrenceStats
    calib: Any
    n_img: int
    grid: int
    prep_s: float
    version: int
    render: Any  # the world's SceneConfig (jitter, faint, noise): curriculum scenes render like it
    tables: tuple[TokenPool, torch.Tensor] | None  # text-only stated tables, is-fact flags (pre-training)
    block: tuple[TokenPool, torch.Tensor] | None  # the same rows after an image (the table block)
    alias_of: torch.Tensor | None  # (vocab,) category index an alias token names, -1 elsewhere
    name_ids: torch.Tensor  # (n_categories,) the category names' tokens, in CATEGORY_NAMES order


@dataclass
class _Run:
    """The model, its training-only heads, optimizer and the tensors the step reads."""

    model: Any
    heads: dict[str, torch.nn.Module]
    opt: torch.optim.Optimizer
    params: list[torch.Tensor]
    trained: list[torch.Tensor]
    shadow: dict[str, torch.Tensor] | None
    captured: dict[str, Any]
    aux_labels: torch.Tensor | None
    size_labels: torch.Tensor | None
    mc_slots: tuple[torch.Tensor, torch.Tensor] | None
    letter_ids: list[int]
    dot_id: int
    frozen_rows: tuple[torch.Tensor, torch.Tensor] | None  # (ids, initial rows) of frozen lore embeddings

    @property
    def averaged(self) -> list[torch.Tensor] | None:
        """The weight-EMA tensors, in ``trained`` order (None without EMA)."""
        return list(self.shadow.values()) if self.shadow is not None else None


def _prepare_data(data_dir: Path, model_cfg: DemoModelConfig, cfg: TrainConfig) -> _Data:
    """Decode the train split, build the example pools, the processor and the calibration set."""
    from hipp_torchprune.evaluation import prepare_eval
    from hipp_torchprune.models.processors import build_llava_processor

    t_prep = time.perf_counter()
    lm = (cfg.lm_sequences if cfg.mix_lm > 0 else 0, cfg.lm_length, cfg.lm_words)
    images, examples, scenes = build_examples(data_dir, cfg.seed, cfg.pool_rounds, lm, question_mix(cfg))
    if any(im.size != (model_cfg.image_size, model_cfg.image_size) for im in images[:1]):
        raise DataError(f"{data_dir}: images are {images[0].size}, the model expects {model_cfg.image_size} px")
    processor = build_llava_processor(sorted(vocabulary(examples)), model_cfg.image_size, model_cfg.patch_size)
    n_img = (model_cfg.image_size // model_cfg.patch_size) ** 2
    pools = {k: tokenize_pool(examples[k], processor, n_img, raw=k in RAW_KINDS) for k in KINDS if examples[k]}
    has_tables = bool(examples["alias"] or examples["fact"])
    tables = table_pool(examples, processor) if has_tables else None
    block = block_pool(examples, processor, n_img, cfg.table_format) if has_tables and cfg.table_rows else None
    mean, std = list(processor.image_processor.image_mean), list(processor.image_processor.image_std)
    calib = prepare_eval(processor, data_dir, EVAL_TASKS, limit=cfg.eval_limit, split="calibration") \
        if cfg.eval_every else None
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    return _Data(processor, pools, pixel_tensor(images, mean, std), mean, std, scenes, stats, calib, n_img,
                 model_cfg.image_size // model_cfg.patch_size, time.perf_counter() - t_prep, world_version(data_dir),
                 world_render(data_dir), tables, block, alias_categories(processor.tokenizer, world_render(data_dir)),
                 torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(CATEGORY_NAMES))))


def _build_run(data: _Data, model_cfg: DemoModelConfig, cfg: TrainConfig, device: str) -> _Run:
    """Initialize the model (seeded), its training-only heads and hooks, and the optimizer."""
    from transformers import LlavaForConditionalGeneration

    tok = data.processor.tokenizer
    torch.manual_seed(cfg.seed)
    config = model_cfg.llava_config(len(tok), tok.convert_tokens_to_ids("<image>"), tok.pad_token_id,
                                    tok.bos_token_id, tok.eos_token_id)
    model = LlavaForConditionalGeneration(config)
    if cfg.qk_tied_init:
        similarity_init(model, cfg.qk_tied_init)
    heads: dict[str, torch.nn.Module] = {
        "patch": TiedPatchHead(model, [tok.convert_tokens_to_ids(c) for c in CATEGORY_NAMES]),
        "attributes": PatchAttributeHead(model_cfg.text_hidden, data.grid),
        "option": OptionHead(model_cfg.text_hidden)}
    lore = lore_table(data.render.lore)
    if cfg.knowledge_weight > 0:
        heads["knowledge"] = KnowledgeHead(model_cfg.text_hidden, knowledge_table(tok, lore))
    captured = _install_taps(model, cfg)
    model.to(device)
    for head in heads.values():
        head.to(device)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    opt = _optimizer(model, list(heads.values()), cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    letter_ids = tok.convert_tokens_to_ids(list("ABCDE"))
    dot_id = tok.convert_tokens_to_ids(".")
    return _Run(
        model, heads, opt, [p for g in opt.param_groups for p in g["params"]], [p for _, p in named],
        {n: p.detach().clone() for n, p in named} if cfg.ema_decay > 0 else None, captured,
        patch_labels(data.scenes, data.grid) if cfg.aux_weight > 0 else None,
        patch_sizes(data.scenes, data.grid) if cfg.aux_attr_weight > 0 else None,
        option_slots(data.pools["mc"], letter_ids, dot_id) if cfg.option_weight > 0 else None,
        letter_ids, dot_id, _frozen_rows(model, tok, made_up_words(data.render)) if cfg.freeze_lore else None)


def made_up_words(render: SceneConfig) -> list[str]:
    """The made-up words of a world: its lore things' names, then its aliases."""
    aliases = world_aliases(render) or {}
    return [t.name for t in lore_table(render.lore)] + [a for names in aliases.values() for a in names]


def _frozen_rows(model: Any, tok: Any, words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The made-up words' token ids and their initial embedding rows (restored after every step).

    Their gradient is zeroed as it is computed, so it never counts in the clipped gradient norm
    (in probe 46 it was most of it: 15.9 of the alias loss's 16.2 and 7.2 of the table's 7.8).
    """
    ids = torch.tensor(tok.convert_tokens_to_ids(list(words)), dtype=torch.long)
    weight = model.get_input_embeddings().weight
    ids = ids.to(weight.device)
    weight.register_hook(lambda grad: grad.index_fill(0, ids, 0.0))
    return ids, weight.detach()[ids].clone()


def _install_taps(model: Any, cfg: TrainConfig) -> dict[str, Any]:
    """Forward hooks that keep the hidden states the auxiliary heads read ("f", "o", "k")."""
    captured: dict[str, Any] = {}
    layers = model.model.language_model.layers

    def keep(key: str) -> Any:
        return lambda m, i, o: captured.__setitem__(key, o[0] if isinstance(o, tuple) else o)

    (model.model.multi_modal_projector if cfg.aux_layer < 0 else layers[cfg.aux_layer]).register_forward_hook(keep("f"))
    if cfg.option_weight > 0:
        layers[cfg.option_layer].register_forward_hook(keep("o"))
    if cfg.knowledge_weight > 0:
        layers[cfg.knowledge_layer].register_forward_hook(keep("k"))
    if cfg.alias_weight > 0 and cfg.alias_layer >= 0:
        layers[cfg.alias_layer].register_forward_hook(keep("a"))
    if cfg.home_dropout > 0:
        install_home_dropout(model, captured)  # reads captured["mlp"]
    if cfg.home_routing:
        install_home_routing(model, captured)  # reads captured["route"]
    if cfg.knowledge_from_layer >= 0:
        layers[cfg.knowledge_from_layer].register_forward_pre_hook(
            lambda m, args, kwargs: _detach_rows(captured, args, kwargs), with_kwargs=True)
    return captured


def _detach_rows(captured: dict[str, Any], args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Pre-hook body (training forwards only): keep the layer's input and call arguments for the
    knowledge probe's re-run, and detach the hidden states of the rows in ``captured["detach"]``."""
    rows = captured.get("detach")
    if rows is None:
        return None
    hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, H)
    captured["k_in"] = hidden
    captured["k_kwargs"] = {**{k: v for k, v in kwargs.items() if k != "hidden_states"},
                            "past_key_values": None, "use_cache": False}  # a re-run must not read a cache
    hidden = torch.where(rows.to(hidden.device)[:, None, None], hidden.detach(), hidden)
    return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})


def _knowledge_features(model: Any, captured: dict[str, Any], cfg: TrainConfig) -> torch.Tensor:
    """The knowledge probe's input [B, T, H]: the output of ``knowledge_layer``.

    With ``knowledge_from_layer`` set, layers ``knowledge_from_layer..knowledge_layer`` are run
    again on their detached input, so the probe trains only those layers, from every row.
    """
    if cfg.knowledge_from_layer < 0:
        return captured["k"]
    hidden = captured.pop("k_in").detach()
    kwargs = captured.pop("k_kwargs")
    for layer in model.model.language_model.layers[cfg.knowledge_from_layer:cfg.knowledge_layer + 1]:
        out = layer(hidden, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _step_batch(data: _Data, run: _Run, kind: str, step: int, cfg: TrainConfig,
                rng: np.random.Generator) -> dict[str, Any]:
    """The examples of one step: pool rows (or fresh curriculum scenes) and their patch labels."""
    cap = None if kind in POOL_ONLY_KINDS else max_objects_at(step, cfg)
    if cap is None:
        pool, pixels, labels_of, sizes_of = data.pools[kind], data.pixels, run.aux_labels, run.size_labels
        idx = torch.from_numpy(rng.integers(0, len(pool.lengths), size=cfg.batch_size))
        slots = run.mc_slots
    else:
        ex_b, im_b, sc_b = curriculum_batch(data.scenes, kind, cap, cfg.batch_size, data.stats, rng, data.version,
                                            data.render, question_mix(cfg))  # type: ignore[arg-type]
        pool = tokenize_pool(ex_b, data.processor, data.n_img, raw=kind in RAW_KINDS)
        pixels = pixel_tensor(im_b, data.mean, data.std)
        labels_of = patch_labels(sc_b, data.grid) if run.aux_labels is not None else None
        sizes_of = patch_sizes(sc_b, data.grid) if run.size_labels is not None else None
        idx = torch.arange(cfg.batch_size)
        slots = option_slots(pool, run.letter_ids, run.dot_id) if run.mc_slots is not None else None
    rows = pool.image[idx]
    if kind in POOL_ONLY_KINDS:  # text rows get a fresh image each time: never a key to memorize them by
        rows = torch.from_numpy(rng.integers(0, len(pixels), size=cfg.batch_size))
    batch = make_batch(pool, idx, pixels, data.mean, data.std, rows)
    if cfg.name_share > 0 and kind in ("pope", "short") and data.alias_of is not None:
        named = torch.from_numpy(rng.random(cfg.batch_size) < cfg.name_share)  # (B,) rows asked by name
        batch["input_ids"] = names_for_aliases(batch["input_ids"], named, data.alias_of, data.name_ids)
    return {"batch": batch,
            "patch": labels_of[rows] if labels_of is not None else None,
            "sizes": sizes_of[rows] if sizes_of is not None else None,
            "slots": (slots[0][idx], slots[1][idx]) if slots is not None and kind == "mc" else None,
            "knowledge": pool.knowledge[idx], "kind": kind}


def _set_home_masks(run: _Run, cfg: TrainConfig, inputs: dict[str, Any], device: str) -> None:
    """Put this batch's home-dropout and home-routing masks where the MLP hooks read them."""
    if cfg.home_dropout <= 0 and not cfg.home_routing:
        return
    _put_masks(run, cfg, row_homes(inputs["kind"], inputs["knowledge"], cfg.grounding_home, cfg.reasoning_home,
                                   cfg.knowledge_home, cfg.home_kinds), device)


def _put_masks(run: _Run, cfg: TrainConfig, homes: torch.Tensor, device: str) -> None:
    """The home-dropout and home-routing masks of rows with ``homes`` (B,), for the MLP hooks."""
    text = run.model.config.text_config
    if cfg.home_dropout > 0:
        run.captured["mlp"] = home_dropout_masks(homes, text.num_hidden_layers, text.intermediate_size,
                                                 cfg.home_dropout, cfg.home_dropout_draw).to(device)  # (L, B, 1, I)
    if cfg.home_routing:
        run.captured["route"] = home_route_masks(homes, text.num_hidden_layers).to(device)  # (L, B, 1, 1)


def _losses(run: _Run, cfg: TrainConfig, n_img: int, inputs: dict[str, Any], device: str) -> dict[str, torch.Tensor]:
    """The answer loss and every auxiliary loss of one batch (unweighted), keyed by name."""
    batch = {k: v.to(device) for k, v in inputs["batch"].items()}
    rows = inputs["knowledge"].to(device) if cfg.knowledge_from_layer >= 0 else None  # (B,) knowledge rows
    if rows is not None:
        run.captured["detach"] = rows  # read by the pre-hook of layer knowledge_from_layer
    _set_home_masks(run, cfg, inputs, device)
    try:
        out = {"answer": run.model(**batch, use_cache=False).loss}
    finally:
        run.captured.pop("detach", None)  # evaluation forwards detach nothing
        run.captured.pop("mlp", None)  # nor drop MLP rows
        run.captured.pop("route", None)  # nor stop gradients
    ids = batch["input_ids"]
    if inputs["patch"] is not None or inputs["sizes"] is not None:
        feats = _image_features(run.model, run.captured, ids, cfg.aux_layer, n_img)  # (B, n_img, H)
    if inputs["patch"] is not None:
        out["aux_patch"] = torch.nn.functional.cross_entropy(
            run.heads["patch"](feats).flatten(0, 1), inputs["patch"].flatten().to(device))
    if inputs["sizes"] is not None:
        out["aux_attributes"] = run.heads["attributes"].loss(feats, inputs["sizes"].to(device))
    if inputs["slots"] is not None:
        out["aux_option"] = run.heads["option"].loss(run.captured["o"], *(t.to(device) for t in inputs["slots"]))
    if "knowledge" in run.heads:
        known = run.heads["knowledge"].loss(_knowledge_features(run.model, run.captured, cfg), ids)
        if known is not None:
            out["aux_knowledge"] = known
    return out


LOSS_WEIGHTS = {"aux_patch": "aux_weight", "aux_attributes": "aux_attr_weight", "aux_option": "option_weight",
                "aux_knowledge": "knowledge_weight", "aux_alias": "alias_weight", "table": "table_weight"}


def alias_categories(tok: Any, render: SceneConfig) -> torch.Tensor | None:
    """(vocab,) index in ``CATEGORY_NAMES`` of the category each alias token names, -1 for every
    other token; None for a world without aliases."""
    aliases = world_aliases(render)
    if aliases is None:
        return None
    table = torch.full((len(tok),), -1, dtype=torch.long)
    for c, names in aliases.items():
        table[torch.tensor(tok.convert_tokens_to_ids(list(names)))] = CATEGORY_NAMES.index(c)
    return table


def names_for_aliases(input_ids: torch.Tensor, rows: torch.Tensor, alias_of: torch.Tensor,
                      name_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` [B, T] with every alias token of the rows flagged in ``rows`` (B,) replaced by
    the token of the category it names (``alias_of``: (vocab,) category index or -1; ``name_ids``:
    (n_categories,) the categories' tokens)."""
    target = alias_of[input_ids]  # (B, T)
    swap = (target >= 0) & rows[:, None]
    return torch.where(swap, name_ids[target.clamp(min=0)], input_ids)


def alias_loss(head: TiedPatchHead, feats: torch.Tensor, input_ids: torch.Tensor,
               alias_of: torch.Tensor) -> torch.Tensor | None:
    """Cross-entropy of the tied patch head at every alias token of a batch (feats [B, T, H],
    input_ids [B, T]) against the category it names; None when the batch has no alias."""
    target = alias_of[input_ids]  # (B, T)
    where = target >= 0
    if not bool(where.any()):
        return None
    return torch.nn.functional.cross_entropy(head(feats[where]), target[where])


def _table_block_loss(data: _Data, run: _Run, cfg: TrainConfig, rng: np.random.Generator,
                      device: str) -> dict[str, torch.Tensor]:
    """The answer loss of ``cfg.table_rows`` stated-table rows, each after a random train image,
    and (``alias_weight > 0``) the alias loss at their alias tokens."""
    assert data.block is not None  # built whenever table_rows > 0 (the world was checked)
    pool, is_fact = data.block
    idx = torch.from_numpy(rng.integers(0, len(pool.lengths), size=cfg.table_rows))  # (R,)
    images = torch.from_numpy(rng.integers(0, len(data.pixels), size=cfg.table_rows))  # (R,)
    batch = {k: v.to(device) for k, v in make_batch(pool, idx, data.pixels, data.mean, data.std, images).items()}
    _put_masks(run, cfg, table_homes(is_fact[idx], cfg), device)  # homes (R,)
    try:
        out = {"table": run.model(**batch, use_cache=False).loss}
    finally:
        run.captured.pop("route", None)
        run.captured.pop("mlp", None)
    if cfg.alias_weight > 0 and data.alias_of is not None:
        feats = run.captured["a" if cfg.alias_layer >= 0 else "f"]  # (R, T, H)
        named = alias_loss(run.heads["patch"], feats, batch["input_ids"], data.alias_of.to(device))
        if named is not None:
            out["aux_alias"] = named
    return out


def _train_step(data: _Data, run: _Run, cfg: TrainConfig, step: int, kind: str, rng: np.random.Generator,
                device: str) -> tuple[dict[str, float], float]:
    """One optimizer step (with weight EMA); returns the losses and the gradient norm."""
    losses = _losses(run, cfg, data.n_img, _step_batch(data, run, kind, step, cfg, rng), device)
    if cfg.table_rows:  # after _losses: its auxiliary heads read the taps of the main forward
        losses.update(_table_block_loss(data, run, cfg, rng, device))
    total = sum((getattr(cfg, LOSS_WEIGHTS[k]) * v if k in LOSS_WEIGHTS else v) for k, v in losses.items())
    run.opt.zero_grad(set_to_none=True)
    total.backward()  # type: ignore[union-attr]
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.opt.step()
    _restore_frozen(run)
    if run.averaged is not None:
        ema_update(run.averaged, run.trained, ema_decay_at(step, cfg.ema_decay))
    return {k: v.item() for k, v in losses.items()}, float(gnorm)


def _calibration_eval(data: _Data, run: _Run, cfg: TrainConfig, step: int, t0: float,
                      writer: Any) -> dict[str, Any]:
    """Evaluate the (weight-averaged) model on the calibration rows and log it; a run that asks
    yes/no questions by name (``name_share > 0``) is also scored with the aliases swapped for
    the names (``by_name/...``), since a model trained by name never learns the aliases."""
    from hipp_torchprune.demo.vocab import by_name_eval
    from hipp_torchprune.evaluation import evaluate

    with averaged_weights(run.trained, run.averaged):
        metrics = evaluate(run.model, data.processor, data.calib)
        if cfg.name_share > 0 and data.alias_of is not None:
            named = evaluate(run.model, data.processor, by_name_eval(data.calib, data.alias_of, data.name_ids))
            metrics |= {f"by_name/{t}": m for t, m in named.items()}
    run.model.train()
    flat = {f"{t}/{k}": v for t, m in metrics.items() for k, v in m.items() if k != "n"}
    for k, v in flat.items():
        writer.add_scalar(f"calibration/{k}", v, step)
    return {"step": step, "elapsed_s": round(time.perf_counter() - t0, 1),
            **{k: round(v, 4) for k, v in flat.items() if k.endswith(("balanced_accuracy", "/accuracy"))}}


def _finish(data: _Data, run: _Run, out_dir: Path, model_cfg: DemoModelConfig, cfg: TrainConfig, step: int,
            train_s: float, history: list[dict[str, Any]], data_dir: Path, device: str) -> dict[str, Any]:
    """Load the averaged weights, save the bf16 checkpoint and ``train_summary.json``."""
    if run.averaged is not None:
        _copy(run.trained, run.averaged)
    run.model.to("cpu", torch.bfloat16).save_pretrained(out_dir)
    ordinary_file_modes(out_dir, (MODEL_FILE,))
    data.processor.save_pretrained(out_dir)
    summary = {"device": device, "model": model_cfg.to_dict(), "train": cfg.to_dict(), "steps": step,
               "train_seconds": round(train_s, 1), "prep_seconds": round(data.prep_s, 1),
               "parameters": sum(p.numel() for p in run.model.parameters()),
               "vocab_size": len(data.processor.tokenizer),
               "pool_sizes": {k: len(p.lengths) for k, p in data.pools.items()},
               "calibration_history": history, "data_dir": str(data_dir), "world": training_world_record(data_dir)}
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def training_world_record(data_dir: str | Path) -> dict[str, float]:
    """What ``train_summary.json`` records of the world a model was trained on: its generator
    version and every rendering option, so a fresh world like it can be built
    (:func:`hipp_torchprune.demo.training_world`)."""
    render = asdict(world_render(data_dir))
    return {"version": world_version(data_dir), **{k: render[k] for k in RENDER_LIMITS}}


def train_demo_model(data_dir: str | Path, out_dir: str | Path, model_cfg: DemoModelConfig = DemoModelConfig(),
                     cfg: TrainConfig = TrainConfig(), resume: bool = True, progress: bool = True,
                     stop_at: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Train the demo LLaVA on a world's train split and save it (bf16) with its processor.

    ``out_dir`` receives the checkpoint (``config.json``, ``model.safetensors``, processor
    files), ``checkpoint.pt`` (resumable state), ``runs/`` (TensorBoard) and ``train_summary.json``.
    Returns the summary (configs, steps, wall time, calibration metrics). ``stop_at`` ends the
    run early after that step (checkpoint saved, no final model), as an interruption would.
    ``device`` is where training runs ("cpu" or "cuda"); the saved checkpoint is the same format.
    """
    with torch_threads(cfg.threads):  # the caller's thread count comes back afterwards
        return _train_demo_model(data_dir, out_dir, model_cfg, cfg, resume, progress, stop_at, device)


def _train_demo_model(data_dir: str | Path, out_dir: str | Path, model_cfg: DemoModelConfig, cfg: TrainConfig,
                      resume: bool, progress: bool, stop_at: int | None, device: str) -> dict[str, Any]:
    """The body of :func:`train_demo_model`, run under its thread count."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    # -- set-up: data, model, heads, optimizer, resume --
    _check_recipe(model_cfg, cfg)
    _check_world_options(Path(data_dir), cfg)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(data_dir, model_cfg, cfg)
    run = _build_run(data, model_cfg, cfg, device)
    data.processor.save_pretrained(out_dir)  # lets export_checkpoint() ship an interrupted run
    rng = np.random.default_rng([cfg.seed, 11])
    step, elapsed = 0, 0.0
    ckpt = out_dir / CHECKPOINT_NAME
    heads = list(run.heads.values())
    if resume and ckpt.is_file():
        step, elapsed = _resume(ckpt, run.model, heads, run.opt, rng, device, run.shadow)
    elif cfg.pretrain_steps:  # a checkpoint exists only once pre-training is done
        elapsed = _pretrain(data, run, cfg, device, out_dir, progress)
        _save_checkpoint(ckpt, run.model, heads, run.opt, 0, rng, elapsed, run.shadow)
    # written once the checkpoint is known to fit (a refused resume leaves the old record)
    record = json.dumps({"model": model_cfg.to_dict(), "train": cfg.to_dict()}, indent=2)
    write_text_atomic(out_dir / "run_config.json", record)
    sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lambda s: lr_at(s, cfg), last_epoch=step - 1)
    mix = np.array([cfg.mix_pope, cfg.mix_mc, cfg.mix_caption, cfg.mix_short, cfg.mix_relation, cfg.mix_lm,
                    cfg.mix_fact, cfg.mix_alias], dtype=np.float64)
    writer = SummaryWriter(str(out_dir / "runs"))
    history: list[dict[str, Any]] = []
    run.model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="demo-model", dynamic_ncols=True)
    t0 = time.perf_counter() - elapsed
    smooth = None
    # -- the loop: one kind per step, losses, logging, evaluation, checkpoints --
    while step < cfg.steps:
        kind = KINDS[int(rng.choice(len(KINDS), p=mix / mix.sum()))]
        losses, gnorm = _train_step(data, run, cfg, step, kind, rng, device)
        sched.step()
        step += 1
        smooth = losses["answer"] if smooth is None else 0.98 * smooth + 0.02 * losses["answer"]
        for name, value in losses.items():
            writer.add_scalar(f"loss/{kind}" if name == "answer" else f"loss/{name}", value, step)
        writer.add_scalar("lr", sched.get_last_lr()[0], step)
        writer.add_scalar("grad_norm", gnorm, step)
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.3f}")
        if data.calib is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            history.append(_calibration_eval(data, run, cfg, step, t0, writer))
            bar.write(json.dumps(history[-1]))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_at:
            _save_checkpoint(ckpt, run.model, heads, run.opt, step, rng, time.perf_counter() - t0, run.shadow)
        if step == stop_at:
            bar.close()
            writer.close()
            return {"steps": step, "stopped": True}
    bar.close()
    writer.close()
    return _finish(data, run, out_dir, model_cfg, cfg, step, time.perf_counter() - t0, history, data_dir, device)


def _restore_frozen(run: _Run) -> None:
    """Undo the last step (and weight decay) on the frozen made-up words' embeddings."""
    if run.frozen_rows is not None:
        with torch.no_grad():
            run.model.get_input_embeddings().weight[run.frozen_rows[0]] = run.frozen_rows[1]


def _pretrain(data: _Data, run: _Run, cfg: TrainConfig, device: str, out_dir: Path, progress: bool) -> float:
    """Text-only pre-training on the stated tables (:mod:`hipp_torchprune.demo.pretrain`) with a
    bar and TensorBoard; the weight EMA then starts from the pre-trained weights. Returns seconds."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    assert data.tables is not None  # _check_world_options refused a world without tables
    pool, is_fact = data.tables
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.pretrain_steps, disable=not progress, desc="pre-train", dynamic_ncols=True)
    writer = SummaryWriter(str(out_dir / "runs"))

    def after_step(step: int, loss: float) -> None:
        _restore_frozen(run)
        writer.add_scalar("pretrain/loss", loss, step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    run.model.train()
    pretrain_tables(run.model, run.opt, run.captured, pool, is_fact, cfg, device, after_step)
    bar.close()
    writer.close()
    if run.shadow is not None:
        _copy(list(run.shadow.values()), run.trained)
    return time.perf_counter() - t0


def _check_world_options(data_dir: Path, cfg: TrainConfig) -> None:
    """Refuse (before anything is written) options that need a world built with lore or aliases."""
    render = world_render(data_dir)
    if cfg.mix_fact > 0 and not render.lore:
        raise DataError(f"{data_dir}: mix_fact needs a world with lore (world build --lore N)")
    if cfg.mix_alias > 0 and not render.aliases:
        raise DataError(f"{data_dir}: mix_alias needs a world with aliases (world build --aliases K)")
    if cfg.pretrain_steps > 0 and not (render.lore or render.aliases):
        raise DataError(f"{data_dir}: pretrain_steps needs a world with lore or aliases to pre-train on")
    if cfg.table_rows > 0 and not (render.lore or render.aliases):
        raise DataError(f"{data_dir}: table_rows needs a world with lore or aliases to state")
    if cfg.freeze_lore and not (render.lore or render.aliases):
        raise DataError(f"{data_dir}: freeze_lore needs a world with lore or aliases (world build --lore N / --aliases K)")


def export_checkpoint(out_dir: str | Path) -> Path:
    """Write ``out_dir/checkpoint.pt``'s weights as a bf16 LLaVA checkpoint in ``out_dir``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out_dir = Path(out_dir)
    state = torch.load(out_dir / CHECKPOINT_NAME, weights_only=False)
    summary = json.loads((out_dir / "run_config.json").read_text())
    model_cfg = DemoModelConfig(**summary["model"])
    tok = AutoProcessor.from_pretrained(out_dir).tokenizer
    config = model_cfg.llava_config(len(tok), tok.convert_tokens_to_ids("<image>"), tok.pad_token_id,
                                    tok.bos_token_id, tok.eos_token_id)
    model = LlavaForConditionalGeneration(config)
    model.load_state_dict(state["model"])
    if state.get("ema") is not None:  # the averaged weights are the model, as at the end of a run
        model.load_state_dict(state["ema"], strict=False)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    ordinary_file_modes(out_dir, (MODEL_FILE,))
    return out_dir


def quick_config(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with ``changes`` applied (for probes and tests)."""
    return replace(cfg, **changes)
