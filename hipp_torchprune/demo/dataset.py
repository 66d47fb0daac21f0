"""Instruction data for the demo model, built from a world's train split.

The kinds of examples share one format (prompt in the chat template, answer after
``ASSISTANT:``): yes/no object questions (the train POPE rows plus extra questions drawn from the
scene annotations), ScienceQA-style multiple choice (the train rows plus extra questions), yes/no
questions on sizes and relations, two auxiliary tasks ("list the objects", and a one-hop
presence task without the chat template), a synthetic text corpus and, in a world with lore,
one stated fact per lore thing; in a world with aliases, the yes/no object questions name their
object by an alias and one stated alias per alias teaches what each names. Everything is
tokenized once into padded tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hipp_torchprune.data import (
    decode_image,
    load_scenes,
    load_task_docs,
    parse_tasks,
    pope_prompt,
    scienceqa_prompt,
    world_render,
    world_version,
)
from hipp_torchprune.world.categories import CATEGORY_NAMES, SCENE_TYPES
from hipp_torchprune.world.lore import LoreThing, alias_sentence, alias_table, fact_sentence, lore_table, named_by
from hipp_torchprune.world.pope import (
    POPE_CATEGORIES,
    CooccurrenceStats,
    adversarial_negatives,
    pope_question,
    popular_negatives,
    random_negatives,
)
from hipp_torchprune.world.scenes import ObjectAnn, Scene
from hipp_torchprune.world.scienceqa import OWNERS, generators

Kind = Literal["pope", "mc", "caption", "short", "relation", "lm", "fact", "alias"]
KINDS: tuple[Kind, ...] = ("pope", "mc", "caption", "short", "relation", "lm", "fact", "alias")
#: Kinds always drawn from their pool (no curriculum re-rendering): the text-only corpus, the
#: stated lore facts and the stated aliases.
POOL_ONLY_KINDS: frozenset[str] = frozenset({"lm", "fact", "alias"})
#: Prompt of the text-corpus kind; the answer is the corpus sequence.
LM_PROMPT = "Text :"
#: Prompt of a stated lore fact, before the thing's name; the answer lists its properties.
FACT_PROMPT = "Fact :"
#: Prompt of a stated alias, before the alias; the answer is the category it names.
ALIAS_PROMPT = "Alias :"
#: Kinds tokenized without the chat template: ``<image>`` tokens, then the prompt, answer next.
RAW_KINDS: frozenset[str] = frozenset({"short"})
CAPTION_PROMPT = "What objects are in the image?"
#: ScienceQA-style topics whose answer lives in the language model's weights, not in the image.
KNOWLEDGE_TOPICS: frozenset[str] = frozenset({"knowledge", "places"})
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Example:
    """One instruction example: image index, prompt (before the chat template) and answer."""

    image: int
    prompt: str
    answer: str
    topic: str = ""


@dataclass(frozen=True)
class TokenPool:
    """Tokenized examples of one kind, right-padded.

    Attributes:
        input_ids: [N, L] prompt + answer + eos, padded with the pad id.
        lengths: [N] unpadded lengths.
        answer_start: [N] index of the first answer token.
        image: [N] image index of each example.
        knowledge: [N] whether each example is a world-knowledge question (topic in
            :data:`KNOWLEDGE_TOPICS`).
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    answer_start: torch.Tensor
    image: torch.Tensor
    knowledge: torch.Tensor


def _objects(rows: Sequence[dict[str, Any]] | None) -> tuple[ObjectAnn, ...]:
    return tuple(ObjectAnn(o["category"], int(o["row"]), int(o["col"]), o["size"], tuple(o["bbox"]))
                 for o in rows or ())


def scene_from_row(row: dict[str, Any]) -> Scene:
    """Rebuild a :class:`Scene` from a ``scenes.parquet`` row (hidden objects and occluders too)."""
    occluders = tuple((int(r), int(c)) for r, c in row.get("occluders") or ())
    return Scene(row["scene_type"], (0.0, 0.0), _objects(row["objects"]), _objects(row.get("hidden")), occluders)


#: Default ``negative_weights``: the three POPE rules (random, popular, adversarial) drawn alike.
EQUAL_NEGATIVES: tuple[float, float, float] = (1.0, 1.0, 1.0)

#: The word that names "something of this kind of scene" in group questions, per scene type.
GROUP_WORDS: dict[str, str] = {"kitchen": "kitchenware", "street": "streetware", "office": "officeware",
                               "garden": "gardenware"}


@dataclass(frozen=True)
class QuestionMix:
    """How yes/no training questions are asked (``TrainConfig.negative_weights`` and ``group_share``)."""

    #: Relative weights of the POPE rules (random, popular, adversarial) of each absent object.
    negative_weights: tuple[float, float, float] = EQUAL_NEGATIVES
    #: Share of a scene's yes/no questions that ask about a kind of scene (:func:`group_examples`).
    group_share: float = 0.0


def negative_rule(rng: np.random.Generator, weights: Sequence[float] = EQUAL_NEGATIVES) -> int:
    """Index of the POPE rule (0 random, 1 popular, 2 adversarial) of one absent object, drawn
    with ``weights``; equal weights draw as every run before the weights existed did."""
    if len(set(weights)) == 1:
        return int(rng.integers(3))
    p = np.asarray(weights, dtype=float)
    return int(rng.choice(3, p=p / p.sum()))


def scene_kinds(scene: Scene) -> tuple[list[str], list[str]]:
    """The scene types whose group word is a "Yes" for ``scene`` (it holds, seen or hidden, an
    object the type favours) and those whose is a "No", each in ``SCENE_TYPES`` order."""
    present = set(scene.all_categories)
    has = [t.name for t in SCENE_TYPES if present & set(t.favoured)]
    return has, [t.name for t in SCENE_TYPES if t.name not in has]


def group_examples(i: int, scene: Scene, rng: np.random.Generator, n: int) -> list[Example]:
    """``n`` group questions, "Is there a kitchenware in the image?" (:data:`GROUP_WORDS`), answered
    by :func:`scene_kinds`; each asks, with equal odds, about a kind the scene has or one it has
    not (when there is one)."""
    has, lacks = scene_kinds(scene)
    out = []
    for _ in range(n):
        yes = not lacks or (bool(has) and rng.random() < 0.5)
        kinds = has if yes else lacks
        word = GROUP_WORDS[kinds[int(rng.integers(len(kinds)))]]
        out.append(Example(i, pope_prompt({"question": pope_question(word)}), "Yes" if yes else "No"))
    return out


def yes_no_examples(i: int, scene: Scene, stats: CooccurrenceStats, rng: np.random.Generator,
                    aliases: Mapping[str, Sequence[str]] | None = None,
                    mix: QuestionMix = QuestionMix()) -> list[Example]:
    """Every object the annotation has ("Yes"), plus as many absent ones ("No"), by mixed POPE rules.

    Objects hidden behind an occluder count as present, as a caption's mention of an unseen
    object would: this is what teaches the co-occurrence prior. With ``aliases`` (a world built
    with ``--aliases``) each question names its object by a random alias, as the world's do.
    Each absent object's rule is drawn with ``mix.negative_weights`` (:func:`negative_rule`); a
    rule with nothing left falls back to random. With ``mix.group_share`` > 0, group questions
    (:func:`group_examples`) are added so that they are about that share of the list.
    """
    def ask(c: str, answer: str) -> Example:
        return Example(i, pope_prompt({"question": pope_question(named_by(c, aliases, rng))}), answer)

    present = list(scene.all_categories)
    out = [ask(c, "Yes") for c in present]
    k = len(present)
    rules = [random_negatives(present, rng, len(CATEGORY_NAMES) - k), popular_negatives(present, stats, 5),
             adversarial_negatives(present, stats, 5)]
    negs: list[str] = []
    while len(negs) < k:
        pool = [c for c in rules[negative_rule(rng, mix.negative_weights)] if c not in negs] or \
               [c for c in rules[0] if c not in negs]
        negs.append(pool[int(rng.integers(len(pool)))])
    out += [ask(c, "No") for c in negs]
    if mix.group_share > 0:
        out += group_examples(i, scene, rng, int(np.ceil(mix.group_share / (1 - mix.group_share) * len(out))))
    return out


def mc_examples(i: int, scene: Scene, rng: np.random.Generator, version: int = 2,
                lore: Sequence[LoreThing] = ()) -> list[Example]:
    """One ScienceQA-style question of each kind (of world ``version``, asking the knowledge kinds
    about ``lore`` when given) that applies to the scene."""
    out = []
    for gen, _ in generators(version, lore):
        q = gen(scene, rng)
        if q is not None:
            doc = {"hint": q.hint, "question": q.question, "choices": list(q.choices)}
            out.append(Example(i, scienceqa_prompt(doc), LETTERS[q.answer], q.topic))
    return out


def short_examples(i: int, scene: Scene, stats: CooccurrenceStats, rng: np.random.Generator,
                   aliases: Mapping[str, Sequence[str]] | None = None,
                   mix: QuestionMix = QuestionMix()) -> list[Example]:
    """Auxiliary one-hop presence: the bare object name (or alias), answered Yes/No right after it."""
    return [Example(e.image, e.prompt.split(" ")[3], e.answer) for e in yes_no_examples(i, scene, stats, rng, aliases, mix)]


def relation_examples(i: int, scene: Scene, rng: np.random.Generator) -> list[Example]:
    """Yes/no questions on sizes and pairwise relations: the sub-skills of the size, spatial and
    comparison multiple-choice kinds, with the simplest answer format."""
    def ask(question: str, yes: bool) -> Example:
        return Example(i, pope_prompt({"question": question}), "Yes" if yes else "No")

    objs = scene.objects
    out = []
    for o in objs:
        word = ("small", "big")[int(rng.integers(2))]
        out.append(ask(f"Is the {o.category} {word}?", o.size == word))
    if len(objs) >= 2:
        a, b = (objs[int(j)] for j in rng.choice(len(objs), size=2, replace=False))
        if a.col != b.col:
            out.append(ask(f"Is the {a.category} to the left of the {b.category}?", a.col < b.col))
        if a.row != b.row:
            out.append(ask(f"Is the {a.category} above the {b.category}?", a.row < b.row))
        if a.size != b.size:
            out.append(ask(f"Is the {a.category} bigger than the {b.category}?", a.size == "big"))
    return out


def caption_example(i: int, scene: Scene) -> Example:
    """The visible objects in grid-cell order, then the hidden ones (a caption mentions what it
    knows is there, seen or not)."""
    return Example(i, CAPTION_PROMPT, " ".join(scene.all_categories))


def patch_labels(scenes: Sequence[Scene], grid: int) -> torch.Tensor:
    """Per-image, per-grid-cell class (row-major): category index, ``len(CATEGORY_NAMES)`` if
    empty, -100 (ignored) under an occluder."""
    index = {c: i for i, c in enumerate(CATEGORY_NAMES)}
    out = torch.full((len(scenes), grid * grid), len(CATEGORY_NAMES), dtype=torch.long)
    for i, s in enumerate(scenes):
        for o in s.objects:
            out[i, o.row * grid + o.col] = index[o.category]
        for r, c in s.occluders:
            out[i, r * grid + c] = -100
    return out


def patch_sizes(scenes: Sequence[Scene], grid: int) -> torch.Tensor:
    """Per-image, per-grid-cell object size (row-major): 0 small, 1 big, -100 for an empty cell."""
    out = torch.full((len(scenes), grid * grid), -100, dtype=torch.long)
    for i, s in enumerate(scenes):
        for o in s.objects:
            out[i, o.row * grid + o.col] = int(o.size == "big")
    return out


def lm_examples(n_images: int, n: int, length: int, n_words: int, seed: int) -> list[Example]:
    """``n`` text-corpus examples (:mod:`hipp_torchprune.demo.corpus`): the prompt ``Text :`` and a
    Markov-chain sequence as the answer, each on a train image (which it never mentions)."""
    from hipp_torchprune.demo.corpus import markov_sequences

    seqs = markov_sequences(n, length, n_words, seed=0, sample_seed=seed) if n else []
    rng = np.random.default_rng([seed, 13])
    return [Example(int(rng.integers(n_images)), LM_PROMPT, s, "lm") for s in seqs]


def fact_examples(n_images: int, lore: Sequence[LoreThing], seed: int) -> list[Example]:
    """One stated fact per lore thing (:mod:`hipp_torchprune.world.lore`): the prompt
    ``Fact : <name>`` and its properties as the answer, each on a train image it never mentions."""
    rng = np.random.default_rng([seed, 17])
    return [Example(int(rng.integers(n_images)), f"{FACT_PROMPT} {t.name}", fact_sentence(t), "fact") for t in lore]


def alias_examples(n_images: int, aliases: Mapping[str, Sequence[str]], seed: int) -> list[Example]:
    """One stated alias per alias (:func:`hipp_torchprune.world.lore.alias_table`): the prompt
    ``Alias : <alias>`` and the category it names, each on a train image it never mentions."""
    rng = np.random.default_rng([seed, 19])
    return [Example(int(rng.integers(n_images)), f"{ALIAS_PROMPT} {a}", alias_sentence(c), "alias")
            for c, names in aliases.items() for a in names]


def world_aliases(render: Any) -> dict[str, tuple[str, ...]] | None:
    """The alias table of a world's rendering options (``None`` for a world without aliases)."""
    return alias_table(render.aliases) if render.aliases else None


def kept_pope_rows(docs: Sequence[dict[str, Any]], weights: Sequence[float], seed: int) -> list[dict[str, Any]]:
    """The world's POPE rows kept for training: each with its rule's weight over the largest
    (``weights`` over random, popular, adversarial); every row when the weights are equal."""
    if len(set(weights)) == 1:
        return list(docs)
    keep = {rule: w / max(weights) for rule, w in zip(POPE_CATEGORIES, weights, strict=True)}
    rng = np.random.default_rng([seed, 23])  # its own stream: the example draws below stay as they were
    return [d for d in docs if rng.random() < keep[d["category"]]]


def build_examples(data_dir: str | Path, seed: int, rounds: int, lm: tuple[int, int, int] = (0, 24, 160),
                   mix: QuestionMix = QuestionMix(),
                   ) -> tuple[list[Any], dict[Kind, list[Example]], list[Scene]]:
    """Decoded train images, the examples of each kind (train rows + ``rounds`` extra draws), scenes;
    ``lm`` is the text corpus's (sequences, words per sequence, vocabulary size); absent objects
    of yes/no questions follow ``mix`` (:func:`yes_no_examples`, :func:`kept_pope_rows`)."""
    rows = load_scenes(data_dir, "train")
    images = [decode_image(r["image"], f"train/scenes.parquet:row {i}") for i, r in enumerate(rows)]
    scenes = [scene_from_row(r) for r in rows]
    index = {r["image_source"]: i for i, r in enumerate(rows)}
    stats = CooccurrenceStats.from_scenes([s.all_categories for s in scenes])
    ex: dict[Kind, list[Example]] = {k: [] for k in KINDS}
    for d in kept_pope_rows(load_task_docs(data_dir, parse_tasks("pope")[0], split="train"), mix.negative_weights, seed):
        ex["pope"].append(Example(index[d["image_source"]], pope_prompt(d), d["answer"].capitalize()))
    for d in load_task_docs(data_dir, parse_tasks("scienceqa")[0], split="train"):
        ex["mc"].append(Example(index[d["image"]["path"].removesuffix(".png")], scienceqa_prompt(d),
                                LETTERS[int(d["answer"])], str(d.get("topic") or "")))
    rng = np.random.default_rng([seed, 7])
    version = world_version(data_dir)
    render = world_render(data_dir)
    lore, aliases = lore_table(render.lore), world_aliases(render)
    for _ in range(rounds):
        for i, s in enumerate(scenes):
            ex["pope"] += yes_no_examples(i, s, stats, rng, aliases, mix)
            ex["mc"] += mc_examples(i, s, rng, version, lore)
            ex["relation"] += relation_examples(i, s, rng)
    ex["caption"] = [caption_example(i, s) for i, s in enumerate(scenes)]
    ex["short"] = [Example(e.image, e.prompt.split(" ")[3], e.answer) for e in ex["pope"][-len(ex["pope"]) // 2:]]
    ex["lm"] = lm_examples(len(scenes), *lm, seed)
    ex["fact"] = fact_examples(len(scenes), lore, seed)
    ex["alias"] = alias_examples(len(scenes), aliases or {}, seed)
    return images, ex, scenes


def derived_scene(scene: Scene, max_objects: int, rng: np.random.Generator) -> Scene:
    """A curriculum scene: at most ``max_objects`` of ``scene``'s objects, new background gradient."""
    k = min(len(scene.objects), int(rng.integers(1, max_objects + 1)))
    keep = sorted(int(i) for i in rng.choice(len(scene.objects), size=k, replace=False))
    gradient = (float(rng.uniform(-14, 14)), float(rng.uniform(-14, 14)))
    return Scene(scene.scene_type, gradient, tuple(scene.objects[i] for i in keep), scene.hidden, scene.occluders)


def curriculum_batch(scenes: Sequence[Scene], kind: Kind, max_objects: int, batch_size: int,
                     stats: CooccurrenceStats, rng: np.random.Generator,
                     version: int = 2, render: Any = None, mix: QuestionMix = QuestionMix(),
                     ) -> tuple[list[Example], list[Any], list[Scene]]:
    """``batch_size`` fresh examples of ``kind`` on re-rendered train scenes with <= ``max_objects``,
    rendered like the world's images (``render``: its :class:`~hipp_torchprune.world.scenes.SceneConfig`,
    default the plain one; its ``lore`` is what knowledge questions ask about); yes/no questions
    are asked as ``mix`` says.

    Returns the examples, their rendered images and their (derived) scenes.
    """
    from hipp_torchprune.world.scenes import SceneConfig, render_scene

    config = render if render is not None else SceneConfig()
    lore, aliases = lore_table(config.lore), world_aliases(config)

    examples: list[Example] = []
    images: list[Any] = []
    used: list[Scene] = []
    while len(examples) < batch_size:
        scene = derived_scene(scenes[int(rng.integers(len(scenes)))], max_objects, rng)
        if kind == "pope":
            cands = yes_no_examples(len(images), scene, stats, rng, aliases, mix)
        elif kind == "mc":
            cands = mc_examples(len(images), scene, rng, version, lore)
        elif kind == "short":
            cands = short_examples(len(images), scene, stats, rng, aliases, mix)
        elif kind == "relation":
            cands = relation_examples(len(images), scene, rng)
        else:
            cands = [caption_example(len(images), scene)]
        if cands:
            examples.append(cands[int(rng.integers(len(cands)))])
            images.append(render_scene(scene, config))
            used.append(scene)
    return examples, images, used


def vocabulary(examples: dict[Kind, list[Example]]) -> set[str]:
    """Every word of the examples plus all category and owner names."""
    from hipp_torchprune.models.processors import words_of

    texts = [e.prompt for v in examples.values() for e in v] + [e.answer for v in examples.values() for e in v]
    uniq = list(dict.fromkeys(texts))
    return words_of(uniq) | set(CATEGORY_NAMES) | set(OWNERS) | words_of(["Context :"])


def tokenize_pool(examples: Sequence[Example], processor: Any, n_image_tokens: int, raw: bool = False,
                  image: bool = True) -> TokenPool:
    """Tokenize examples with the processor's chat template (``<image>`` expanded) + answer + eos.

    With ``raw`` the template is just ``<image>`` tokens followed by the prompt; with ``image=False``
    it is the bare prompt (text-only rows, as a language model's pre-training text).
    """
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\x00"}]}]
    template = "\x00" if not image else "<image>\n\x00" if raw else processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)
    template = template.replace("<image>", "<image>" * n_image_tokens)
    prompts = tok([template.replace("\x00", e.prompt) for e in examples], add_special_tokens=True)["input_ids"]
    answers = tok([e.answer for e in examples], add_special_tokens=False)["input_ids"]
    seqs = [p + a + [tok.eos_token_id] for p, a in zip(prompts, answers)]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), tok.pad_token_id, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.tensor(s)
    return TokenPool(ids, torch.tensor([len(s) for s in seqs]), torch.tensor([len(p) for p in prompts]),
                     torch.tensor([e.image for e in examples]),
                     torch.tensor([e.topic in KNOWLEDGE_TOPICS for e in examples], dtype=torch.bool))


def concat_pools(a: TokenPool, b: TokenPool, pad_id: int) -> TokenPool:
    """The rows of ``a`` then those of ``b`` in one pool, right-padded with ``pad_id``."""
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])
    ids = torch.full((len(a.lengths) + len(b.lengths), width), pad_id, dtype=torch.long)
    ids[:len(a.lengths), :a.input_ids.shape[1]] = a.input_ids
    ids[len(a.lengths):, :b.input_ids.shape[1]] = b.input_ids
    return TokenPool(ids, torch.cat([a.lengths, b.lengths]), torch.cat([a.answer_start, b.answer_start]),
                     torch.cat([a.image, b.image]), torch.cat([a.knowledge, b.knowledge]))


def option_slots(pool: TokenPool, letter_ids: Sequence[int], dot_id: int,
                 max_options: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each multiple-choice option's text starts, and whether it is the gold option.

    An option is written ``"{letter}. {text}"``; its slot is the first token of ``text`` (the
    token after the letter and the dot), searched in the prompt only. The gold option is the one
    whose letter is the first answer token.

    Returns ``positions`` [N, max_options] (0 where there is no option) and ``labels``
    [N, max_options] (1 gold, 0 other option, -100 no option).
    """
    ids = pool.input_ids
    n, length = ids.shape
    positions = torch.zeros(n, max_options, dtype=torch.long)
    labels = torch.full((n, max_options), -100, dtype=torch.long)
    if length < 3:
        return positions, labels
    is_letter = torch.isin(ids[:, :-2], torch.tensor(list(letter_ids))) & (ids[:, 1:-1] == dot_id)
    within = torch.arange(length - 2).unsqueeze(0) + 2 < pool.answer_start.unsqueeze(1)
    for row, col in (is_letter & within).nonzero().tolist():
        k = int((labels[row] != -100).sum())
        if k < max_options:
            positions[row, k] = col + 2
            labels[row, k] = int(ids[row, col] == ids[row, pool.answer_start[row]])
    return positions, labels


def pixel_tensor(images: Sequence[Any], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Images as a uint8 [N, 3, H, W] tensor plus nothing else; normalize with :func:`normalize`."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP-style normalization of uint8 pixels: ``(x / 255 - mean) / std`` (float32)."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def make_batch(pool: TokenPool, idx: torch.Tensor, pixels: torch.Tensor | None, mean: list[float],
               std: list[float], images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for examples ``idx`` of a pool: trimmed ids, mask, normalized pixels, labels.

    Labels equal ``input_ids`` on the answer tokens and eos and are -100 elsewhere (the model
    shifts them internally). ``images`` (indices into ``pixels``) replaces the examples' own images;
    ``pixels=None`` gives text-only inputs (no ``pixel_values``).
    """
    lengths = pool.lengths[idx]
    width = int(lengths.max())
    ids = pool.input_ids[idx, :width]
    pos = torch.arange(width).unsqueeze(0)
    mask = (pos < lengths.unsqueeze(1)).long()
    answer = (pos >= pool.answer_start[idx].unsqueeze(1)) & mask.bool()
    labels = torch.where(answer, ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if pixels is not None:
        batch["pixel_values"] = normalize(pixels[pool.image[idx] if images is None else images], mean, std)
    return batch
