"""benchmarks/v2_verdict.py: issue 13's rule read off hand-made evaluation folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmark_scripts import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("v2_verdict")


def _errors(gap: float, widening: float, fy: tuple[float, float], miss: tuple[float, float]) -> str:
    return (
        "| state | POPE-random | POPE-adversarial | gap (rand - adv) | false yes rand / adv "
        "| of which on missing companions | misses rand / adv |\n|---|---|---|---|---|---|---|\n"
        f"| dense | 96.0 | 94.0 | {gap:.2f} | 2.0 / {fy[0]} | 1.0 / 2.0 | 1.0 / {miss[0]} |\n"
        f"| uniform Wanda, 0.398 realized | 90.0 | 85.0 | {gap + widening:.2f} | 8.0 / {fy[1]} | 1.0 / 6.0 "
        f"| 1.0 / {miss[1]} |\n\nThe gap widens by {widening:.2f} points under pruning.\n")


def _row(s: float, method: str, adv: list[float], rand: float = 0.96, sqa: float = 0.9) -> dict:
    return {"sparsity": s, "method": method, "pope_random": [rand], "pope_adversarial": adv, "scienceqa": [sqa]}


def _folder(tmp: Path, *, dense_adv: float = 0.94, sens40: float = 0.92, widening40: float = 2.5,
            fy40: tuple[float, float] = (4.0, 14.0), spearman: float = 0.4, crit: tuple[int, int] = (1, 5)) -> Path:
    spread = [0.70, 0.80, 0.90, 0.60]  # sample std 12.9 points
    rows = [_row(0.0, "dense", [dense_adv])]
    for s, uni, sens in ((0.3, 0.90, 0.93), (0.4, 0.85, sens40), (0.5, 0.80, 0.90)):
        rows += [_row(s, "uniform", [uni]), _row(s, "sensitivity", [sens]), _row(s, "random", spread)]
    tmp.mkdir()
    (tmp / "degradation.json").write_text(json.dumps(rows))
    (tmp / "errors.md").write_text(_errors(2.2, 1.0, (4.0, 9.0), (1.0, 1.0)))  # 50 %: widening too small
    (tmp / "errors-0.3.md").write_text(_errors(2.2, 5.0, (4.0, 9.0), (1.0, 1.0)))
    (tmp / "errors-0.4.md").write_text(_errors(2.2, widening40, fy40, (1.5, 2.0)))
    (tmp / "ls-test.log").write_text(json.dumps({"ratio": 0.75, "spearman_pope_adv_vs_sqa": spearman,
                                                 "most_critical_pope_adv": crit[0], "most_critical_sqa": crit[1]}) + "\n")
    return tmp


def test_target5_reads_every_condition_by_hand() -> None:
    script = _script()
    base = [_row(0.0, "dense", [0.94]), _row(0.4, "uniform", [0.86]), _row(0.4, "sensitivity", [0.91]),
            _row(0.4, "random", [0.70, 0.80])]  # -8.0 / -3.0 / std 7.1: exactly on the bars
    assert script.target5_sparsities(base) == [0.4]
    assert script.target5_sparsities([*base[:1], _row(0.4, "uniform", [0.861]), *base[2:]]) == []
    assert script.target5_sparsities([*base[:2], _row(0.4, "sensitivity", [0.909]), base[3]]) == []
    assert script.target5_sparsities([*base[:3], _row(0.4, "random", [0.76, 0.80])]) == []  # std 2.8
    assert script.target5_sparsities([*base, _row(0.6, "uniform", [0.5])]) == [0.4]  # only <= 50 %


@pytest.mark.parametrize(("change", "ok", "says"), [
    ({}, True, "T3 met"),
    ({"widening40": 1.9}, False, "T3 NO"),  # the one target-5 sparsity (40 %) widens too little
    ({"fy40": (4.0, 4.2)}, False, "T3 NO"),  # false "yes" grows less than misses
    ({"sens40": 0.90}, False, "T5 NO"),  # sensitivity loses 4
    ({"dense_adv": 0.91}, False, "T2 NO"),
    ({"spearman": 0.6}, False, "T4 NO"),
    ({"crit": (5, 5)}, False, "T4 NO"),
])
def test_verdict_by_hand(tmp_path: Path, change: dict, ok: bool, says: str) -> None:
    met, line = _script().verdict(_folder(tmp_path / "eval", **change))
    assert (met, says in line) == (ok, True), line


def test_main_exits_one_unless_every_folder_meets_every_target(tmp_path: Path, capsys) -> None:
    script = _script()
    good, bad = _folder(tmp_path / "good"), _folder(tmp_path / "bad", widening40=0.5)
    assert script.main([str(good)]) == 0
    assert script.main([str(good), str(bad)]) == 1
    assert capsys.readouterr().out.count("\n") == 3


def test_missing_or_foreign_files_are_a_data_error(tmp_path: Path, capsys) -> None:
    from hipp_torchprune.errors import DataError

    script = _script()
    folder = _folder(tmp_path / "eval")
    (folder / "errors-0.4.md").unlink()
    with pytest.raises(DataError, match="errors-0.4.md: missing"):
        script.verdict(folder)
    assert script.main([str(folder)]) == 2 and "errors-0.4.md" in capsys.readouterr().err
    (folder / "errors-0.4.md").write_text("| dense | 1 |\n")
    with pytest.raises(DataError, match="summary rows"):
        script.verdict(folder)
    (folder / "errors-0.4.md").write_text(_errors(2.2, 2.5, (4.0, 14.0), (1.5, 2.0)))
    (folder / "ls-test.log").write_text("{}\n")
    with pytest.raises(DataError, match="Spearman"):
        script.verdict(folder)
