"""``hipp prune``: the JSON contract, the table, plan.json, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hipp_torchprune.checkpoint import load_pruned
from hipp_torchprune.cli import main


def test_json_output_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ck"
    code = main(["prune", "--model", "tiny-llava", "--sparsity", "0.3", "--round-to", "16", "--out", str(out),
                 "--json", "--calib-n", "4"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"realized_sparsity", "layers", "out"} and report["out"] == str(out)
    assert [set(layer) for layer in report["layers"]] == [{"index", "width_before", "width_after", "ratio"}] * 4
    assert abs(report["realized_sparsity"] - 0.3) < 0.05
    widths = [layer["width_after"] for layer in report["layers"]]
    assert json.loads((out / "plan.json").read_text())["layers"] == report["layers"]
    model = load_pruned(out)
    assert [layer.mlp.gate_proj.out_features for layer in model.model.language_model.layers] == widths


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--model", "tiny-qwen2_5_vl", "--importance", "magnitude", "--round-to", "16"]) == 0
    text = capsys.readouterr().out
    assert "before" in text and "realized MLP sparsity" in text and len(text.splitlines()) == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "nope"], "unknown strategy 'nope'; valid names: hipp, random, uniform"),
        (["--importance", "nope"], "unknown importance 'nope'"),
        (["--round-to", "0"], "round_to"),
        (["--round-to", "1024"], "round_to"),
        (["--sparsity", "0.95"], "sparsity"),
        (["--calib-n", "0"], "empty"),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                        message: str) -> None:
    out = tmp_path / "ck"
    assert main(["prune", "--model", "tiny-llava", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_model_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["prune", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_yaml_config_fills_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "prune.yaml"
    cfg.write_text("strategy: random\nimportance: magnitude\nsparsity: 0.5\nround_to: 16\nseed: 2\n")
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["realized_sparsity"] - 0.5) < 0.05
    assert len({layer["width_after"] for layer in report["layers"]}) > 1  # random, not uniform
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg), "--sparsity", "0.25", "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["realized_sparsity"] - 0.25) < 0.05


def test_yaml_config_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "prune.yaml"
    cfg.write_text("sparsty: 0.5\n")
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg)]) == 2
    assert "unknown field(s) sparsty" in capsys.readouterr().err


def test_missing_calibration_directory_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-world"
    assert main(["prune", "--model", "tiny-llava", "--calib", str(missing), "--round-to", "16"]) == 2
    assert f"calibration data directory '{missing}' does not exist" in capsys.readouterr().err
