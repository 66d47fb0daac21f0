"""ScienceQA-style multiple-choice questions on annotated scenes.

Question kinds need the image (presence, counting, size attribute, spatial relations, size
comparisons), for ``owner`` a text context (the ``hint``) as well, and for ``knowledge`` and
``places`` only world knowledge about the categories (which lives in the language model's
weights, not in the image). Options are 2 to 5 and the answer is the index of the correct option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from hipp_torchprune.world.categories import CATEGORY_NAMES, PROPERTIES
from hipp_torchprune.world.lore import LoreThing
from hipp_torchprune.world.scenes import Scene

Generator = Callable[[Scene, np.random.Generator], "MCQuestion | None"]

OWNERS: tuple[str, ...] = ("Anna", "Ben", "Cara", "Dan", "Eva")


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question in lmms-lab/ScienceQA form.

    Attributes:
        question: question text.
        choices: option texts (2 to 5).
        answer: index of the correct option.
        hint: text context ("" when the question needs none).
        topic: question kind ("counting", "attributes", "spatial", ...).
        category: ScienceQA-style category label.
        skill: ScienceQA-style skill label.
        solution: a short explanation of the answer.
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    hint: str
    topic: str
    category: str
    skill: str
    solution: str


def _shuffled(rng: np.random.Generator, correct: str, others: list[str]) -> tuple[tuple[str, ...], int]:
    options = [correct, *others]
    order = [int(i) for i in rng.permutation(len(options))]
    shuffled = tuple(options[i] for i in order)
    return shuffled, shuffled.index(correct)


def _absent(scene: Scene, rng: np.random.Generator, k: int) -> list[str]:
    absent = [c for c in CATEGORY_NAMES if c not in scene.all_categories]
    return [absent[int(i)] for i in rng.choice(len(absent), size=k, replace=False)]


def q_presence(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """Which of the listed objects is in the image (one present, 1-4 absent)."""
    target = scene.categories[int(rng.integers(len(scene.categories)))]
    choices, answer = _shuffled(rng, target, _absent(scene, rng, int(rng.integers(1, 5))))
    return MCQuestion("Which of these objects is in the image?", choices, answer, "", "objects",
                      "Identifying objects", "Find an object in a picture",
                      f"The {target} is in the image.")


def q_count(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """How many objects the image shows (2-4 numeric options, ascending)."""
    n = len(scene.objects)
    others = [str(int(v)) for v in rng.choice([v for v in range(1, 7) if v != n],
                                               size=int(rng.integers(1, 4)), replace=False)]
    choices = tuple(sorted([str(n), *others], key=int))
    return MCQuestion("How many objects are in the image?", choices, choices.index(str(n)), "",
                      "counting", "Counting objects", "Count objects in a picture",
                      f"There are {n} objects in the image.")


def q_size(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """Size attribute of a named present object (small / big)."""
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    choices, answer = _shuffled(rng, obj.size, ["big" if obj.size == "small" else "small"])
    return MCQuestion(f"What size is the {obj.category}?", choices, answer, "", "attributes",
                      "Object attributes", "Describe the size of an object",
                      f"The {obj.category} is {obj.size}.")


def q_spatial(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """Left/right or above/below relation between two present objects."""
    objs = scene.objects
    if len(objs) < 2:
        return None
    i, j = (int(v) for v in rng.choice(len(objs), size=2, replace=False))
    a, b = objs[i], objs[j]
    horizontal = a.col != b.col and (a.row == b.row or rng.random() < 0.5)
    if horizontal:
        correct = "left" if a.col < b.col else "right"
        choices, answer = _shuffled(rng, correct, ["right" if correct == "left" else "left"])
        q = f"Is the {a.category} to the left or to the right of the {b.category}?"
        sol = f"The {a.category} is to the {correct} of the {b.category}."
    elif a.row != b.row:
        correct = "above" if a.row < b.row else "below"
        choices, answer = _shuffled(rng, correct, ["below" if correct == "above" else "above"])
        q = f"Is the {a.category} above or below the {b.category}?"
        sol = f"The {a.category} is {correct} the {b.category}."
    else:
        return None
    return MCQuestion(q, choices, answer, "", "spatial", "Spatial relations",
                      "Describe where objects are", sol)


def q_compare(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """Which of two present objects of different sizes is bigger (or smaller)."""
    big = [o.category for o in scene.objects if o.size == "big"]
    small = [o.category for o in scene.objects if o.size == "small"]
    if not big or not small:
        return None
    b = big[int(rng.integers(len(big)))]
    s = small[int(rng.integers(len(small)))]
    if rng.random() < 0.5:
        choices, answer = _shuffled(rng, b, [s])
        return MCQuestion("Which object is bigger?", choices, answer, "", "comparison",
                          "Comparing sizes", "Compare the sizes of objects",
                          f"The {b} is bigger than the {s}.")
    choices, answer = _shuffled(rng, s, [b])
    return MCQuestion("Which object is smaller?", choices, answer, "", "comparison",
                      "Comparing sizes", "Compare the sizes of objects",
                      f"The {s} is smaller than the {b}.")


def q_owner(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """Text + image: the hint says who has which object; whose object is in the image."""
    k = int(rng.integers(2, 4))
    owners = [OWNERS[int(i)] for i in rng.choice(len(OWNERS), size=k, replace=False)]
    present = scene.categories[int(rng.integers(len(scene.categories)))]
    things = [present, *_absent(scene, rng, k - 1)]
    order = [int(i) for i in rng.permutation(k)]
    things = [things[i] for i in order]
    hint = " ".join(f"{o} has the {t}." for o, t in zip(owners, things))
    correct = owners[things.index(present)]
    return MCQuestion("Whose object is in the image?", tuple(owners), owners.index(correct), hint,
                      "reading", "Reading and looking", "Combine a text with a picture",
                      f"{correct} has the {present}, which is in the image.")


PLACE_PROPERTIES: tuple[str, ...] = ("kitchen", "street", "office", "garden")


def _q_property(rng: np.random.Generator, names: tuple[str, ...], topic: str) -> MCQuestion:
    """Which of 2-4 categories has a property (exactly one does); no image needed."""
    prop = names[int(rng.integers(len(names)))]
    question, members = PROPERTIES[prop]
    have = sorted(members)
    correct = have[int(rng.integers(len(have)))]
    lacking = [c for c in CATEGORY_NAMES if c not in members]
    others = [lacking[int(i)] for i in rng.choice(len(lacking), size=int(rng.integers(1, 4)), replace=False)]
    choices, answer = _shuffled(rng, correct, others)
    return MCQuestion(question, choices, answer, "", topic, "World knowledge",
                      "Know what things are", f"The {correct} is the one ({prop}).")


def q_knowledge(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """World knowledge: which option is an animal / can be eaten / has wheels / ... ."""
    names = tuple(p for p in PROPERTIES if p not in PLACE_PROPERTIES)
    return _q_property(rng, names, "knowledge")


def q_places(scene: Scene, rng: np.random.Generator) -> MCQuestion | None:
    """World knowledge: which option is usually found in a kitchen / street / office / garden."""
    return _q_property(rng, PLACE_PROPERTIES, "places")


#: Question generators and their sampling weights.
GENERATORS: tuple[tuple[Generator, float], ...] = (
    (q_presence, 0.16),
    (q_count, 0.10),
    (q_size, 0.10),
    (q_spatial, 0.08),
    (q_compare, 0.10),
    (q_owner, 0.10),
    (q_knowledge, 0.22),
    (q_places, 0.14),
)


#: World v1's generators and weights (image and hint kinds only).
GENERATORS_V1: tuple[tuple[Generator, float], ...] = (
    (q_presence, 0.25),
    (q_count, 0.15),
    (q_size, 0.15),
    (q_spatial, 0.15),
    (q_compare, 0.15),
    (q_owner, 0.15),
)

#: In a world with lore, the share of knowledge questions still asked about the categories.
P_CATEGORY_KNOWLEDGE: float = 0.25


def q_lore(scene: Scene, rng: np.random.Generator, lore: Sequence[LoreThing], places: bool) -> MCQuestion | None:
    """World knowledge about the lore (:mod:`hipp_torchprune.world.lore`): which of 2-4 made-up
    things has a property (exactly one does); a share :data:`P_CATEGORY_KNOWLEDGE` of the questions
    is still asked about the categories. ``places`` picks the place properties, else the others."""
    names = PLACE_PROPERTIES if places else tuple(p for p in PROPERTIES if p not in PLACE_PROPERTIES)
    topic = "places" if places else "knowledge"
    if rng.random() < P_CATEGORY_KNOWLEDGE:
        return _q_property(rng, names, topic)
    prop = names[int(rng.integers(len(names)))]
    have = [t.name for t in lore if prop in t.properties]
    lacking = [t.name for t in lore if prop not in t.properties]
    if not have or not lacking:
        return None
    correct = have[int(rng.integers(len(have)))]
    k = min(len(lacking), int(rng.integers(1, 4)))
    others = [lacking[int(i)] for i in rng.choice(len(lacking), size=k, replace=False)]
    choices, answer = _shuffled(rng, correct, others)
    return MCQuestion(PROPERTIES[prop][0], choices, answer, "", topic, "World knowledge",
                      "Know what things are", f"The {correct} is the one ({prop}).")


def generators(version: int = 2, lore: Sequence[LoreThing] = ()) -> tuple[tuple[Generator, float], ...]:
    """The question generators and weights of world ``version`` (1 or 2); with ``lore`` (version 2
    only), the knowledge and places kinds ask about it (:func:`q_lore`)."""
    if version == 1:
        return GENERATORS_V1
    if not lore:
        return GENERATORS
    swap = {q_knowledge: partial(q_lore, lore=tuple(lore), places=False),
            q_places: partial(q_lore, lore=tuple(lore), places=True)}
    return tuple((swap.get(gen, gen), w) for gen, w in GENERATORS)


def sample_questions(scene: Scene, rng: np.random.Generator, k: int, version: int = 2,
                     lore: Sequence[LoreThing] = ()) -> list[MCQuestion]:
    """Up to ``k`` questions of distinct kinds for one scene, drawn by the generator weights."""
    table = generators(version, lore)
    weights = np.array([w for _, w in table])
    order = [int(i) for i in rng.choice(len(table), size=len(table), replace=False,
                                        p=weights / weights.sum())]
    out: list[MCQuestion] = []
    for i in order:
        if len(out) >= k:
            break
        q = table[i][0](scene, rng)
        if q is not None:
            out.append(q)
    return out
