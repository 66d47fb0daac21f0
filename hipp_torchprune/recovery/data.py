"""Recovery training rows from a proving-ground train split: prompts, gold answers, batches.

Rows are read with :func:`hipp_torchprune.data.load_task_docs`; prompts are
:func:`~hipp_torchprune.data.pope_prompt` / ``scienceqa_prompt`` under the model's chat
template, left-padded, exactly as :mod:`hipp_torchprune.evaluation` scores them. The answer is
"Yes"/"No" or the option letter; its token variants are the evaluation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hipp_torchprune.calib_data import pope_answer, scienceqa_answer
from hipp_torchprune.data import TASKS, decode_image, load_task_docs, option_letters, pope_prompt, scienceqa_prompt
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import NO_VARIANTS, YES_VARIANTS, answer_token_ids
from hipp_torchprune.recovery.config import RecoveryConfig
from hipp_torchprune.recovery.losses import pope_fraction


@dataclass(frozen=True)
class Row:
    """One training example: chat text, image key, option token ids, gold option."""

    text: str
    image_key: str
    candidates: tuple[tuple[int, ...], ...]
    gold: int


@dataclass
class RecoveryPool:
    """POPE and ScienceQA rows of one split plus their (lazily decoded) images."""

    pope: list[Row]
    sqa: list[Row]
    encoded_images: dict[str, Any]
    decoded: dict[str, Any]

    def image(self, key: str) -> Any:
        """The RGB image of ``key``, decoded once."""
        if key not in self.decoded:
            self.decoded[key] = decode_image(self.encoded_images[key], key)
        return self.decoded[key]


def _chat_template(processor: Any) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\x00"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def load_pool(processor: Any, data_dir: str | Path, config: RecoveryConfig, split: str = "train") -> RecoveryPool:
    """Read the split's POPE (all categories) and ScienceQA rows; DataError when a needed task is empty."""
    tok = processor.tokenizer
    template = _chat_template(processor)
    images: dict[str, Any] = {}
    pope: list[Row] = []
    sqa: list[Row] = []
    if config.data in ("mix", "pope"):
        yes, no = tuple(answer_token_ids(tok, YES_VARIANTS)), tuple(answer_token_ids(tok, NO_VARIANTS))
        for d in load_task_docs(data_dir, TASKS["pope"], split=split, limit=config.limit):
            gold = 0 if pope_answer(d) == "Yes" else 1
            images.setdefault(d["_image_key"], d["image"])
            pope.append(Row(template.replace("\x00", pope_prompt(d)), d["_image_key"], (yes, no), gold))
    if config.data in ("mix", "scienceqa"):
        letters = {L: tuple(answer_token_ids(tok, [L])) for L in option_letters(26)}
        for d in load_task_docs(data_dir, TASKS["scienceqa"], split=split, limit=config.limit):
            scienceqa_answer(d)  # checks the answer index
            n = len(d["choices"])
            images.setdefault(d["_image_key"], d["image"])
            sqa.append(Row(template.replace("\x00", scienceqa_prompt(d)), d["_image_key"],
                           tuple(letters[L] for L in option_letters(n)), int(d["answer"])))
    if config.data in ("mix", "pope") and not pope:
        raise DataError(f"no POPE rows in the {split!r} split of {str(data_dir)!r}")
    if config.data in ("mix", "scienceqa") and not sqa:
        raise DataError(f"no ScienceQA rows in the {split!r} split of {str(data_dir)!r}")
    return RecoveryPool(pope, sqa, images, {})


def step_rows(pool: RecoveryPool, config: RecoveryConfig, step: int) -> list[tuple[str, Row]]:
    """The ``(family, row)`` pairs of step ``step``: a pure function of ``(seed, step)``, so a
    resumed run draws the same batches. A slot is POPE with probability :func:`pope_fraction`."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    frac = {"mix": pope_fraction(config.pope_base_fraction, config.w_rob), "pope": 1.0, "scienceqa": 0.0}[config.data]
    is_pope = (torch.rand(config.batch_size, generator=gen) < frac).tolist()
    picks = torch.randint(1 << 30, (config.batch_size,), generator=gen).tolist()
    out = []
    for p, k in zip(is_pope, picks):
        rows, fam = (pool.pope, "pope") if p else (pool.sqa, "mc")
        out.append((fam, rows[k % len(rows)]))
    return out


def encode_rows(processor: Any, pool: RecoveryPool, rows: list[tuple[str, Row]]) -> dict[str, torch.Tensor]:
    """Left-padded processor inputs for ``rows`` (the evaluation's layout)."""
    tok = processor.tokenizer
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = processor(text=[r.text for _, r in rows], images=[pool.image(r.image_key) for _, r in rows],
                        return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old
    return dict(enc)
