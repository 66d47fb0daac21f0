"""POPE protocol (Li et al. 2023) on annotated scenes.

Each image with at least 3 distinct objects contributes 3 present objects ("yes"), each paired
with one absent object ("no") chosen by the split's rule:

* ``random``: uniformly among the absent categories;
* ``popular``: the most frequent absent categories (world-wide frequency);
* ``adversarial``: the absent categories co-occurring most with the image's present objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hipp_torchprune.world.categories import CATEGORY_NAMES

PopeCategory = Literal["random", "popular", "adversarial"]
POPE_CATEGORIES: tuple[PopeCategory, ...] = ("random", "popular", "adversarial")
POPE_TEMPLATE = "Is there a {object} in the image?"
N_PRESENT = 3


@dataclass(frozen=True)
class CooccurrenceStats:
    """Category frequencies (scenes containing each category) and pairwise co-occurrence counts."""

    frequency: dict[str, int]
    cooccurrence: dict[tuple[str, str], int]

    @classmethod
    def from_scenes(cls, scenes: Sequence[Sequence[str]]) -> CooccurrenceStats:
        """Count frequencies and co-occurrences over scenes given as category-name lists."""
        freq = {c: 0 for c in CATEGORY_NAMES}
        cooc: dict[tuple[str, str], int] = {}
        for cats in scenes:
            uniq = sorted(set(cats))
            for a in uniq:
                freq[a] = freq.get(a, 0) + 1
                for b in uniq:
                    if a != b:
                        cooc[(a, b)] = cooc.get((a, b), 0) + 1
        return cls(freq, cooc)


def popular_negatives(present: Sequence[str], stats: CooccurrenceStats, k: int,
                      exclude: Sequence[str] = ()) -> list[str]:
    """The ``k`` most frequent categories absent from ``present`` and ``exclude`` (ties by name)."""
    absent = [c for c in CATEGORY_NAMES if c not in set(present) | set(exclude)]
    return sorted(absent, key=lambda c: (-stats.frequency.get(c, 0), c))[:k]


def adversarial_negatives(present: Sequence[str], stats: CooccurrenceStats, k: int,
                          exclude: Sequence[str] = ()) -> list[str]:
    """The ``k`` categories absent from ``present`` and ``exclude`` with the highest summed
    co-occurrence with ``present``."""
    pres = set(present)
    absent = [c for c in CATEGORY_NAMES if c not in pres | set(exclude)]

    def score(c: str) -> int:
        return sum(stats.cooccurrence.get((p, c), 0) for p in pres)

    return sorted(absent, key=lambda c: (-score(c), -stats.frequency.get(c, 0), c))[:k]


def random_negatives(present: Sequence[str], rng: np.random.Generator, k: int,
                     exclude: Sequence[str] = ()) -> list[str]:
    """``k`` distinct categories drawn uniformly among those absent from ``present`` and ``exclude``."""
    absent = [c for c in CATEGORY_NAMES if c not in set(present) | set(exclude)]
    return [absent[int(i)] for i in rng.choice(len(absent), size=k, replace=False)]


def pope_pairs(
    present: Sequence[str], stats: CooccurrenceStats, rng: np.random.Generator,
    hidden: Sequence[str] = (),
) -> dict[PopeCategory, list[tuple[str, str]]]:
    """(present, absent) pairs for each POPE split for one image; empty if < 3 visible objects.

    The same 3 present objects (sampled once) are shared by the three splits, as in POPE.
    ``hidden`` objects (covered by an occluder) are neither asked as present nor as absent.
    """
    uniq = list(dict.fromkeys(present))
    if len(uniq) < N_PRESENT:
        return {c: [] for c in POPE_CATEGORIES}
    chosen = [uniq[int(i)] for i in rng.choice(len(uniq), size=N_PRESENT, replace=False)]
    negatives: dict[PopeCategory, list[str]] = {
        "random": random_negatives(uniq, rng, N_PRESENT, hidden),
        "popular": popular_negatives(uniq, stats, N_PRESENT, hidden),
        "adversarial": adversarial_negatives(uniq, stats, N_PRESENT, hidden),
    }
    return {cat: list(zip(chosen, negatives[cat])) for cat in POPE_CATEGORIES}


def pope_question(obj: str) -> str:
    """The POPE question for one object name."""
    return POPE_TEMPLATE.format(object=obj)
