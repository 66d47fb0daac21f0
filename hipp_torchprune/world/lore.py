"""World lore: a fact base of made-up things, larger than the demo model's hidden size.

The 20 categories' 14 properties are a 20 x 14 table that a model can store in its word
embeddings or read off with one attention head, so pruning never has to touch it. A real
language model knows far more facts than it has dimensions, and they live in its MLPs. The lore
is the proving ground's stand-in: ``n`` made-up things (``"tobaku"``, ``"melisa"``, ...), each
with random flags for the same 14 properties ("an animal", "found in a kitchen", ...). With more
things than hidden dimensions, which thing has which property is not a linear function of
fixed word vectors, so it has to be memorized in MLP rows.

The lore is the same in every world (one fixed seed, :data:`LORE_SEED`): it is knowledge about
the world, not about one rendering of it, so a held-out world asks new questions about the same
things. A world with lore asks its ScienceQA-style knowledge questions about it
(:func:`hipp_torchprune.world.scienceqa.generators`) and the demo trainer states its facts as
training text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hipp_torchprune.world.categories import CATEGORY_NAMES, PROPERTY_NAMES

#: Seed of the lore table (every world with lore shares it).
LORE_SEED: int = 20261201
#: Probability that a lore thing has each property.
P_PROPERTY: float = 0.25
#: Largest lore size (distinct names of three consonant-vowel syllables stay plentiful).
MAX_LORE: int = 4000
#: Most aliases per category (:func:`alias_table`).
MAX_ALIASES: int = 200
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class LoreThing:
    """One made-up thing of the lore.

    Attributes:
        name: its one-word made-up name (three consonant-vowel syllables).
        properties: the property names (keys of ``categories.PROPERTIES``) it has.
    """

    name: str
    properties: frozenset[str]


def lore_names(n: int, seed: int = LORE_SEED) -> tuple[str, ...]:
    """``n`` distinct made-up names (no category name among them), a pure function of the seed."""
    rng = np.random.default_rng([seed, 0])
    taken = set(CATEGORY_NAMES)
    names: list[str] = []
    while len(names) < n:
        name = "".join(_CONSONANTS[int(rng.integers(len(_CONSONANTS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
                       for _ in range(3))
        if name not in taken:
            taken.add(name)
            names.append(name)
    return tuple(names)


@lru_cache(maxsize=8)  # read on every training batch: build it once
def lore_table(n: int, seed: int = LORE_SEED) -> tuple[LoreThing, ...]:
    """The first ``n`` things of the lore, each property present with probability
    :data:`P_PROPERTY` (a pure function of ``n`` and the seed; a longer table extends a shorter one)."""
    if not 0 <= n <= MAX_LORE:
        raise ValueError(f"lore size {n}: must be in [0, {MAX_LORE}]")
    names = lore_names(n, seed)
    flags = np.random.default_rng([seed, 1]).random((MAX_LORE, len(PROPERTY_NAMES)))[:n] < P_PROPERTY
    return tuple(LoreThing(name, frozenset(p for p, on in zip(PROPERTY_NAMES, row) if on))
                 for name, row in zip(names, flags))


def fact_sentence(thing: LoreThing) -> str:
    """The thing's properties as a training answer: property names in table order, then ``.``
    (``"nothing ."`` for a thing without any)."""
    words = [p for p in PROPERTY_NAMES if p in thing.properties]
    return " ".join(words or ["nothing"]) + " ."


@lru_cache(maxsize=8)  # read for every POPE question: build it once
def alias_table(per_category: int, seed: int = LORE_SEED) -> dict[str, tuple[str, ...]]:
    """``per_category`` made-up aliases of each category (``{"cup": ("bomazi", ...), ...}``).

    A world with aliases asks its POPE questions by alias ("Is there a bomazi in the image?"), so
    grounding a question needs the alias -> category table, which, with far more aliases than
    hidden dimensions, has to be memorized in MLP rows, as a real language model's word meanings
    are. The names follow the :data:`MAX_LORE` lore names of the same seed, so no alias is a lore
    thing or a category; a larger table extends a smaller one. The result is cached: do not mutate it.
    """
    if not 0 <= per_category <= MAX_ALIASES:
        raise ValueError(f"aliases per category {per_category}: must be in [0, {MAX_ALIASES}]")
    names = lore_names(MAX_LORE + MAX_ALIASES * len(CATEGORY_NAMES), seed)[MAX_LORE:]
    n = len(CATEGORY_NAMES)
    return {c: tuple(names[i + n * k] for k in range(per_category)) for i, c in enumerate(CATEGORY_NAMES)}


def named_by(category: str, aliases: Mapping[str, Sequence[str]] | None, rng: np.random.Generator) -> str:
    """The word a question uses for ``category``: one of its aliases drawn from ``rng``, or the
    category name itself without ``aliases`` (then no draw is made, so worlds without aliases
    stay byte-identical)."""
    return category if not aliases else aliases[category][int(rng.integers(len(aliases[category])))]


def alias_sentence(category: str) -> str:
    """The answer of a stated alias (``Alias : bomazi`` -> ``cup .``)."""
    return f"{category} ."
