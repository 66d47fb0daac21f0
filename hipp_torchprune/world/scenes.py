"""Scene sampling and procedural rendering (PIL + numpy).

Objects sit on a coarse grid aligned with the vision patches (one object per cell), with
jittered sizes ("small" or "big") and jittered positions inside the cell.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from hipp_torchprune.errors import DataError
from hipp_torchprune.world.categories import (
    CATEGORIES,
    CATEGORY_BY_NAME,
    COMPANIONS,
    P_COMPANION,
    P_FAVOURED,
    P_HIDE,
    P_OCCLUDER,
    PALETTE,
    SCENE_TYPES,
    SHAPES,
    SceneType,
    Shape,
)

Size = Literal["small", "big"]
#: World generator version: 1 = the original world (no companions, occluders or hidden
#: objects; byte-for-byte the same scenes as before v2 existed), 2 = proving ground v2.
WorldVersion = Literal[1, 2]
WORLD_VERSIONS: tuple[int, ...] = (1, 2)

#: Probabilities of 1..6 objects per scene (most scenes have >= 3, so POPE can use them).
N_OBJECTS_P: tuple[float, ...] = (0.06, 0.10, 0.20, 0.22, 0.22, 0.20)


@dataclass(frozen=True)
class SceneConfig:
    """Geometry of rendered scenes.

    Attributes:
        image_size: side of the square RGB image in pixels.
        grid: number of cells per side; objects are placed one per cell.
        jitter: per-instance appearance variation in [0, 1] (0: every instance of a category
            and size is the same icon). Each object's colour is offset by up to ``40 * jitter``
            per channel, its icon shrunk by up to ``40 * jitter`` % and shifted inside its box,
            from a stable hash of the scene's own fields, so rendering stays a pure function of
            the scene and recognition has to be invariant to pose and tint.
        faint: probability in [0, 1] that an object is drawn faint: its colour blended 70 % into
            the background (per instance, from the same hash), so some objects are hard to see
            and a model that cannot tell has to fall back on what usually co-occurs.
        noise: standard deviation of Gaussian pixel noise added to the whole image (in 0-255
            units, seeded by a hash of the scene), so a faint object and an empty cell can look alike.
        variants: extra looks per category (0-3; see :func:`category_looks`): each instance is
            drawn in its category's own look or one of ``variants`` others (a shape and colour no
            other category uses), so which name goes with a look is a memorized many-to-one
            table and no single shape or colour tells the category.
        lore: size of the world's lore (:mod:`hipp_torchprune.world.lore`; 0 = none, world v2
            only): the knowledge questions ask about that many made-up things. Not a rendering
            option, but recorded and reproduced with them.
        aliases: made-up aliases per category (:func:`hipp_torchprune.world.lore.alias_table`;
            0 = none, world v2 only): every POPE question names its object by one of them.
        companion: probability in [0, 1] that a newly drawn object is the companion of one
            already in the scene (world v2 only; 0 = the v2 default, ``P_COMPANION``). Higher
            values make co-occurrence a stronger cue, so a model that cannot see well says "yes"
            to an absent companion more often, as a real VLM's language prior does.
        occluder: probability in [0, 1] that a scene has an occluder, which may hide a companion
            that training counts as present (world v2 only; 0 = the v2 default, ``P_OCCLUDER``).
        family: how far, in [0, 1], each icon's colour is blended toward the hue of the scene
            types that favour its category (``SceneType.family``; the mean hue for a category
            two types favour; world v2 only; 0 = off): objects that co-occur then look alike and
            differ mostly by shape, so a model that sees less sharply confuses an absent object
            with a present one of the same kind of scene, the error POPE-adversarial probes.
    """

    image_size: int = 64
    grid: int = 4
    jitter: float = 0.0
    faint: float = 0.0
    noise: float = 0.0
    variants: int = 0
    lore: int = 0
    aliases: int = 0
    companion: float = 0.0
    occluder: float = 0.0
    family: float = 0.0

    def manifest_fields(self) -> dict[str, float]:
        """The rendering options a world's manifest records: only those that are on, so worlds
        rendered without them stay byte-identical to earlier ones."""
        return {k: getattr(self, k) for k in RENDER_LIMITS if getattr(self, k) > 0}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> SceneConfig:
        """The rendering options a manifest recorded (each 0 when absent)."""
        return cls(**{k: (int if k in INTEGER_OPTIONS else float)(manifest.get(k, 0)) for k in RENDER_LIMITS})

    def validate(self) -> None:
        """Raise :class:`~hipp_torchprune.errors.DataError` for a rendering option outside its range."""
        for name, top in RENDER_LIMITS.items():
            if not 0.0 <= getattr(self, name) <= top:
                raise DataError(f"{name}={getattr(self, name)}: must be in [0, {top:g}]")


    @property
    def cell(self) -> int:
        """Side of one grid cell in pixels."""
        return self.image_size // self.grid


#: The world options of :class:`SceneConfig` a manifest records, and their upper bounds.
RENDER_LIMITS: dict[str, float] = {"jitter": 1.0, "faint": 1.0, "noise": 64.0, "variants": 3, "lore": 4000,
                                     "aliases": 200, "companion": 1.0, "occluder": 1.0,
                                     "family": 1.0}
#: Those of them that only world version 2 has (version 1 has no companions, occluders or lore).
V2_ONLY_OPTIONS: tuple[str, ...] = ("lore", "aliases", "companion", "occluder", "family")
#: Those of them that are counts.
INTEGER_OPTIONS: frozenset[str] = frozenset({"variants", "lore", "aliases"})


@dataclass(frozen=True)
class ObjectAnn:
    """Annotation of one object in a scene.

    Attributes:
        category: category name.
        row: grid row (0 = top).
        col: grid column (0 = left).
        size: "small" or "big".
        bbox: pixel box (x0, y0, x1, y1), inclusive-exclusive.
    """

    category: str
    row: int
    col: int
    size: Size
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    """One scene: its type, background gradient, visible objects, hidden objects and occluders.

    Attributes:
        scene_type: scene type name.
        gradient: background shading slopes (x, y).
        objects: the visible objects, in grid-cell order.
        hidden: objects that are in the scene but fully covered by an occluder (they are never
            asked about in POPE: neither present nor absent).
        occluders: (row, col) of every occluder cell (each hides at most one object).
    """

    scene_type: str
    gradient: tuple[float, float]
    objects: tuple[ObjectAnn, ...]
    hidden: tuple[ObjectAnn, ...] = ()
    occluders: tuple[tuple[int, int], ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names of the visible objects, in grid-cell order."""
        return tuple(o.category for o in self.objects)

    @property
    def all_categories(self) -> tuple[str, ...]:
        """Visible then hidden category names: everything the scene's annotation says is there."""
        return self.categories + tuple(o.category for o in self.hidden)


def _scene_type(name: str) -> SceneType:
    return next(s for s in SCENE_TYPES if s.name == name)


def _draw_category(rng: np.random.Generator, scene_type: SceneType, taken: list[str],
                   p_companion: float = P_COMPANION) -> str:
    """Draw one category not yet in ``taken``.

    With prob ``p_companion`` (when one is free) the companion of an object already drawn; else
    the favoured set with prob P_FAVOURED, else any category (by global weight).
    """
    free = [COMPANIONS[t] for t in taken if COMPANIONS[t] not in taken]
    if free and rng.random() < p_companion:
        return free[int(rng.integers(len(free)))]
    return _draw_favoured(rng, scene_type, taken)


def _draw_favoured(rng: np.random.Generator, scene_type: SceneType, taken: list[str]) -> str:
    """A category not in ``taken``: the favoured set with prob P_FAVOURED, else any (by weight)."""
    while True:
        if rng.random() < P_FAVOURED:
            pool = [CATEGORY_BY_NAME[n] for n in scene_type.favoured]
        else:
            pool = list(CATEGORIES)
        weights = np.array([c.weight for c in pool], dtype=np.float64)
        pick = pool[int(rng.choice(len(pool), p=weights / weights.sum()))].name
        if pick not in taken:
            return pick


def _place(rng: np.random.Generator, name: str, cell_index: int, config: SceneConfig) -> ObjectAnn:
    """An object of category ``name`` in grid cell ``cell_index``, random size and jitter."""
    cell = config.cell
    size: Size = "big" if rng.random() < 0.5 else "small"
    lo, hi = (int(0.78 * cell), int(0.95 * cell)) if size == "big" else (int(0.40 * cell), int(0.56 * cell))
    side = int(rng.integers(lo, hi + 1))
    row, col = divmod(cell_index, config.grid)
    x0 = col * cell + int(rng.integers(0, cell - side + 1))
    y0 = row * cell + int(rng.integers(0, cell - side + 1))
    return ObjectAnn(name, row, col, size, (x0, y0, x0 + side, y0 + side))


def _hidden_category(rng: np.random.Generator, scene_type: SceneType, taken: list[str]) -> str | None:
    """What an occluder hides: a missing companion of a visible object, else a missing favoured one."""
    pool = [COMPANIONS[t] for t in taken if COMPANIONS[t] not in taken]
    pool = pool or [c for c in scene_type.favoured if c not in taken]
    return pool[int(rng.integers(len(pool)))] if pool else None


def _sample_scene_v1(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """World v1: a scene type, 1-6 distinct categories, their cells, sizes and positions."""
    scene_type = SCENE_TYPES[int(rng.integers(len(SCENE_TYPES)))]
    n = 1 + int(rng.choice(len(N_OBJECTS_P), p=np.array(N_OBJECTS_P) / sum(N_OBJECTS_P)))
    cells = sorted(int(c) for c in rng.choice(config.grid * config.grid, size=n, replace=False))
    taken: list[str] = []
    objects = []
    for c in cells:
        taken.append(_draw_favoured(rng, scene_type, taken))
        objects.append(_place(rng, taken[-1], c, config))
    gradient = (float(rng.uniform(-14, 14)), float(rng.uniform(-14, 14)))
    return Scene(scene_type.name, gradient, tuple(objects))


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig(), version: WorldVersion = 2) -> Scene:
    """Sample a scene of world ``version`` (see :data:`WorldVersion`).

    Version 2: a type, 1-6 visible categories in distinct cells, maybe an occluder.

    An occluder (prob ``config.occluder`` or P_OCCLUDER) covers a free cell; with prob P_HIDE it
    hides one more object, a companion of a visible object when one is missing. Companions are
    drawn with prob ``config.companion`` or P_COMPANION.
    """
    if version == 1:
        return _sample_scene_v1(rng, config)
    scene_type = SCENE_TYPES[int(rng.integers(len(SCENE_TYPES)))]
    n = 1 + int(rng.choice(len(N_OBJECTS_P), p=np.array(N_OBJECTS_P) / sum(N_OBJECTS_P)))
    n_cells = config.grid * config.grid
    cells = [int(c) for c in rng.choice(n_cells, size=n + 1, replace=False)]
    taken: list[str] = []
    for _ in range(n):
        taken.append(_draw_category(rng, scene_type, taken, config.companion or P_COMPANION))
    objects = sorted((_place(rng, name, c, config) for name, c in zip(taken, cells[:n])),
                     key=lambda o: (o.row, o.col))
    hidden: list[ObjectAnn] = []
    occluders: list[tuple[int, int]] = []
    if rng.random() < (config.occluder or P_OCCLUDER):
        occluders.append(divmod(cells[n], config.grid))
        name = _hidden_category(rng, scene_type, taken) if rng.random() < P_HIDE else None
        if name is not None:
            hidden.append(_place(rng, name, cells[n], config))
    gradient = (float(rng.uniform(-14, 14)), float(rng.uniform(-14, 14)))
    return Scene(scene_type.name, gradient, tuple(objects), tuple(hidden), tuple(occluders))


def _draw_occluder(draw: ImageDraw.ImageDraw, row: int, col: int, config: SceneConfig) -> None:
    """A grey checkered square covering most of a cell (it hides whatever is under it)."""
    cell = config.cell
    x0, y0 = col * cell + 1, row * cell + 1
    side = cell - 2
    draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=(110, 110, 110))
    step = max(2, side // 4)
    for i in range(0, side, step):
        for j in range(0, side, step):
            if (i // step + j // step) % 2 == 0:
                draw.rectangle((x0 + i, y0 + j, min(x0 + i + step, x0 + side) - 1,
                                min(y0 + j + step, y0 + side) - 1), fill=(70, 70, 70))


def _scene_key(scene: Scene) -> str:
    return f"{scene.gradient[0]:.6f}|{scene.gradient[1]:.6f}"


def is_faint(scene: Scene, obj: ObjectAnn, faint: float) -> bool:
    """Whether ``obj`` is drawn faint in ``scene`` (probability ``faint``, from a CRC of the
    scene's gradient and the object's cell and category)."""
    if faint <= 0:
        return False
    key = f"faint|{_scene_key(scene)}|{obj.row}|{obj.col}|{obj.category}"
    return bool(np.random.default_rng(zlib.crc32(key.encode())).random() < faint)


#: Seed of the order in which unused looks are handed out as category variants.
LOOKS_SEED: int = 4242
Look = tuple[Shape, tuple[int, int, int]]


@lru_cache(maxsize=4)  # read for every drawn object: build it once
def category_looks(variants: int) -> dict[str, tuple[Look, ...]]:
    """Each category's looks: its own (shape, colour) first, then ``variants`` more, taken from
    the shape x colour pairs no category uses in a fixed shuffled order, so no look is shared."""
    own = {(c.shape, c.colour) for c in CATEGORIES}
    spare = [(s, c) for s in SHAPES for c in PALETTE if (s, c) not in own]
    order = [int(i) for i in np.random.default_rng(LOOKS_SEED).permutation(len(spare))]
    n = len(CATEGORIES)
    return {cat.name: ((cat.shape, cat.colour), *(spare[order[j + n * v]] for v in range(variants)))
            for j, cat in enumerate(CATEGORIES)}


def instance_look(scene: Scene, obj: ObjectAnn, variants: int) -> Look:
    """The (shape, colour) ``obj`` is drawn in: one of its category's ``1 + variants`` looks,
    uniformly, from a CRC of the scene's gradient and the object's cell and category."""
    looks = category_looks(variants)[obj.category]
    if variants <= 0:
        return looks[0]
    key = f"look|{_scene_key(scene)}|{obj.row}|{obj.col}|{obj.category}"
    return looks[int(np.random.default_rng(zlib.crc32(key.encode())).integers(len(looks)))]


def family_colour(colour: tuple[int, int, int], category: str, family: float) -> tuple[int, int, int]:
    """``colour`` blended by ``family`` toward the mean ``SceneType.family`` hue of the scene types
    that favour ``category`` (unchanged when ``family`` is 0 or no type favours it)."""
    hues = [t.family for t in SCENE_TYPES if category in t.favoured]
    if family <= 0 or not hues:
        return colour
    hue = np.mean(np.array(hues, dtype=np.float64), axis=0)
    return tuple(round((1 - family) * c + family * h) for c, h in zip(colour, hue, strict=True))  # type: ignore[return-value]


def instance_appearance(scene: Scene, obj: ObjectAnn, jitter: float,
                        colour: tuple[int, int, int] | None = None) -> tuple[tuple[int, int, int, int],
                                                                            tuple[int, int, int]]:
    """The drawn box and colour of ``obj`` in ``scene`` under ``jitter`` (see :class:`SceneConfig`),
    starting from ``colour`` (default: the category's).

    Deterministic: seeded by a CRC of the scene's gradient and the object's cell and category
    (never Python's salted ``hash``). ``jitter = 0`` gives the annotation's box and the colour.
    """
    colour = colour or CATEGORY_BY_NAME[obj.category].colour
    if jitter <= 0:
        return obj.bbox, colour
    key = f"{_scene_key(scene)}|{obj.row}|{obj.col}|{obj.category}"
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    x0, y0, x1, _ = obj.bbox  # square boxes
    side = x1 - x0
    new = max(4, round(side * (1.0 - 0.4 * jitter * rng.random())))
    dx, dy = (int(v) for v in rng.integers(0, side - new + 1, size=2))
    tint = rng.integers(-int(40 * jitter), int(40 * jitter) + 1, size=3)
    colour = tuple(int(np.clip(c + t, 0, 255)) for c, t in zip(colour, tint))
    return (x0 + dx, y0 + dy, x0 + dx + new, y0 + dy + new), colour  # type: ignore[return-value]


def _draw_icon(draw: ImageDraw.ImageDraw, obj: ObjectAnn, box: tuple[int, int, int, int] | None = None,
               colour: tuple[int, int, int] | None = None, shape: Shape | None = None) -> None:
    """Draw one object's icon inside ``box`` (default: its bounding box) in ``colour`` and
    ``shape`` (default: the category's)."""
    cat = CATEGORY_BY_NAME[obj.category]
    x0, y0, x1, y1 = box or obj.bbox
    s = x1 - x0
    fill = colour or cat.colour
    shape = shape or cat.shape
    box = (x0, y0, x1 - 1, y1 - 1)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + s / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif shape == "diamond":
        cx, cy = x0 + s / 2, y0 + s / 2
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, s // 4))
    elif shape == "plus":
        t = max(2, s // 3)
        a = x0 + (s - t) // 2
        draw.rectangle((a, y0, a + t - 1, y1 - 1), fill=fill)
        b = y0 + (s - t) // 2
        draw.rectangle((x0, b, x1 - 1, b + t - 1), fill=fill)
    elif shape == "hbar":
        t = max(2, int(s * 0.45))
        b = y0 + (s - t) // 2
        draw.rectangle((x0, b, x1 - 1, b + t - 1), fill=fill)
    elif shape == "vbar":
        t = max(2, int(s * 0.45))
        a = x0 + (s - t) // 2
        draw.rectangle((a, y0, a + t - 1, y1 - 1), fill=fill)
    else:  # pragma: no cover - guarded by the Shape literal
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, config: SceneConfig = SceneConfig()) -> Image.Image:
    """Render a scene to an RGB PIL image (smooth tinted background, one icon per object)."""
    size = config.image_size
    base = np.array(_scene_type(scene.scene_type).background, dtype=np.float32)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    shade = scene.gradient[0] * ramp[None, :] + scene.gradient[1] * ramp[:, None]
    pixels = np.clip(base[None, None, :] + shade[:, :, None], 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        shape, base = instance_look(scene, obj, config.variants)
        base = family_colour(base, obj.category, config.family)
        box, colour = instance_appearance(scene, obj, config.jitter, base)
        if is_faint(scene, obj, config.faint):  # 70 % background at the icon's centre
            under = pixels[min((box[1] + box[3]) // 2, size - 1), min((box[0] + box[2]) // 2, size - 1)]
            colour = tuple(int(round(0.3 * c + 0.7 * float(b))) for c, b in zip(colour, under))
        _draw_icon(draw, obj, box, colour, shape)
    for row, col in scene.occluders:
        _draw_occluder(draw, row, col, config)
    if config.noise > 0:
        rng = np.random.default_rng(zlib.crc32(f"noise|{_scene_key(scene)}|{len(scene.objects)}".encode()))
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, config.noise, (size, size, 3))
        image = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), mode="RGB")
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG bytes deterministically (no metadata, fixed compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
