"""Probe tool (session 22): save an insertion run's last checkpoint as a model, mid-run, to measure it
(``lore_reading.py``, ``scienceqa_topics.py``) before the run ends. The student is rebuilt exactly as
the run builds it (teacher, world, re-keyed and new words from the config's seed), then its trained
parameters are loaded from ``insert_checkpoint.pt``.

    python benchmarks/demo-probes/tools/export_insert.py TEACHER WORLD CONFIG.yaml RUN_DIR OUT_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from hipp_torchprune.demo.vocab import INSERT_CHECKPOINT, _resume, _set_up, read_insert_config

teacher, world, config, run_dir, out = (Path(a) for a in sys.argv[1:6])
cfg = read_insert_config(config)
run = _set_up(teacher, world, cfg)
step, _, history = _resume(run_dir / INSERT_CHECKPOINT, run, cfg, np.random.default_rng(0))
out.mkdir(parents=True, exist_ok=True)
run.student.eval().to(torch.bfloat16).save_pretrained(out)
run.data.processor.save_pretrained(out)
(out / "train_summary.json").write_text(json.dumps(dict(run.source, insert={"steps": step, "history": history}), indent=2))
print(json.dumps({"step": step, "history": history[-1:] if history else []}))
