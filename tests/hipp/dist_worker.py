"""Worker for test_distributed: profiles a tiny model and scores plans, on one process or under
accelerate (gloo) when ``WORLD_SIZE`` > 1."""

from __future__ import annotations

import json
import os
import sys

import torch


def run(world: str, out: str) -> None:
    """Profile tiny-llava on ``world`` and score fixed plans; the main process writes the
    sensitivity, statistics, row scores and rewards to ``out`` as JSON."""
    from accelerate import PartialState

    from hipp_torchprune import api
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.hipp.calibrate import profile_model
    from hipp_torchprune.hipp.env import PlanEnvironment
    from hipp_torchprune.hipp.objectives import default_objectives
    from hipp_torchprune.models.tiny import build_tiny

    state = PartialState(cpu=True) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    torch.manual_seed(0)
    model, processor = build_tiny("tiny-llava", seed=0)
    profile, stats, scores = profile_model(model, processor, calibration_samples(world, 8), batch_size=2, state=state)
    env = PlanEnvironment(model, api.get_adapter(model), scores, default_objectives(processor, world, limit=8),
                          round_to=16, r_max=0.8, compression_range=(0.2, 0.5), row_params=profile.row_params,
                          state=state)
    plans = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.1, 0.3], [0.3] * 4, [0.0, 0.6, 0.2, 0.2], [0.25] * 4]
    outcome = env.score(plans)
    result = {"profile": profile.to_dict(), "in_sq": {k: v.tolist() for k, v in stats.in_sq.items()},
              "n_tokens": stats.n_tokens, "scores": [s.tolist() for s in scores],
              "raw": outcome.raw.tolist(), "phi": outcome.phi.tolist()}
    if state is None or state.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
