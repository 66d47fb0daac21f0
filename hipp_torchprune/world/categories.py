"""Object categories and scene types of the synthetic proving-ground world.

Each category is a single-word object name drawn as a distinct icon (shape x colour), so that
presence is a per-patch detection problem. Scene types favour a handful of categories, which
makes co-occurrence (POPE adversarial negatives) meaningful; the global ``weight`` of each
category is skewed, which makes frequency (POPE popular negatives) meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Shape = Literal["circle", "square", "triangle", "diamond", "ring", "plus", "hbar", "vbar"]


@dataclass(frozen=True)
class Category:
    """One object category.

    Attributes:
        name: single-word object name used in questions ("apple").
        shape: icon shape drawn for the object.
        colour: RGB fill colour of the icon.
        weight: global sampling weight (skewed across categories).
    """

    name: str
    shape: Shape
    colour: tuple[int, int, int]
    weight: float


@dataclass(frozen=True)
class SceneType:
    """A scene type: a background tint and the categories it favours.

    Attributes:
        name: scene type name ("kitchen").
        background: RGB base colour of the background.
        favoured: category names that appear preferentially in this scene type.
        family: RGB hue its favoured categories' icons lean toward when a world renders with
            ``family`` > 0 (``SceneConfig.family``): things of one kind of scene look alike.
    """

    name: str
    background: tuple[int, int, int]
    favoured: tuple[str, ...]
    family: tuple[int, int, int] = (128, 128, 128)


RED = (220, 30, 30)
YELLOW = (240, 220, 40)
WHITE = (245, 245, 245)
GREEN = (30, 190, 50)
GRAY = (150, 150, 150)
BLUE = (40, 90, 240)
CYAN = (40, 220, 230)
BROWN = (150, 85, 30)
ORANGE = (255, 140, 0)
PURPLE = (160, 50, 200)
PINK = (255, 120, 190)
#: Every icon colour, in a fixed order (category variants draw their looks from these).
PALETTE: tuple[tuple[int, int, int], ...] = (RED, YELLOW, WHITE, GREEN, GRAY, BLUE, CYAN, BROWN, ORANGE, PURPLE, PINK)
#: Every icon shape, in a fixed order.
SHAPES: tuple[Shape, ...] = ("circle", "square", "triangle", "diamond", "ring", "plus", "hbar", "vbar")

#: The 20 categories; weights are Zipf-like so frequencies are skewed.
CATEGORIES: tuple[Category, ...] = (
    Category("cup", "square", WHITE, 10.0),
    Category("apple", "circle", RED, 8.0),
    Category("dog", "circle", BROWN, 7.0),
    Category("car", "square", BLUE, 6.0),
    Category("bird", "diamond", BLUE, 5.0),
    Category("book", "square", BROWN, 4.5),
    Category("tree", "triangle", GREEN, 4.0),
    Category("bottle", "vbar", GREEN, 3.5),
    Category("phone", "vbar", PURPLE, 3.0),
    Category("banana", "hbar", YELLOW, 2.7),
    Category("sign", "triangle", RED, 2.4),
    Category("clock", "circle", WHITE, 2.2),
    Category("flower", "plus", PINK, 2.0),
    Category("laptop", "hbar", GRAY, 1.8),
    Category("plate", "ring", WHITE, 1.6),
    Category("bus", "square", YELLOW, 1.4),
    Category("lamp", "triangle", ORANGE, 1.3),
    Category("knife", "vbar", GRAY, 1.2),
    Category("bicycle", "ring", CYAN, 1.1),
    Category("ball", "circle", ORANGE, 1.0),
)

#: Scene types; each favours six categories (with some overlap between types).
SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType("kitchen", (70, 55, 45), ("cup", "apple", "banana", "bottle", "knife", "plate"), (235, 190, 120)),
    SceneType("street", (55, 55, 60), ("car", "bus", "sign", "bicycle", "dog", "bird"), (80, 130, 230)),
    SceneType("office", (40, 48, 70), ("cup", "book", "phone", "laptop", "clock", "lamp"), (210, 110, 210)),
    SceneType("garden", (35, 65, 40), ("tree", "flower", "bird", "dog", "ball", "apple"), (140, 230, 80)),
)

#: Probability that an object is drawn from the scene type's favoured set.
P_FAVOURED: float = 0.85

CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}

#: Each category's companion: the object that a scene with it usually also has (visible, or
#: hidden behind an occluder). Companions make co-occurrence strong, so a language prior can say
#: "yes" to an absent companion, which is what POPE-adversarial negatives probe.
COMPANIONS: dict[str, str] = {
    "cup": "plate", "plate": "cup", "knife": "apple", "apple": "knife", "bottle": "banana",
    "banana": "bottle", "car": "sign", "sign": "car", "bus": "bicycle", "bicycle": "bus",
    "book": "lamp", "lamp": "book", "phone": "laptop", "laptop": "phone", "tree": "bird",
    "bird": "tree", "dog": "ball", "ball": "dog", "flower": "tree", "clock": "cup",
}

#: Probability that a newly drawn object is the companion of one already in the scene.
P_COMPANION: float = 0.5
#: Probability that a scene has an occluder (a grey patterned square covering one cell).
P_OCCLUDER: float = 0.4
#: Probability that an occluder hides an object (a companion of a visible one when possible).
P_HIDE: float = 0.6

#: World knowledge about the categories (answers live in the language model, not the image):
#: property name -> (question, categories that have it).
PROPERTIES: dict[str, tuple[str, frozenset[str]]] = {
    "animal": ("Which of these is an animal?", frozenset({"dog", "bird"})),
    "edible": ("Which of these can be eaten?", frozenset({"apple", "banana"})),
    "plant": ("Which of these is a plant?", frozenset({"tree", "flower"})),
    "wheels": ("Which of these has wheels?", frozenset({"car", "bus", "bicycle"})),
    "electric": ("Which of these needs electricity?", frozenset({"phone", "laptop", "lamp", "clock"})),
    "reading": ("Which of these has words to read?", frozenset({"book", "sign"})),
    "kitchen": ("Which of these is usually found in a kitchen?",
                frozenset({"cup", "plate", "knife", "bottle", "banana", "apple"})),
    "street": ("Which of these is usually found on a street?", frozenset({"car", "bus", "sign", "bicycle"})),
    "office": ("Which of these is usually found in an office?",
               frozenset({"book", "phone", "laptop", "lamp", "clock"})),
    "garden": ("Which of these is usually found in a garden?", frozenset({"tree", "flower", "ball", "bird", "dog"})),
    "toy": ("Which of these is a toy?", frozenset({"ball"})),
    "tool": ("Which of these is used to cut things?", frozenset({"knife"})),
    "drink": ("Which of these holds a drink?", frozenset({"cup", "bottle"})),
    "time": ("Which of these tells the time?", frozenset({"clock", "phone"})),
}
PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTIES)
