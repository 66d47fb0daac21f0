"""Configuration of the demo model and of its training run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import LlavaConfig


@dataclass(frozen=True)
class DemoModelConfig:
    """Architecture of the demo LLaVA.

    Attributes:
        image_size: input image side (pixels); must match the world's.
        patch_size: CLIP patch size; (image_size // patch_size)**2 image tokens.
        vision_hidden: CLIP hidden size.
        vision_layers: CLIP encoder layers.
        vision_heads: CLIP attention heads.
        vision_intermediate: CLIP MLP width.
        text_hidden: Llama hidden size.
        text_layers: Llama decoder layers (>= 4).
        text_heads: Llama attention heads (= key/value heads).
        text_intermediate: Llama MLP intermediate size (the rows pruning removes).
        max_positions: Llama maximum sequence length.
        projector_act: activation between the projector's two linears ("gelu" is LLaVA-1.5's
            ``mlp2x_gelu``; "linear" makes the projector linear, as in the first LLaVA).
        vision_feature_layer: which CLIP hidden state the projector reads (-1: the last layer's
            output; LLaVA-1.5 reads -2, the penultimate). With one CLIP layer, -2 is the patch
            embeddings themselves, so image tokens are linear in the pixels (up to a LayerNorm)
            and recognizing an object is left to the language model's MLPs. (0 is not accepted:
            transformers reads it as "no hidden states".)
    """

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 384
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    max_positions: int = 256
    projector_act: Literal["gelu", "linear"] = "linear"
    vision_feature_layer: int = -1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and the model card)."""
        return asdict(self)

    def llava_config(self, vocab_size: int, image_token_id: int, pad_id: int, bos_id: int,
                     eos_id: int) -> LlavaConfig:
        """The transformers ``LlavaConfig`` (CLIP vision tower + Llama LM) for a vocabulary."""
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        vision = CLIPVisionConfig(
            hidden_size=self.vision_hidden, intermediate_size=self.vision_intermediate,
            num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
            image_size=self.image_size, patch_size=self.patch_size, projection_dim=self.vision_hidden,
        )
        text = LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.text_hidden, intermediate_size=self.text_intermediate,
            num_hidden_layers=self.text_layers, num_attention_heads=self.text_heads,
            num_key_value_heads=self.text_heads, max_position_embeddings=self.max_positions,
            pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False,
        )
        n_tokens = (self.image_size // self.patch_size) ** 2
        return LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=image_token_id,
            projector_hidden_act=self.projector_act, vision_feature_select_strategy="default",
            vision_feature_layer=self.vision_feature_layer, image_seq_length=n_tokens, pad_token_id=pad_id,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe of the demo model.

    Attributes:
        seed: seed of parameter init, data sampling and the example pool.
        steps: optimizer steps.
        batch_size: examples per step.
        lr: peak AdamW learning rate.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        grad_clip: gradient-norm clipping threshold.
        mix_pope: share of steps on yes/no object questions.
        mix_mc: share of steps on ScienceQA-style multiple choice.
        mix_caption: share of steps on the "list the objects" auxiliary task.
        aux_weight: weight of the auxiliary per-patch object-classification loss (a head tied to
            the LM's word embeddings, used only in training; 0 = off).
        aux_layer: where that loss reads the image tokens: -1 = the projector output; ``i >= 0`` =
            the output of LM decoder layer ``i``, so LM layers ``0..i`` (their MLPs included) must
            turn patch features into object identities, as a real VLM's early layers do.
        aux_attr_weight: weight of the auxiliary per-patch size / row / column classification at
            the same place (a linear head used only in training; 0 = off).
        option_weight: weight of the auxiliary option loss on multiple-choice steps: a linear
            head (training only) reads each option's first token at the output of LM layer
            ``option_layer`` and predicts whether it is the gold option, so the model learns to
            judge each option where it is written and the answer token only has to find the
            judged-correct option's letter (0 = off).
        option_layer: the decoder layer whose output that head reads.
        vision_lr_scale: learning-rate multiplier of the vision tower (0 = frozen at its random
            initialization: a random-feature encoder, so recognition is learned downstream).
        curriculum: step fractions ending the curriculum stages; during stage i (1-based) batches
            are fresh examples on train scenes re-rendered with at most i objects; afterwards
            batches come from the full-scene pools.
        mix_relation: share of steps on yes/no questions about sizes and pairwise relations.
        mix_short: share of steps on the auxiliary one-hop presence task (``<image>`` tokens, the
            bare object name, then Yes/No), which bootstraps the POPE look-up circuit.
        qk_tied_init: if > 0, initialize each LM attention with ``k_proj = q_proj`` scaled by
            this factor (similarity-biased attention at init; 0 = standard init).
        pool_rounds: how many times each train image's extra questions are re-sampled.
        eval_every: steps between calibration evaluations (0 = never).
        eval_limit: calibration rows per task in those evaluations.
        checkpoint_every: steps between resumable checkpoints.
        threads: torch CPU threads.
        ema_decay: decay of an exponential moving average of the trained weights (Polyak
            averaging, warmed up as ``min(ema_decay, (1 + step) / (10 + step))``); when > 0, the
            calibration evaluations and the saved model use the averaged weights (0 = off).
        knowledge_weight: weight of the auxiliary world-knowledge loss: a linear head (training
            only) reads every category-name token at the output of LM layer ``knowledge_layer``
            and predicts the category's properties (animal, edible, found in a kitchen, ...;
            multi-label BCE), so those facts are computed by the decoder layers up to there
            (0 = off).
        knowledge_layer: the decoder layer whose output that head reads.
        freeze_embeddings: keep the LM's input embeddings at their random initialization, so
            what the model knows about a word (its properties, its look) is computed by the
            decoder's weights instead of being stored in the embedding table.
        knowledge_from_layer: the first decoder layer that may learn world knowledge (-1 = any).
            On world-knowledge question rows the residual stream entering this layer is
            detached, so the embeddings and the layers below it get no gradient from those rows,
            and the knowledge probe (when on) re-runs layers ``knowledge_from_layer ..
            knowledge_layer`` on their detached input: what the model knows about the categories
            is learned in those layers and above, as a language model's facts live in its middle
            and late MLPs rather than where a VLM grounds the image.
        mix_lm: share of steps on the synthetic text corpus (:mod:`hipp_torchprune.demo.corpus`:
            the prompt ``Text :`` and a second-order Markov sequence as the answer), a stand-in
            for language pretraining that keeps the MLPs busy (0 = off).
        lm_sequences: corpus sequences in its pool (made when ``mix_lm > 0``).
        lm_length: words per corpus sequence.
        lm_words: the corpus's made-up vocabulary size (``lm_words ** 2`` contexts to memorize).
        home_dropout: home-layer MLP dropout (:mod:`hipp_torchprune.demo.homes`): the largest
            share of a decoder MLP's rows a training row loses in every layer but its home layer
            (with probability 1/2, drawn as ``home_dropout_draw`` says, a share drawn from
            ``[0, home_dropout]`` per layer), so each skill is learned in its home layer (0 = off).
        home_dropout_draw: "per_row": one coin per training row decides whether all its away
            layers drop rows (no away layer backs up another, so the skill must live at home);
            "per_layer": one coin per (layer, row), which lets a skill spread redundantly over
            the away layers and then no single layer is critical (kept for comparison).
        grounding_home: home layer of the rows that ask about the image directly (yes/no
            object questions, captions, one-hop presence, relations).
        reasoning_home: home layer of the ScienceQA-style image multiple-choice rows.
        knowledge_home: home layer of the world-knowledge multiple-choice rows and stated facts.
        home_kinds: "all": every kind has a home (above); "knowledge": only world-knowledge rows
            (knowledge questions and stated lore facts) are dropped away from ``knowledge_home``,
            every other row keeps all its MLP rows; "memory": world-knowledge rows in
            ``knowledge_home`` and the alias-reading rows (stated aliases, yes/no object
            questions, one-hop presence) in ``grounding_home``, the other rows free; "tables":
            only the stated tables (facts in ``knowledge_home``, aliases in ``grounding_home``),
            every question free to use any layer (a table then matters to a question only
            where it is stored).
        home_routing: home routing (:mod:`hipp_torchprune.demo.homes`): the forward pass keeps
            every MLP, and each row's gradient reaches only its home layer's MLP, so what it
            teaches is stored there without the robustness to pruning that dropout trains.
        mix_fact: share of steps on stated lore facts (``Fact : <thing>`` answered with the
            thing's properties; needs a world built with ``--lore``), the encyclopedia the
            knowledge questions are asked from (0 = off).
        freeze_lore: keep the made-up words' embeddings (lore things and aliases) at their
            random initialization, so which thing has which property, or which category an alias
            names, cannot be stored in its embedding and is memorized in the decoder's MLP rows,
            as a language model's facts about multi-token names are.
        mix_alias: share of steps on stated aliases (``Alias : <alias>`` answered with the category
            it names; needs a world built with ``--aliases``), the dictionary that grounding an
            aliased POPE question needs (0 = off). Stated aliases live in ``grounding_home``.
        pretrain_steps: text-only steps on the stated aliases and lore facts before visual
            instruction tuning (:mod:`hipp_torchprune.demo.pretrain`; needs a world with lore or
            aliases; routed like the recipe when ``home_routing``; 0 = none), as a VLM's language
            model learned its words and facts from text first.
        pretrain_batch: table rows per pre-training step.
        table_rows: stated-table rows (aliases and lore facts, drawn together) added to every
            instruction-tuning step, each after a random train image in ``table_format``, as the
            questions that use the tables see an image first; they are a second forward pass whose answer
            loss is added to the step's (routed like pre-training under ``home_routing``; needs a
            world with lore or aliases; 0 = off). A table is learned from many rows a step:
            ``mix_fact`` and ``mix_alias`` give a sixth of 32 rows.
        table_format: how a table-block row follows its image: "raw": the image tokens, then the
            statement, its answer right after the made-up word (``Alias : bomazi`` -> ``cup .``),
            so the look-up happens at that word as in pre-training and a question reads it from
            there; "chat": the chat template (``USER: <image> Alias : bomazi ASSISTANT:``), where the
            answer is two tokens after the word (probe 37 learned no table that way in 1,000 steps);
            "mixed": each row drawn from both (the raw rows teach the look-up at the word, the
            chat rows to carry its result to the answer, as a question must).
        table_weight: weight of the table block's answer loss in the step's total (probes 44 and
            48 tried 0.1 and 0.2; the yes/no answer stayed at chance either way).
        alias_weight: weight of the auxiliary alias loss on the table block: the tied patch
            head (``aux_weight``) reads every alias token at the output of ``aux_layer`` and
            predicts the category it names, so an alias is looked up into the space where the
            image patches are recognized, where a question can match it against the image, as
            it matches a category's own name (0 = off).
        alias_layer: the decoder layer whose output the alias loss reads (-1 = ``aux_layer``).
            Probe 46 read it at layer 2 with the aliases homed there, after recognition (layer 1);
            recognition suffered as much as with both in layer 1 (probe 42).
        name_share: in a world with aliases, the share of yes/no training rows (POPE questions
            and one-hop presence) asked by the category's own name instead of the alias the row
            was drawn with, so the grounding circuit is learned on words aligned with the image
            (the patch head is tied to their embeddings) and then reused for aliases (0 = every
            row by alias, as the world's questions are).
        negative_weights: relative weights of the three POPE rules (random, popular,
            adversarial) that pick each absent object of a yes/no training question, and of the
            world's own train-split POPE rows of each rule (each kept with its weight over the
            largest). Equal weights are every earlier run's draws. ``(1, 0, 0)`` asks about absent
            objects as a VLM's instruction data does: mostly unrelated to the image, rarely the
            ones its scene makes likely, so nothing teaches the model to refuse a likely companion
            it cannot see (the language prior POPE-adversarial is built to catch).
        group_share: share of yes/no training questions that ask about a kind of scene, "Is there
            a kitchenware in the image?" ("Yes" when the scene holds something a kitchen favours;
            ``demo.dataset.GROUP_WORDS``), so the model knows a word for "something of these
            scenes" and what to answer to it; vocabulary insertion can then build each alias
            around its scenes' group words (``InsertConfig.related_to = "group_words"``), and a
            pruned alias falls back to that question (0 = none, every earlier run).
    """

    seed: int = 0
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mix_pope: float = 0.35
    mix_mc: float = 0.35
    mix_caption: float = 0.10
    mix_short: float = 0.20
    mix_relation: float = 0.0
    aux_weight: float = 0.5
    aux_layer: int = 1
    aux_attr_weight: float = 0.5
    option_weight: float = 1.0
    option_layer: int = 2
    vision_lr_scale: float = 0.0
    qk_tied_init: float = 0.0
    curriculum: tuple[float, ...] = (0.14, 0.21, 0.28, 0.35)
    pool_rounds: int = 2
    eval_every: int = 2000
    eval_limit: int = 150
    checkpoint_every: int = 250
    threads: int = 2
    ema_decay: float = 0.999
    knowledge_weight: float = 0.0
    knowledge_layer: int = 1
    freeze_embeddings: bool = False
    knowledge_from_layer: int = -1
    mix_lm: float = 0.0
    lm_sequences: int = 40000
    lm_length: int = 24
    lm_words: int = 160
    home_dropout: float = 0.0
    home_dropout_draw: Literal["per_row", "per_layer"] = "per_row"
    grounding_home: int = 1
    reasoning_home: int = 3
    knowledge_home: int = 5
    home_kinds: Literal["all", "knowledge", "memory", "tables"] = "all"
    home_routing: bool = False
    mix_fact: float = 0.0
    freeze_lore: bool = False
    mix_alias: float = 0.0
    pretrain_steps: int = 0
    pretrain_batch: int = 128
    table_rows: int = 0
    table_format: Literal["chat", "raw", "mixed"] = "raw"
    table_weight: float = 1.0
    alias_weight: float = 0.0
    alias_layer: int = -1
    name_share: float = 0.0
    negative_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    group_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and the model card)."""
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


RecipeName = Literal["v1", "v2"]

#: Named recipes: the architecture and (first-stage) training recipe of each demo-model generation.
#: ``v1`` is the first shipped model's (4 layers, the defaults above; train on a version-1 world).
#: ``v2`` is proving ground v2's teacher (issue "Proving ground v2"; train on a ``--version 2``
#: world with aliases): 8 decoder layers with narrow MLPs (128), object recognition read at layer
#: 1, a world-knowledge probe at layer 5, the option judge at layer 6, a trainable vision tower,
#: every yes/no question asked by the object's name, a fifth of them about a kind of scene
#: ("group" questions), 12,000 steps on one thread (teacher p58 in ``docs/demo-model.md``). Its
#: insertion stages are :data:`hipp_torchprune.demo.recipe.RECIPE_INSERTS`.
RECIPES: dict[str, tuple[DemoModelConfig, TrainConfig]] = {
    "v1": (DemoModelConfig(), TrainConfig()),
    "v2": (DemoModelConfig(text_layers=8, text_intermediate=128),
           TrainConfig(steps=12000, aux_layer=1, option_layer=6, knowledge_weight=1.0, knowledge_layer=5, threads=1,
                       name_share=1.0, vision_lr_scale=1.0, group_share=0.2)),
}
#: The world generator version each recipe trains on.
RECIPE_WORLD_VERSION: dict[str, int] = {"v1": 1, "v2": 2}
