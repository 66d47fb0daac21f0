"""Scene sampling and procedural rendering (PIL + numpy).

Objects sit on a coarse grid aligned with the vision patches (one object per cell), with
jittered sizes ("small" or "big") and jittered positions inside the cell.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from hipp_torchprune.world.categories import (
    CATEGORIES,
    CATEGORY_BY_NAME,
    P_FAVOURED,
    SCENE_TYPES,
    SceneType,
)

Size = Literal["small", "big"]

#: Probabilities of 1..6 objects per scene (most scenes have >= 3, so POPE can use them).
N_OBJECTS_P: tuple[float, ...] = (0.06, 0.10, 0.20, 0.22, 0.22, 0.20)


@dataclass(frozen=True)
class SceneConfig:
    """Geometry of rendered scenes.

    Attributes:
        image_size: side of the square RGB image in pixels.
        grid: number of cells per side; objects are placed one per cell.
    """

    image_size: int = 64
    grid: int = 4

    @property
    def cell(self) -> int:
        """Side of one grid cell in pixels."""
        return self.image_size // self.grid


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
    """One scene: its type, background gradient and objects (in grid-cell order)."""

    scene_type: str
    gradient: tuple[float, float]
    objects: tuple[ObjectAnn, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names present in the scene, in grid-cell order."""
        return tuple(o.category for o in self.objects)


def _scene_type(name: str) -> SceneType:
    return next(s for s in SCENE_TYPES if s.name == name)


def _draw_category(rng: np.random.Generator, scene_type: SceneType, taken: set[str]) -> str:
    """Draw one category not yet in ``taken``: favoured set with prob P_FAVOURED, else global."""
    while True:
        if rng.random() < P_FAVOURED:
            pool = [CATEGORY_BY_NAME[n] for n in scene_type.favoured]
        else:
            pool = list(CATEGORIES)
        weights = np.array([c.weight for c in pool], dtype=np.float64)
        pick = pool[int(rng.choice(len(pool), p=weights / weights.sum()))].name
        if pick not in taken:
            return pick


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Sample a scene: a scene type, 1-6 distinct categories, their cells, sizes and positions."""
    scene_type = SCENE_TYPES[int(rng.integers(len(SCENE_TYPES)))]
    n = 1 + int(rng.choice(len(N_OBJECTS_P), p=np.array(N_OBJECTS_P) / sum(N_OBJECTS_P)))
    cells = sorted(int(c) for c in rng.choice(config.grid * config.grid, size=n, replace=False))
    taken: set[str] = set()
    objects = []
    cell = config.cell
    for c in cells:
        name = _draw_category(rng, scene_type, taken)
        taken.add(name)
        size: Size = "big" if rng.random() < 0.5 else "small"
        lo, hi = (int(0.78 * cell), int(0.95 * cell)) if size == "big" else (int(0.40 * cell), int(0.56 * cell))
        side = int(rng.integers(lo, hi + 1))
        row, col = divmod(c, config.grid)
        x0 = col * cell + int(rng.integers(0, cell - side + 1))
        y0 = row * cell + int(rng.integers(0, cell - side + 1))
        objects.append(ObjectAnn(name, row, col, size, (x0, y0, x0 + side, y0 + side)))
    gradient = (float(rng.uniform(-14, 14)), float(rng.uniform(-14, 14)))
    return Scene(scene_type.name, gradient, tuple(objects))


def _draw_icon(draw: ImageDraw.ImageDraw, obj: ObjectAnn) -> None:
    """Draw one object's icon inside its bounding box."""
    cat = CATEGORY_BY_NAME[obj.category]
    x0, y0, x1, y1 = obj.bbox
    s = x1 - x0
    fill = cat.colour
    box = (x0, y0, x1 - 1, y1 - 1)
    if cat.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif cat.shape == "square":
        draw.rectangle(box, fill=fill)
    elif cat.shape == "triangle":
        draw.polygon([(x0 + s / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif cat.shape == "diamond":
        cx, cy = x0 + s / 2, y0 + s / 2
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=fill)
    elif cat.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, s // 4))
    elif cat.shape == "plus":
        t = max(2, s // 3)
        a = x0 + (s - t) // 2
        draw.rectangle((a, y0, a + t - 1, y1 - 1), fill=fill)
        b = y0 + (s - t) // 2
        draw.rectangle((x0, b, x1 - 1, b + t - 1), fill=fill)
    elif cat.shape == "hbar":
        t = max(2, int(s * 0.45))
        b = y0 + (s - t) // 2
        draw.rectangle((x0, b, x1 - 1, b + t - 1), fill=fill)
    elif cat.shape == "vbar":
        t = max(2, int(s * 0.45))
        a = x0 + (s - t) // 2
        draw.rectangle((a, y0, a + t - 1, y1 - 1), fill=fill)
    else:  # pragma: no cover - guarded by the Shape literal
        raise ValueError(f"unknown shape {cat.shape!r}")


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
        _draw_icon(draw, obj)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG bytes deterministically (no metadata, fixed compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
