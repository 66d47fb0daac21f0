"""``hipp train`` / ``query`` / ``prune --strategy hipp`` end to end on a tiny model and world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hipp_torchprune.cli import main


@pytest.fixture(scope="module")
def world(make_world) -> Path:
    """A 200-image world (its calibration split has POPE and ScienceQA rows)."""
    return make_world(3, 200)


@pytest.fixture(scope="module")
def policy_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "p"
    assert main(["train", "--model", "tiny-llava", "--data", str(world), "--out", str(out), "--steps", "10",
                 "--group", "4", "--prefs", "2", "--budget", "0.2,0.5", "--round-to", "16", "--calib-n", "6",
                 "--reward-limit", "8", "--lr", "0.01"]) == 0
    return out


def test_train_writes_policy_logs_and_rising_reward(policy_dir: Path) -> None:
    log = json.loads((policy_dir / "train_log.json").read_text())
    assert [h["step"] for h in log] == list(range(11))
    # every sampled plan is budget-matched inside 0.2-0.5, up to one rounding step (16 rows of 4 x 256)
    assert all(0.2 - 16 / 1024 <= h["sparsity"] <= 0.5 + 16 / 1024 for h in log[1:])
    # on the random tiny model only compression carries signal: the policy learns to remove more
    first, last = (sum(h["sparsity"] for h in part) / 3 for part in (log[1:4], log[-3:]))
    assert last > first + 0.03
    # the anchor evaluations (steps 0, 5, 10) pick the deployed step: the highest anchor reward. On a
    # random model that reward is flat up to noise, so which step wins is the hardware's arithmetic;
    # that the best one is deployed is the contract
    evals = {h["step"]: h["anchor_reward"] for h in log if "anchor_reward" in h}
    assert sorted(evals) == [0, 5, 10] and all(torch.isfinite(torch.tensor(list(evals.values()))))
    assert all(0.0 < h["gate"] <= 1.0 for h in log[1:])
    meta = json.loads((policy_dir / "policy.json").read_text())
    assert meta["deployed_step"] == max(evals, key=evals.get)
    assert meta["state"] == {"visual_sensitivity": True, "grounding_drops": True, "drop_ratio": 0.75}
    assert meta["reward"] == {"statistic": ["loglik", "loglik"], "limit": 8, "split": "calibration",
                              "reconstruct": "none"}
    drops = [layer["grounding_drop"] for layer in meta["profile"]["layers"]]
    assert len(drops) == 4 and all(len(d) == 2 for d in drops) and any(d[1] != 0.0 for d in drops)
    assert meta["n_features"] == 16 + 5
    assert meta["device"] == "cpu"
    assert (policy_dir / "policy.json").exists() and (policy_dir / "checkpoint.pt").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (policy_dir / "runs").iterdir())


def test_train_with_the_refit_in_the_reward(world: Path, policy_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--reconstruct lstsq`` scores plans with the refit in place: same seed and state, same first
    plans, other rewards; the policy records it. (The grounding drops in the state are measured with
    the refit too, so both runs leave them out to start from one state.)"""
    config = tmp_path / "train.yaml"
    config.write_text("steps: 1\nprefs_per_step: 2\ngroup: 4\nlr: 0.01\npolicy: {rho_min: 0.2, rho_max: 0.5}\n"
                      "state: {grounding_drops: false}\n")
    runs = {}
    for name, flags in (("p", ["--reconstruct", "lstsq"]), ("plain", [])):
        runs[name] = tmp_path / name
        assert main(["train", "--model", "tiny-llava", "--data", str(world), "--out", str(runs[name]), "--config",
                     str(config), "--round-to", "16", "--calib-n", "6", "--reward-limit", "8", "--no-progress",
                     *flags]) == 0
    out = runs["p"]
    meta = json.loads((out / "policy.json").read_text())
    assert meta["reward"]["reconstruct"] == "lstsq" and meta["reward"]["refit_split"] == "train"
    refit, plain = (json.loads((d / "train_log.json").read_text()) for d in (out, runs["plain"]))
    assert refit[1]["sparsity"] == plain[1]["sparsity"] and refit[1]["rob_raw"] != plain[1]["rob_raw"]
    assert refit[0]["anchor_reward"] != plain[0]["anchor_reward"]
    hint = "prune with --reconstruct lstsq"
    for directory, said in ((out, True), (policy_dir, False)):  # hipp query tells how to deploy it
        capsys.readouterr()
        assert main(["query", "--policy", str(directory), "--preference", "1,1,1"]) == 0
        assert (hint in capsys.readouterr().out) == said
    for flags, want in (((), "lstsq"), (("--reconstruct", "none"), "none")):  # hipp prune adopts it unless told
        ck = tmp_path / f"ck-{want}"
        assert main(["prune", "--model", "tiny-llava", "--method", "hipp", "--policy", str(out), "--preference",
                     "1,1,1", "--out", str(ck), *flags]) == 0
        assert json.loads((ck / "plan.json").read_text())["reconstruct"] == want
        assert ("pruning with --reconstruct lstsq" in capsys.readouterr().err) == (want == "lstsq")


def test_the_refit_in_the_reward_is_fitted_on_rows_the_reward_does_not_score(world: Path) -> None:
    """The reward rows come from the calibration split, so the refit's Grams come from the train
    split: other rows, other Grams (a refit fitted on the scored rows flatters every plan)."""
    from hipp_torchprune.hipp.run import refit_split, reward_grams
    from hipp_torchprune.models.tiny import build_tiny

    assert [refit_split(s) for s in ("calibration", "train", "test")] == ["train", "calibration", "calibration"]
    model, processor = build_tiny("tiny-llava", seed=0)
    held_out, scored = (reward_grams(model, processor, world, 4, split=s) for s in ("train", "calibration"))
    assert len(held_out) == len(scored) == 4
    assert all(a.shape == b.shape for a, b in zip(held_out, scored))
    assert not any(torch.equal(a, b) for a, b in zip(held_out, scored))


def test_the_refit_in_the_reward_is_never_fitted_on_test_rows(world: Path, tmp_path: Path) -> None:
    """A directory without the refit's split (an lmms-lab download has only ``test``) is refused:
    the calibration pass falls back to ``test``, but a refit fitted there would be fitted on the
    rows the deployed model is scored on."""
    import shutil

    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.errors import CalibrationError
    from hipp_torchprune.hipp.run import reward_grams
    from hipp_torchprune.models.tiny import build_tiny

    shutil.copytree(world / "test", tmp_path / "test")
    assert len(calibration_samples(str(tmp_path), 4, split="train")) == 4  # the calibration pass falls back
    model, processor = build_tiny("tiny-llava", seed=0)
    with pytest.raises(CalibrationError, match="in its 'train' split"):
        reward_grams(model, processor, tmp_path, 4, split="train")


def test_the_refit_reward_refuses_grams_it_cannot_hold() -> None:
    from hipp_torchprune.errors import CalibrationError
    from hipp_torchprune.hipp.run import reward_grams
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava", seed=0)
    with pytest.raises(CalibrationError, match="train with reconstruct='none'"):
        reward_grams(model, processor, "nowhere", 4, max_bytes=1024)


def test_query_json(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--policy", str(policy_dir), "--preference", "2,1,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"preference", "plan", "widths", "realized_sparsity"}
    assert out["preference"] == [0.5, 0.25, 0.25] and len(out["plan"]) == len(out["widths"]) == 4
    assert 0.2 - 16 / 1024 <= out["realized_sparsity"] <= 0.5 + 16 / 1024
    assert all(w % 16 == 0 for w in out["widths"])


def test_prune_with_policy_and_mismatch(policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ck"
    assert main(["prune", "--model", "tiny-llava", "--strategy", "hipp", "--policy", str(policy_dir),
                 "--preference", "0,0,1", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["realized_sparsity"] > 0.15 and (out / "plan.json").exists()
    assert main(["prune", "--model", "tiny-qwen2_5_vl", "--strategy", "hipp", "--policy", str(policy_dir),
                 "--preference", "1,1,1"]) == 2
    assert "policy was trained for LlavaForConditionalGeneration" in capsys.readouterr().err


@pytest.mark.parametrize("pref", ["0,0,0", "1,-1,1", "1,2", "a,b,c"])
def test_bad_preferences_are_refused(policy_dir: Path, pref: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--policy", str(policy_dir), "--preference", pref]) == 2
    assert "preference" in capsys.readouterr().err


def test_demo_job(policy_dir: Path, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.checkpoint import load_pruned

    out = tmp_path / "demo"
    assert main(["demo", "--model", "tiny-llava", "--policy", str(policy_dir), "--world", str(world),
                 "--out", str(out), "--limit", "16", "--baselines", "none"]) == 0
    printed = capsys.readouterr().out
    assert "uniform @ balanced" in printed and "uniform @ balanced *" in printed  # the only baseline is the best
    rows = json.loads((out / "demo.json").read_text())
    assert [r["method"].split()[0] for r in rows] == ["dense"] + ["HiPP", "uniform"] * 3
    for hipp_row, uniform_row in zip(rows[1::2], rows[2::2]):
        assert abs(hipp_row["sparsity"] - uniform_row["sparsity"]) <= 16 / (256 * 4) + 1e-9  # one rounding step
        assert uniform_row["best_baseline"] and not hipp_row["best_baseline"]
    balanced = load_pruned(out / "pruned-balanced")
    assert [layer.mlp.gate_proj.out_features for layer in balanced.model.language_model.layers] == rows[5]["widths"]
    assert (out / "robustness_utility.png").stat().st_size > 1000


def test_demo_job_runs_the_baselines_at_each_plans_sparsity(policy_dir: Path, world: Path, tmp_path: Path) -> None:
    pytest.importorskip("hipp_baselines")
    pytest.importorskip("hipp_owl")
    from hipp_torchprune.demo_job import format_rows, preference_score, run_demo
    from tests.conftest import baselines_registry

    rows = run_demo("tiny-llava", policy_dir, world, tmp_path / "d", limit=16, baselines=("flap", "owl"),
                    registry=baselines_registry())
    assert [r["method"].split()[0] for r in rows] == ["dense"] + ["HiPP", "uniform", "flap", "owl"] * 3
    for i in range(1, len(rows), 4):
        hipp_row, others = rows[i], rows[i + 1:i + 4]
        assert all(abs(r["sparsity"] - hipp_row["sparsity"]) <= 16 / (256 * 4) + 1e-9 for r in others)
        assert sum(r["best_baseline"] for r in others) == 1 and not hipp_row["best_baseline"]
        best = next(r for r in others if r["best_baseline"])
        assert all(preference_score(best, hipp_row["preference"]) >= preference_score(r, hipp_row["preference"])
                   for r in others)
    assert format_rows(rows).count("minus the best baseline") == 3


@pytest.mark.parametrize("baselines", [("nope",), ("hipp",), ("uniform-typo",)])
def test_demo_job_refuses_unknown_baselines_before_writing(policy_dir: Path, world: Path, tmp_path: Path,
                                                           baselines: tuple[str, ...]) -> None:
    from hipp_torchprune.demo_job import run_demo
    from hipp_torchprune.methods import MethodError

    with pytest.raises(MethodError, match="baselines"):
        run_demo("tiny-llava", policy_dir, world, tmp_path / "d", limit=4, baselines=baselines)
    assert not (tmp_path / "d").exists()


def test_calibration_is_cached_and_reused(policy_dir: Path, world: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from hipp_torchprune.hipp.profile import load_calibration

    profile, stats = load_calibration(policy_dir / "calibration")  # written by hipp train
    assert len(profile.layers) == 4 and stats.n_samples == 6
    cache = tmp_path / "cache"
    assert main(["calibrate", "--model", "tiny-llava", "--data", str(world), "--n", "4", "--cache", str(cache),
                 "--json", "--plot", str(tmp_path / "s.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4 and [layer["index"] for layer in out["layers"]] == [0, 1, 2, 3]
    assert all(0 <= layer["visual_sensitivity"] <= 1 for layer in out["layers"])
    assert (tmp_path / "s.png").exists() and load_calibration(cache)[0].n_samples == 4


def test_calibration_cache_is_not_reused_for_other_data(policy_dir: Path, world: Path, make_world) -> None:
    from hipp_torchprune.hipp.profile import calibration_key, calibration_source, model_fingerprint
    from hipp_torchprune.hipp.run import calibrated_profile
    from hipp_torchprune.loading import load_model
    from hipp_torchprune.methods import DEFAULT_ROW_SCORE
    from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS

    cache = policy_dir / "calibration"
    model, processor = load_model("tiny-llava")
    world_hash = json.loads((world / "manifest.json").read_text())["content_hash"]
    assert calibration_source(cache) == {"model": model_fingerprint(model), "data": f"world:{world_hash}", "n": 6,
                                         "max_pixels": DEFAULT_MAX_PIXELS, "row_score": DEFAULT_ROW_SCORE}
    assert calibration_source(cache) == calibration_key(model, world, 6, DEFAULT_MAX_PIXELS)
    other = make_world(4, 200)
    import shutil

    copy = policy_dir.parent / "cache-copy"
    shutil.copytree(cache, copy)
    profile, _ = calibrated_profile(model, processor, other, 5, copy)
    assert profile.n_samples == 5 and calibration_source(copy) == calibration_key(model, other, 5, DEFAULT_MAX_PIXELS)
    profile, _ = calibrated_profile(model, processor, other, 5, copy, max_pixels=784)  # another cap: recomputed
    assert calibration_source(copy) == calibration_key(model, other, 5, 784)


def test_calibration_cache_is_not_reused_for_other_weights(policy_dir: Path, world: Path) -> None:
    """A retrained checkpoint of the same architecture must not inherit the old calibration."""
    import shutil
    from copy import deepcopy as copy_module

    import torch

    from hipp_torchprune.hipp.profile import calibration_source, model_fingerprint
    from hipp_torchprune.hipp.run import calibrated_profile
    from hipp_torchprune.loading import load_model

    model, processor = load_model("tiny-llava")
    before = model_fingerprint(model)
    copy = policy_dir.parent / "cache-other-weights"
    shutil.copytree(policy_dir / "calibration", copy)
    with torch.no_grad():
        model.model.language_model.layers[0].mlp.up_proj.weight.mul_(2.0)
    assert model_fingerprint(model) != before
    rounded = copy_module(model).to(torch.bfloat16)  # the same weights in another dtype: other statistics
    assert model_fingerprint(rounded) != model_fingerprint(copy_module(rounded).float())
    calibrated_profile(model, processor, world, 6, copy)
    assert calibration_source(copy)["model"] == model_fingerprint(model)


def test_data_fingerprint_names_worlds_by_content_and_other_dirs_by_path(tmp_path: Path) -> None:
    from hipp_torchprune.hipp.profile import data_fingerprint

    world = tmp_path / "w"
    world.mkdir()
    (world / "manifest.json").write_text(json.dumps({"content_hash": "abc"}))
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps({"content_hash": "abc"}))
    assert data_fingerprint(world) == data_fingerprint(copy) == "world:abc"  # moved worlds keep their cache
    plain = tmp_path / "lmms"
    plain.mkdir()
    assert data_fingerprint(plain) == str(plain.resolve())
    assert data_fingerprint("random") == "random"


def test_train_device_resolution() -> None:
    """Plans are scored on CPU unless asked; CUDA without a GPU is a typed error, before any work."""
    import torch

    from hipp_torchprune.errors import DeviceError
    from hipp_torchprune.hipp.run import train_device

    assert train_device(None) == torch.device("cpu") == train_device("cpu")
    with pytest.raises(DeviceError, match="not a device name"):
        train_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            train_device("cuda")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_train_refuses_cuda_without_a_gpu(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    assert main(["train", "--model", "tiny-llava", "--data", str(world), "--out", str(out), "--steps", "1",
                 "--device", "cuda", "--no-progress"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not out.exists()
