"""Calibration samples: ``(image, prompt)`` pairs from a data directory or random images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hipp_torchprune.errors import CalibrationError

#: Prompts used with random calibration images (tiny models only).
RANDOM_PROMPTS: tuple[str, ...] = (
    "Is there a red object in the image?\nAnswer the question using a single word or phrase.",
    "How many objects are in the image?\nA. 1\nB. 2\nAnswer with the option's letter from the given choices directly.",
)


def random_samples(n: int, seed: int = 0, size: int = 64) -> list[tuple[Image.Image, str]]:
    """``n`` random RGB images with POPE/ScienceQA-style prompts (for tiny random models)."""
    rng = np.random.default_rng(seed)
    return [(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), RANDOM_PROMPTS[i % 2])
            for i in range(n)]


def directory_samples(data_dir: str | Path, n: int, split: str = "calibration") -> list[tuple[Any, str]]:
    """Up to ``n`` samples from a data directory's calibration split, alternating POPE and
    ScienceQA prompts (falls back to the ``test`` split of an lmms-lab download)."""
    from hipp_torchprune.data import TASKS, decode_image, load_task_docs, pope_prompt, scienceqa_prompt
    from hipp_torchprune.errors import DataError

    pools = []
    for task, prompt in ((TASKS["pope"], pope_prompt), (TASKS["scienceqa"], scienceqa_prompt)):
        for s in (split, "test"):
            try:
                pools.append([(d, prompt) for d in load_task_docs(data_dir, task, split=s, limit=n)])
                break
            except DataError:
                continue
    samples = []
    for i in range(n):
        pool = pools[i % len(pools)] if pools else []
        if i // max(len(pools), 1) < len(pool):
            doc, prompt = pool[i // len(pools)]
            samples.append((decode_image(doc["image"], doc["_where"]), prompt(doc)))
    return samples


def calibration_samples(spec: str, n: int, seed: int = 0) -> list[tuple[Any, str]]:
    """``"random"`` -> :func:`random_samples`; otherwise a data directory. Empty -> error."""
    if n < 1:
        raise CalibrationError(f"the calibration set is empty: --calib-n must be >= 1, got {n}")
    if spec != "random" and not Path(spec).is_dir():
        raise CalibrationError(f"calibration data directory {spec!r} does not exist (give a world or "
                               "lmms-lab-format directory; 'random' only for the tiny models)")
    samples = random_samples(n, seed) if spec == "random" else directory_samples(spec, n)
    if not samples:
        raise CalibrationError(f"the calibration set from {spec!r} is empty: no POPE or ScienceQA rows found")
    return samples
