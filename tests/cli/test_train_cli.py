"""``hipp train``'s flags reach the training call."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import pytest

from hipp_torchprune.cli import main


@pytest.mark.parametrize(("flag", "progress"), [([], True), (["--no-progress"], False)])
def test_no_progress_hides_the_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str],
                                   progress: bool) -> None:
    from hipp_torchprune.hipp import run

    seen: list[dict[str, Any]] = []

    def trainer(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs)
        return {"out": str(tmp_path), "history": []}

    monkeypatch.setattr(run, "train_from_data", trainer)
    assert main(["train", "--model", "tiny-llava", "--data", str(tmp_path), "--out", str(tmp_path / "p"), *flag]) == 0
    assert [kw["progress"] for kw in seen] == [progress]


@pytest.mark.parametrize(("flag", "field", "value"), [
    ([], "objective_cap", "none"),
    (["--objective-cap", "dense"], "objective_cap", "dense"),
    (["--objective-cap", "robustness"], "objective_cap", "robustness"),
    (["--sampler", "anchors"], "sampler", "anchors"),
    (["--flat-policy"], "policy_kind", "flat"),
    (["--no-gate"], "gate.enabled", False),
    ([], "state.visual_sensitivity", True),
    (["--no-visual-sensitivity"], "state.visual_sensitivity", False),
])
def test_ablation_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str],
                                         field: str, value: object) -> None:
    from hipp_torchprune.hipp import run

    seen: list[Any] = []

    def trainer(model: Any, data: Any, out: Any, config: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(config)
        return {"out": str(tmp_path), "history": []}

    monkeypatch.setattr(run, "train_from_data", trainer)
    assert main(["train", "--model", "tiny-llava", "--data", str(tmp_path), "--out", str(tmp_path / "p"), *flag]) == 0
    assert [operator.attrgetter(field)(c) for c in seen] == [value]
