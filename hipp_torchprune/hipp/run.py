"""Orchestration of ``hipp calibrate`` and ``hipp train``: load, calibrate, build the
environment, train, save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hipp_torchprune import api
from hipp_torchprune.calib_data import calibration_samples
from hipp_torchprune.errors import CalibrationError, DeviceError
from hipp_torchprune.hipp.calibrate import profile_model, row_scores
from hipp_torchprune.hipp.env import PlanEnvironment
from hipp_torchprune.hipp.grounding import single_layer_drops
from hipp_torchprune.hipp.objectives import DEFAULT_STATISTICS, default_objectives, statistic_pair
from hipp_torchprune.hipp.policy_io import save_policy
from hipp_torchprune.hipp.profile import (
    ModelProfile,
    calibration_key,
    calibration_source,
    load_calibration,
    save_calibration,
)
from hipp_torchprune.hipp.trainer import TrainConfig, best_step, config_dict, run_setup, train_policy
from hipp_torchprune.loading import load_model
from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS, cap_pixels
from hipp_torchprune.provenance import world_fingerprint
from hipp_torchprune.pruning.reconstruct import DEFAULT_GRAM_BYTES, Reconstruction, collect_down_grams, gram_bytes
from hipp_torchprune.registry import Registry


def calibrated_profile(model: Any, processor: Any, data_dir: str | Path, calib_n: int, cache: Path,
                       state: Any = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                       registry: Registry | None = None) -> tuple[ModelProfile, list[Any]]:
    """The model's profile and row scores (the shared default), from ``cache`` when it holds this model's
    calibration (same weights, data, sample count and pixel cap), computed and written there
    otherwise. Calibration images are capped at ``max_pixels`` pixels (``None``: no cap)."""
    adapter = api.get_adapter(model, registry)
    source = calibration_key(model, data_dir, calib_n, max_pixels)
    if (cache / "profile.json").exists() and calibration_source(cache) == source:
        profile, stats = load_calibration(cache)
        if list(profile.widths) == adapter.intermediate_widths() and profile.model_class == type(model).__name__:
            return profile, row_scores(model, stats, registry)
    profile, stats, scores = profile_model(model, cap_pixels(processor, max_pixels),
                                           calibration_samples(str(data_dir), calib_n), state=state,
                                           registry=registry)
    if state is None or state.is_main_process:
        save_calibration(cache, profile, stats, source)
    return profile, scores


def refit_split(reward_split: str) -> str:
    """The split the refit inside the reward is fitted on: never the one the rewards score, so each
    plan's refit is judged on rows it was not fitted to, as it is once deployed (``docs/method.md``,
    "Refit in the reward"). ``train`` for rewards on the calibration split, else ``calibration``.

    Example: ``refit_split("calibration") == "train"`` and ``refit_split("test") == "calibration"``.
    """
    return "train" if reward_split == "calibration" else "calibration"


def reward_grams(model: Any, processor: Any, data_dir: str | Path, calib_n: int,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_GRAM_BYTES,
                 registry: Registry | None = None, split: str = "calibration") -> list[Any]:
    """Every layer's augmented ``down_proj`` input Gram over the first ``calib_n`` samples of
    ``data_dir``'s ``split`` (by default the rows the calibration pass uses; a training run passes
    :func:`refit_split`), for the refit inside the reward. A run holds them all, so more than
    ``max_bytes`` of them is refused before any forward pass (LLaVA-7B would need 31 GB: train it
    with ``reconstruct="none"``). ``split`` never falls back to ``test``: a refit fitted there would
    be fitted on the rows it is judged on (a :class:`CalibrationError` instead)."""
    adapter = api.get_adapter(model, registry)
    need = sum(gram_bytes(w) for w in adapter.intermediate_widths())
    if need > max_bytes:
        raise CalibrationError(f"the refit inside the reward holds every layer's down_proj Gram, {need / 2**30:.1f} GiB "
                               f"here, above the {max_bytes / 2**30:.1f} GiB allowed: train with reconstruct='none'")
    samples = calibration_samples(str(data_dir), calib_n, split=split, fallback=False)
    return collect_down_grams(model, adapter, api.calibration_batches(adapter, cap_pixels(processor, max_pixels),
                                                                      samples))


def train_device(device: str | None, state: Any = None) -> torch.device:
    """Where ``hipp train`` scores plans: ``device`` (default CPU), and under several processes on
    CUDA each rank's own GPU (``state.device``). A name torch does not know, or CUDA without a
    GPU, is a :class:`DeviceError`.

    Example: ``train_device(None) == torch.device("cpu")``.
    """
    try:
        want = torch.device(device or "cpu")
    except RuntimeError as err:
        raise DeviceError(f"--device {device}: not a device name ({err}); use cpu or cuda") from err
    if want.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA device is available here; train with --device cpu")
    if want.type == "cuda" and state is not None:
        return torch.device(state.device)
    return want


def train_from_data(model_spec: str, data_dir: str | Path, out: str | Path, config: TrainConfig, *,
                    round_to: int = 64, calib_n: int = 64, reward_limit: int = 128, reward_split: str = "calibration",
                    reward_statistic: str | tuple[str, str] = DEFAULT_STATISTICS,
                    calibration: str | Path | None = None, reconstruct: Reconstruction = "none",
                    resume: bool = True, state: Any = None,
                    progress: bool = True, dtype: str | None = None, device: str | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS, registry: Registry | None = None) -> dict[str, Any]:
    """Train a HiPP policy for ``model_spec`` on ``data_dir`` and save it to ``out``.

    ``calibration`` is a cache from ``hipp calibrate --cache`` (default: ``out/calibration``);
    ``dtype`` is the model's (default: the checkpoint's own, see :func:`~hipp_torchprune.loading.parse_dtype`);
    ``device`` is where the model is scored (:func:`train_device`; default CPU; the policy itself
    always learns on CPU); calibration images are capped at ``max_pixels`` pixels; the rewards return ``reward_statistic``
    of the gold margins (one name, or a ``(rob, util)`` pair: :mod:`hipp_torchprune.hipp.objectives`).
    With ``reconstruct="lstsq"`` every plan is scored with the least-squares refit of its pruned
    ``down_proj`` layers (:func:`reward_grams`), as ``hipp prune --reconstruct lstsq`` deploys it.
    ``registry`` is where the adapter, the row scorer and the reward tasks are looked up (default:
    the default registry).
    """
    model, processor = load_model(model_spec, dtype=dtype, device=train_device(device, state))
    cache = Path(calibration) if calibration is not None else Path(out) / "calibration"
    profile, scores = calibrated_profile(model, processor, data_dir, calib_n, cache, state, max_pixels, registry)
    adapter = api.get_adapter(model, registry)
    cfg = config.policy
    objectives = default_objectives(processor, data_dir, reward_split, reward_limit, registry=registry,
                                    statistic=reward_statistic)
    grams = reward_grams(model, processor, data_dir, calib_n, max_pixels, registry=registry,
                         split=refit_split(reward_split)) if reconstruct == "lstsq" else None
    env = PlanEnvironment(model, adapter, scores, objectives,
                          round_to=round_to, r_max=cfg.r_max, compression_range=(cfg.rho_min, cfg.rho_max),
                          row_params=profile.row_params, state=state, grams=grams)
    reward_meta = {"statistic": list(statistic_pair(reward_statistic)), "limit": reward_limit, "split": reward_split,
                   "reconstruct": reconstruct, **({"refit_split": refit_split(reward_split)} if grams else {})}
    try:
        if config.state.grounding_drops:  # L + 1 plan evaluations, every rank (scoring is collective)
            profile = profile.with_grounding_drops(single_layer_drops(env, config.state.drop_ratio))
        policy, history = train_policy(env, profile, config, out, resume=resume, state=state, progress=progress,
                                       setup=run_setup(config, {"reward": reward_meta, "model": str(model_spec),
                                                                "world": world_fingerprint(data_dir) or str(data_dir),
                                                                "round_to": round_to, "calib_n": calib_n}))
    finally:
        env.close()
    if state is None or state.is_main_process:
        save_policy(out, policy, profile, round_to, extra={"train": config_dict(config), "model": str(model_spec),
                                                          "data": str(data_dir), "steps_done": len(history),
                                                          "reward": reward_meta,
                                                          "deployed_step": best_step(history) if config.deploy == "best"
                                                          else history[-1]["step"],
                                                          "processes": 1 if state is None else state.num_processes,
                                                          "device": next(model.parameters()).device.type},
                    state=config.state)
    return {"out": str(out), "history": history}
