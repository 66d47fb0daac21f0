"""The demo model's recipes end to end (``hipp demo-model train --recipe``).

``v1`` is one stage: :func:`~hipp_torchprune.demo.train.train_demo_model`. ``v2`` adds
insertions (:func:`~hipp_torchprune.demo.vocab.insert_aliases`) after a teacher trained with every
object asked by its name, each on the model of the stage before. The teacher lives in
``<out>/teacher``, insertion stage k before the last in ``<out>/stage<k>`` (k = 1, 2, ...), and the
model is ``<out>``. Every stage resumes from its checkpoint, so an interrupted run picks up where
it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hipp_torchprune.demo.config import DemoModelConfig, TrainConfig
from hipp_torchprune.demo.insert_config import InsertConfig

#: The teacher of a staged recipe, under its output directory.
TEACHER_DIR = "teacher"

#: Each recipe's insertion stages, run in order on its teacher (empty = one stage). ``v2``'s two
#: (probe i57 in ``docs/demo-model.md``, the shipped model): first the alias table in layer 1's MLP,
#: with layers 0-1 learning to read the new words (queries and keys), everything else held by a keep
#: loss, each alias given 70 % of a direction shared by the aliases of the scene kinds it belongs to
#: (``group_words``), and its "no" targets leaned 27.5 % toward the teacher asked by its missing
#: companion's name (a co-occurrence prior that only ever adds a "yes": ``prior_keeps_yes``); then
#: the lore moved alone into layer 5's MLP (re-keyed options, the rest held as written), so that
#: grounding (layer 1) and knowledge (layer 5) live in different layers.
#: A probe's YAML may give other stages (``insert:`` as a list, ``hipp demo-model train --config``).
RECIPE_INSERTS: dict[str, tuple[InsertConfig, ...]] = {
    "v1": (),
    "v2": (InsertConfig(layer=1, attention_upto=1, attention_parts="qk", steps=4500, keep_weight=5.0,
                        keep_answer_weight=1.0, related_share=0.7, related_to="group_words", prior_mix=0.275,
                        prior_keeps_yes=True),
           InsertConfig(layer=1, attention_upto=-1, steps=3000, keep_weight=5.0, keep_lore_weight=5.0,
                        keep_answer_weight=5.0, keep_asked="written", lore_layer=5, lore_only=True,
                        lore_isolated=True, lore_rekey="unflagged", lore_hidden_weight=5.0,
                        lore_answer_weight=5.0)),
}


def stage_dir(out_dir: Path, k: int, n: int) -> Path:
    """Where insertion stage ``k`` (0-based) of ``n`` writes its model: ``out_dir`` for the last."""
    return out_dir if k == n - 1 else out_dir / f"stage{k + 1}"


def _finished_summary(out: Path) -> dict[str, Any]:
    """The training summary of a finished stage in ``out`` ({} when its summary or saved model is
    missing or the summary is unreadable: that stage runs again and resumes from its checkpoint)."""
    path = out / "train_summary.json"
    if not (path.is_file() and (out / "model.safetensors").is_file()):
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _teacher_done(teacher: Path, model_cfg: DemoModelConfig, cfg: TrainConfig) -> bool:
    """Whether ``teacher`` holds a finished run of exactly this recipe (summary and saved model)."""
    summary = _finished_summary(teacher)
    same = json.loads(json.dumps({"model": model_cfg.to_dict(), "train": cfg.to_dict()}))  # tuples -> lists
    return summary.get("steps") == cfg.steps and {k: summary.get(k) for k in same} == same


def _insert_done(out: Path, cfg: InsertConfig) -> bool:
    """Whether ``out`` holds a finished insertion of exactly ``cfg`` (summary and saved model)."""
    record = _finished_summary(out).get("insert", {})
    try:
        done = InsertConfig(**record.get("config", {}))  # a field added after the run: its default (off)
    except TypeError:
        return False
    return record.get("steps") == cfg.steps and asdict(done) == json.loads(json.dumps(asdict(cfg)))


def train_recipe(data_dir: str | Path, out_dir: str | Path, model_cfg: DemoModelConfig, cfg: TrainConfig,
                 inserts: Sequence[InsertConfig] = (), resume: bool = True, progress: bool = True,
                 device: str = "cpu", stop_at: int | None = None) -> dict[str, Any]:
    """Train a demo model on ``data_dir`` into ``out_dir``: one stage without ``inserts``, else a
    teacher in ``out_dir/teacher`` and then each insertion on the model of the stage before
    (:func:`stage_dir`).

    Returns the model's training summary (the teacher's with the insertions' records, ``inserts``).
    A finished stage of the same recipe is reused, not retrained, and the first unfinished one
    resumes; a stage after one that ran in this call starts afresh (its state came from another
    model). ``stop_at`` interrupts the teacher stage after that step, as an interruption would.
    """
    from hipp_torchprune.data import world_render
    from hipp_torchprune.demo.insert_config import check_insert_config
    from hipp_torchprune.demo.train import train_demo_model
    from hipp_torchprune.demo.vocab import insert_aliases
    from hipp_torchprune.errors import DataError

    out_dir = Path(out_dir)
    if not inserts:
        return train_demo_model(data_dir, out_dir, model_cfg, cfg, resume=resume, progress=progress,
                                stop_at=stop_at, device=device)
    for stage in inserts:  # refused before the teacher's hour, not after
        check_insert_config(stage, model_cfg.text_layers)
    if not world_render(data_dir).aliases:
        raise DataError(f"{data_dir}: a staged recipe inserts the world's aliases; build the world with --aliases K")
    src = out_dir / TEACHER_DIR
    reused = resume and _teacher_done(src, model_cfg, cfg)
    if not reused:
        summary = train_demo_model(data_dir, src, model_cfg, cfg, resume=resume, progress=progress,
                                   stop_at=stop_at, device=device)
        if summary.get("stopped"):
            return summary
    for k, stage in enumerate(inserts):
        dst = stage_dir(out_dir, k, len(inserts))
        if reused and k < len(inserts) - 1 and _insert_done(dst, stage):
            src = dst
            continue
        # an insertion state left from an earlier model of the stage before would mix two models
        summary = insert_aliases(src, data_dir, dst, stage, resume=reused, progress=progress)
        src, reused = dst, False
    return summary


__all__: Sequence[str] = ("RECIPE_INSERTS", "TEACHER_DIR", "stage_dir", "train_recipe")
