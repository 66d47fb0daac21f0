"""The demo model's recipes end to end (``hipp demo-model train --recipe``).

``v1`` is one stage: :func:`~hipp_torchprune.demo.train.train_demo_model`. ``v2`` is two: a
teacher trained with every object asked by its name, then vocabulary insertion
(:func:`~hipp_torchprune.demo.vocab.insert_aliases`), which teaches a copy of it the world's
aliases in one layer's MLP. The teacher lives in ``<out>/teacher``; the model is ``<out>``.
Both stages resume from their checkpoints, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig
from hipp_torchprune.demo.vocab import InsertConfig

#: The teacher of a two-stage recipe, under its output directory.
TEACHER_DIR = "teacher"

#: Each recipe's second stage: the vocabulary insertion run on its teacher (None = one stage).
#: ``v2``'s (probe i18 in ``docs/demo-model.md``, the shipped model) puts the alias table in
#: layer 1's MLP, lets layers 0-1 learn to read the new words (queries and keys), holds
#: everything else with a keep loss, gives each alias 70 % of a direction shared by the aliases
#: of its scene types, and leans its targets 20 % toward the teacher asked by its companion's
#: name (a co-occurrence prior).
RECIPE_INSERT: dict[str, InsertConfig | None] = {
    "v1": None,
    "v2": InsertConfig(layer=1, attention_upto=1, attention_parts="qk", steps=3000, keep_weight=5.0,
                       keep_answer_weight=1.0, related_share=0.7, related_to="scene", prior_mix=0.2),
}


def _teacher_done(teacher: Path, model_cfg: DemoModelConfig, cfg: TrainConfig) -> bool:
    """Whether ``teacher`` holds a finished run of exactly this recipe (summary and saved model)."""
    path = teacher / "train_summary.json"
    if not (path.is_file() and (teacher / "model.safetensors").is_file()):
        return False
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False  # the teacher stage runs again and resumes from its checkpoint
    same = json.loads(json.dumps({"model": model_cfg.to_dict(), "train": cfg.to_dict()}))  # tuples -> lists
    return summary.get("steps") == cfg.steps and {k: summary.get(k) for k in same} == same


def train_recipe(data_dir: str | Path, out_dir: str | Path, model_cfg: DemoModelConfig, cfg: TrainConfig,
                 insert_cfg: InsertConfig | None = None, resume: bool = True, progress: bool = True,
                 device: str = "cpu", stop_at: int | None = None) -> dict[str, Any]:
    """Train a demo model on ``data_dir`` into ``out_dir``: one stage when ``insert_cfg`` is None,
    else a teacher in ``out_dir/teacher`` and then vocabulary insertion into ``out_dir``.

    Returns the model's training summary (the teacher's with an ``insert`` record for two
    stages). A finished teacher of the same recipe is reused, not retrained, and
    the insertion resumes; a teacher trained by this call starts the insertion afresh. ``stop_at``
    interrupts the teacher stage after that step, as an interruption would (checkpoint saved).
    """
    from hipp_torchprune.data import world_render
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.demo.vocab import check_insert_config, insert_aliases
    from hipp_torchprune.errors import DataError

    out_dir = Path(out_dir)
    if insert_cfg is None:
        return train_demo_model(data_dir, out_dir, model_cfg, cfg, resume=resume, progress=progress,
                                stop_at=stop_at, device=device)
    check_insert_config(insert_cfg, model_cfg.text_layers)  # refused before the teacher's hour, not after
    if not world_render(data_dir).aliases:
        raise DataError(f"{data_dir}: a two-stage recipe inserts the world's aliases; build the world with --aliases K")
    teacher = out_dir / TEACHER_DIR
    reused = resume and _teacher_done(teacher, model_cfg, cfg)
    if not reused:
        summary = train_demo_model(data_dir, teacher, model_cfg, cfg, resume=resume, progress=progress,
                                   stop_at=stop_at, device=device)
        if summary.get("stopped"):
            return summary
    # an insertion state left from an earlier teacher would mix two teachers: start it afresh
    return insert_aliases(teacher, data_dir, out_dir, insert_cfg, resume=reused, progress=progress)


__all__: Sequence[str] = ("RECIPE_INSERT", "TEACHER_DIR", "train_recipe")
