"""Orchestration of ``hipp calibrate`` and ``hipp train``: load, calibrate, build the
environment, train, save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.hipp.calibrate import profile_model
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.objectives import default_objectives
from hipp_torchprune.hipp.policy_io import save_policy
from hipp_torchprune.hipp.trainer import TrainConfig, config_dict, train_policy
from hipp_torchprune.loading import load_model


def train_from_data(model_spec: str, data_dir: str | Path, out: str | Path, config: TrainConfig, *,
                    round_to: int = 64, calib_n: int = 64, reward_limit: int = 128, reward_split: str = "calibration",
                    resume: bool = True, state: Any = None, progress: bool = True) -> dict[str, Any]:
    """Train a HiPP policy for ``model_spec`` on ``data_dir`` and save it to ``out``."""
    model, processor = load_model(model_spec)
    samples = calibration_samples(str(data_dir), calib_n)
    profile, _, scores = profile_model(model, processor, samples, state=state)
    adapter = api.get_adapter(model)
    cfg = config.policy
    env = PlanEnvironment(model, adapter, scores, default_objectives(processor, data_dir, reward_split, reward_limit),
                          round_to=round_to, r_max=cfg.r_max, compression_range=(cfg.rho_min, cfg.rho_max),
                          row_params=profile.row_params, state=state)
    try:
        policy, history = train_policy(env, profile, config, out, resume=resume, state=state, progress=progress)
    finally:
        env.close()
    if state is None or state.is_main_process:
        save_policy(out, policy, profile, round_to, extra={"train": config_dict(config), "model": str(model_spec),
                                                          "data": str(data_dir), "steps_done": len(history)})
    return {"out": str(out), "history": history}
