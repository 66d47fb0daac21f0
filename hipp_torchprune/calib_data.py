"""Calibration samples: ``(image, prompt, answer)`` triples from a data directory's calibration
split (gold answers: "Yes"/"No" for POPE, the option letter for ScienceQA) or random images.

The answer is what loss- and gradient-based methods score (:mod:`hipp_torchprune.pruning.answers`);
statistics of activations read the prompt only, exactly as for ``(image, prompt)`` pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hipp_torchprune.errors import CalibrationError, DataError

#: Prompts used with random calibration images (tiny models only).
RANDOM_PROMPTS: tuple[str, ...] = (
    "Is there a red object in the image?\nAnswer the question using a single word or phrase.",
    "How many objects are in the image?\nA. 1\nB. 2\nAnswer with the option's letter from the given choices directly.",
)


#: Answers of the random samples, cycled per prompt: ``RANDOM_ANSWERS[i % 2][(i // 2) % 2]``.
RANDOM_ANSWERS: tuple[tuple[str, str], ...] = (("Yes", "No"), ("A", "B"))


def random_samples(n: int, seed: int = 0, size: int = 64) -> list[tuple[Image.Image, str, str]]:
    """``n`` random RGB images with POPE/ScienceQA-style prompts and answers (tiny random models)."""
    rng = np.random.default_rng(seed)
    return [(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), RANDOM_PROMPTS[i % 2],
             RANDOM_ANSWERS[i % 2][(i // 2) % 2]) for i in range(n)]


def pope_answer(doc: dict[str, Any]) -> str:
    """"Yes" or "No" from a POPE row; :class:`~hipp_torchprune.errors.DataError` otherwise."""
    answer = str(doc["answer"]).strip().lower()
    if answer not in ("yes", "no"):
        raise DataError(f"{doc['_where']}: answer must be 'yes' or 'no', got {doc['answer']!r}")
    return answer.capitalize()


def scienceqa_answer(doc: dict[str, Any]) -> str:
    """The option letter of a ScienceQA row's answer index; DataError when out of range."""
    from hipp_torchprune.data import option_letters

    letters = option_letters(len(doc["choices"]))
    if not 0 <= int(doc["answer"]) < len(letters):
        raise DataError(f"{doc['_where']}: answer {doc['answer']} out of range for {len(letters)} choices")
    return letters[int(doc["answer"])]


def directory_samples(data_dir: str | Path, n: int, split: str = "calibration",
                      fallback: bool = True) -> list[tuple[Any, str, str]]:
    """Up to ``n`` samples from a data directory's ``split``, alternating POPE and ScienceQA rows,
    with their gold answers. A task without that split falls back to its ``test`` split (an
    lmms-lab download has no other) unless ``fallback`` is False; then it gives no rows."""
    from hipp_torchprune.data import TASKS, decode_image, load_task_docs, pope_prompt, scienceqa_prompt

    pools = []
    for task, prompt, answer in ((TASKS["pope"], pope_prompt, pope_answer),
                                 (TASKS["scienceqa"], scienceqa_prompt, scienceqa_answer)):
        for s in (split, "test") if fallback else (split,):
            try:
                pools.append([(d, prompt, answer) for d in load_task_docs(data_dir, task, split=s, limit=n)])
                break
            except DataError:
                continue
    samples = []
    for i in range(n):
        pool = pools[i % len(pools)] if pools else []
        if i // max(len(pools), 1) < len(pool):
            doc, prompt, answer = pool[i // len(pools)]
            samples.append((decode_image(doc["image"], doc["_where"]), prompt(doc), answer(doc)))
    return samples


def calibration_samples(spec: str, n: int, seed: int = 0, split: str = "calibration",
                        fallback: bool = True) -> list[tuple[Any, str, str]]:
    """``"random"`` -> :func:`random_samples`; otherwise a data directory's ``split``
    (:func:`directory_samples`, falling back to ``test`` unless ``fallback`` is False). Empty -> error."""
    if n < 1:
        raise CalibrationError(f"the calibration set is empty: --calib-n must be >= 1, got {n}")
    if spec != "random" and not Path(spec).is_dir():
        raise CalibrationError(f"calibration data directory {spec!r} does not exist (give a world or "
                               "lmms-lab-format directory; 'random' only for the tiny models)")
    samples = random_samples(n, seed) if spec == "random" else directory_samples(spec, n, split, fallback)
    if not samples:
        where = "" if fallback else f" in its {split!r} split (no fallback to 'test' here)"
        raise CalibrationError(f"the calibration set from {spec!r} is empty: no POPE or ScienceQA rows found{where}")
    return samples
