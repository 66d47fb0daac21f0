"""``--dtype`` on every command that loads a model: default the checkpoint's own, typed errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hipp_torchprune.cli import main
from hipp_torchprune.demo import DEMO_MODEL_DIR, training_world
from hipp_torchprune.errors import HippError


class _Loaded(HippError):
    """Raised by the stand-in loader once it has seen the dtype (stops the command there)."""


def _commands(tmp: Path) -> dict[str, list[str]]:
    world = tmp / "world"
    world.mkdir(exist_ok=True)
    # `hipp demo` would otherwise build a world first, and refuses one unlike the model's training world
    version, render = training_world(DEMO_MODEL_DIR)
    (world / "manifest.json").write_text(json.dumps({"version": version, **dataclasses.asdict(render)}))
    return {
        "prune": ["prune", "--importance", "magnitude"],
        "calibrate": ["calibrate", "--data", "random"],
        "eval": ["eval", "--data", str(world)],
        "recover": ["recover", "--data", str(world), "--steps", "1", "--out", str(tmp / "out")],
        "train": ["train", "--data", str(world), "--out", str(tmp / "out")],
        "compare": ["compare", "--data", str(world), "--policy", str(tmp), "--out", str(tmp / "out"), "--methods", ""],
        "demo": ["demo", "--world", str(world), "--out", str(tmp / "out"), "--baselines", "none"],
    }


@pytest.mark.parametrize("command", ["prune", "calibrate", "eval", "recover", "train", "compare", "demo"])
@pytest.mark.parametrize(("flag", "expected"), [([], None), (["--dtype", "float16"], torch.float16)])
def test_every_model_command_loads_in_the_requested_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         command: str, flag: list[str],
                                                         expected: torch.dtype | None) -> None:
    from hipp_torchprune import checkpoint

    seen = []

    def loader(directory, registry=None, dtype=None):
        seen.append((Path(directory), dtype))
        raise _Loaded("stop")

    monkeypatch.setattr(checkpoint, "load_pruned", loader)
    assert main([*_commands(tmp_path)[command], "--model", "demo", *flag]) == 2
    assert seen == [(DEMO_MODEL_DIR, expected)]


@pytest.mark.parametrize("command", ["prune", "calibrate", "eval", "recover", "train", "compare", "demo"])
def test_bad_dtype_exits_2_naming_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              command: str) -> None:
    args = _commands(tmp_path)[command]
    assert main([*args, "--model", "tiny-llava", "--dtype", "int8"]) == 2
    assert f"hipp {command}: error: unknown dtype 'int8'; valid: auto, bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _stored_dtypes(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", "pt") as fh:
        return {fh.get_slice(k).get_dtype() for k in fh.keys()}


def test_pruned_demo_stays_bf16_and_is_smaller_than_dense(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    assert main(["prune", "--model", "demo", "--importance", "magnitude", "--sparsity", "0.6", "--out", str(out),
                 "--json"]) == 0
    assert _stored_dtypes(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "model.safetensors").stat().st_size < (DEMO_MODEL_DIR / "model.safetensors").stat().st_size


def test_prune_in_float32_on_request(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    assert main(["prune", "--model", "demo", "--importance", "magnitude", "--out", str(out), "--json",
                 "--dtype", "float32"]) == 0
    assert _stored_dtypes(out) == {"F32"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
