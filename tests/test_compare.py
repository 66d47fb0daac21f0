"""``hipp compare``: the pure table math, and a one-seed run on tiny-llava that resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hipp_torchprune.compare import (
    CompareConfig,
    CompareError,
    cell_key,
    fmt_pm,
    mean_std,
    pareto_front,
    refit_mismatches,
    render_tables,
    run_compare,
)
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, ROW_SCORES
from hipp_torchprune.provenance import world_fingerprint
from hipp_torchprune.recovery import RecoveryConfig
from hipp_torchprune.registry import Registry, make_plugin_manager

plugin = pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
owl = pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")


def test_mean_std_by_hand() -> None:
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert fmt_pm([0.5, 0.7]) == "60.0 ± 14.1"


def test_refit_mismatches_name_each_policy_trained_for_another_refit() -> None:
    from types import SimpleNamespace

    policies = {"main": SimpleNamespace(meta={"reward": {"reconstruct": "lstsq"}}),
                "old": SimpleNamespace(meta={}),  # saved before the setting: trained without a refit
                "plain": SimpleNamespace(meta={"reward": {"reconstruct": "none"}})}
    tail = "in its reward, but this comparison deploys every method with reconstruct='lstsq'"
    assert refit_mismatches(policies, "lstsq") == [f"policy 'old' was trained with reconstruct='none' {tail}",
                                                   f"policy 'plain' was trained with reconstruct='none' {tail}"]
    assert [m.split("'")[1] for m in refit_mismatches(policies, "none")] == ["main"]


def test_pareto_front_by_hand() -> None:
    assert pareto_front([(1, 1), (2, 0), (0, 2), (0.5, 0.5)]) == [2, 0, 1]
    assert pareto_front([(1, 1), (1, 1)]) == [0, 1]  # equal points do not dominate each other
    assert pareto_front([(0, 0), (1, 1)]) == [1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hipp_torchprune.cli import main
    from hipp_torchprune.world import build_world

    root = tmp_path_factory.mktemp("cmp")
    build_world(root / "world", 0, 200)
    assert main(["train", "--model", "tiny-llava", "--data", str(root / "world"), "--out", str(root / "policy"),
                 "--steps", "1", "--group", "2", "--round-to", "16", "--budget", "0.2,0.5", "--reward-limit", "4",
                 "--calib-n", "2"]) == 0
    return root / "world", root / "policy"


def test_compare_runs_and_resumes(setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hipp_torchprune import compare, methods

    world, policy = setup
    reg = Registry(make_plugin_manager(autoload=False))
    reg.pm.register(owl)
    reg.pm.register(plugin)
    pruned_with = []  # every cell prunes through the function `hipp prune --method` uses
    real = methods.prune_with_method
    monkeypatch.setattr(methods, "prune_with_method", lambda m, name, *a: pruned_with.append(name) or real(m, name, *a))
    config = CompareConfig(model="tiny-llava", data=str(world), policy=str(policy), methods=("wanda", "ecoflap"),
                           seeds=(0,), table3=((0.8, 0.1, 0.1),), samplers=(("mixed", str(policy)),),
                           table4=((0.5, 0.4, 0.1),), ablations=(("no-gate", str(policy)),),
                           recovery=RecoveryConfig(steps=1, batch_size=2, limit=8),
                           calib_n=2, limit=8, dense_recovery=True)
    results = run_compare(config, tmp_path, progress=False, registry=reg)
    cells = results["cells"]
    assert set(cells) == {cell_key("table1", m, config.preference, 0) for m in ("hipp", "wanda", "ecoflap")} | {
        cell_key("table3", "hipp", (0.8, 0.1, 0.1), 0), cell_key("table4", "mixed", (0.5, 0.4, 0.1), 0),
        cell_key("table5", "no-gate", config.preference, 0), cell_key("reference", "dense", None, 0)}
    # table1 x3 + tables 3, 4, 5; the dense reference is recovered but never pruned
    assert sorted(pruned_with) == ["ecoflap", "hipp", "hipp", "hipp", "hipp", "wanda"]
    reference = cells[cell_key("reference", "dense", None, 0)]
    assert reference["realized_sparsity"] == 0.0 and reference["pre_recovery"] == results["dense"]
    ablated = cells[cell_key("table5", "no-gate", config.preference, 0)]
    assert ablated["details"]["policy"] == "no-gate"  # the same policy file here: the same plan as HiPP's
    assert ablated["widths"] == hipp_widths(cells, config)
    hipp = cells[cell_key("table1", "hipp", config.preference, 0)]
    assert hipp["details"]["policy"] == "main" and hipp["details"]["strategy"] == "hipp"
    # HiPP and ECoFLaP choose rows by the shared default row score; Wanda-sp keeps its own
    assert hipp["details"]["importance"] == DEFAULT_ROW_SCORE
    assert cells[cell_key("table1", "ecoflap", config.preference, 0)]["details"]["importance"] == DEFAULT_ROW_SCORE
    assert cells[cell_key("table1", "wanda", config.preference, 0)]["details"]["importance"] == "wanda-sp"
    for m in ("wanda", "ecoflap"):
        cell = cells[cell_key("table1", m, config.preference, 0)]
        assert cell["matched"] and abs(cell["realized_sparsity"] - hipp["realized_sparsity"]) <= 0.005
        assert 0.0 <= cell["post_recovery"]["pope_adv_bal_acc"] <= 1.0
    assert (tmp_path / "operating_points.png").stat().st_size > 0
    n_rows = {task: len(results["strata"][task]) for task in ("pope_adversarial", "scienceqa")}
    assert n_rows == {"pope_adversarial": 8, "scienceqa": 8} and set(results["strata"]["scienceqa"]) == {"0"}
    for cell in cells.values():  # every cell keeps its per-row answers, consistent with its accuracy
        assert {t: len(r) for t, r in cell["rows"].items()} == n_rows
        assert cell["rows"]["scienceqa"].count("1") / 8 == pytest.approx(cell["post_recovery"]["sqa_acc"])
    text = (tmp_path / "tables.md").read_text()
    assert "minus the best baseline on pope_adv_bal_acc" in text and "x 1 seeds" in text
    assert "Table 1" in text and "| wanda |" in text and "Table 4" in text and "mixed @" in text
    assert "| dense + recovery | 0.0 ± 0.0 |" in text
    assert "dense + recovery minus the best baseline on sqa_acc" in text  # the headroom, bootstrapped too
    assert results["kinds"] == {"wanda": "mlp-rows", "ecoflap": "mlp-rows"} and "MLP-row baseline" not in text
    assert "Table 5" in text and "| full HiPP |" in text and "| no-gate |" in text
    control = results["compression_control"]
    assert control["w_comp"] == [0.1, 0.3, 0.5, 0.7, 0.9] and len(control["realized_sparsity"]) == 5
    assert "Compression sweep" in text and "r(w_comp, sparsity)" in text
    # resume: a second run finds every cell done and touches nothing
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    again = run_compare(config, tmp_path, progress=False, registry=reg)
    assert again["cells"] == json.loads((tmp_path / "results.json").read_text())["cells"]
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp
    # the reference only adds cells: a run without it resumes the same results
    assert run_compare(CompareConfig(**{**config.__dict__, "dense_recovery": False}), tmp_path, progress=False,
                       registry=reg)["cells"] == again["cells"]
    changed = CompareConfig(**{**config.__dict__, "calib_n": 3})
    with pytest.raises(CompareError, match="different comparison"):
        run_compare(changed, tmp_path, progress=False, registry=reg)
    with pytest.raises(CompareError, match="unknown method"):
        run_compare(CompareConfig(**{**config.__dict__, "methods": ("nope",)}), tmp_path / "x", registry=reg)
    # another query of the same policy at the same sparsity reuses the baseline cells, and runs only HiPP's
    pruned_with.clear()
    other = CompareConfig(**{**config.__dict__, "table3": (), "samplers": (), "ablations": ()})
    reused = run_compare(other, tmp_path / "reuse", progress=False, registry=reg, baselines_from=tmp_path)["cells"]
    assert pruned_with == ["hipp"]
    for m in ("wanda", "ecoflap"):
        key = cell_key("table1", m, config.preference, 0)
        assert reused[key]["reused_from"] == str(tmp_path) and reused[key]["rows"] == cells[key]["rows"]
    assert "Baseline cells reused from" in (tmp_path / "reuse" / "tables.md").read_text()
    assert {c["code"] for c in cells.values()} == {compare.code_fingerprint()}  # every cell is stamped
    # other code: nothing is reused from the donor, and resuming says its cells are another code's
    monkeypatch.setattr(compare, "code_fingerprint", lambda: "0" * 16)
    pruned_with.clear()
    run_compare(other, tmp_path / "other-code", progress=False, registry=reg, baselines_from=tmp_path)
    assert sorted(pruned_with) == sorted(["hipp", *config.methods])
    with pytest.warns(UserWarning, match="computed by other code"):
        assert run_compare(config, tmp_path, progress=False, registry=reg)["cells"] == cells
    with pytest.raises(CompareError, match="different calib_n"):
        run_compare(changed, tmp_path / "y", progress=False, registry=reg, baselines_from=tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    for donor, message in ((tmp_path / "bad", "not a results file"), (tmp_path / "none", "does not exist")):
        with pytest.raises(CompareError, match=message):
            run_compare(other, tmp_path / "z", progress=False, registry=reg, baselines_from=donor)
    assert not (tmp_path / "z").exists()  # refused before anything is written
    # a world rebuilt at the same path that came out different is neither resumed nor borrowed from
    assert results["world"] == world_fingerprint(world) and results["world"] is not None
    recorded = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**recorded, "world": "f" * 64}))
    with pytest.raises(CompareError, match="another world"):
        run_compare(config, tmp_path, progress=False, registry=reg)
    with pytest.raises(CompareError, match="another world"):
        run_compare(other, tmp_path / "w", progress=False, registry=reg, baselines_from=tmp_path)
    assert not (tmp_path / "w").exists()


def hipp_widths(cells: dict, config: CompareConfig) -> list[int]:
    """The Table-1 HiPP cell's kept widths."""
    return cells[cell_key("table1", "hipp", config.preference, 0)]["widths"]


def test_pearson_and_controllability_by_hand() -> None:
    from hipp_torchprune.compare import controllability, pearson

    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9934, abs=1e-4) and pearson([1, 2], [5, 5]) == 0.0
    with pytest.raises(ValueError):
        pearson([1.0], [1.0])

    def cell(seed: int, w_rob: float, pope: float, sqa: float) -> dict:
        return {"seed": seed, "preference": [w_rob, 0.9 - w_rob, 0.1],
                "post_recovery": {"pope_adv_bal_acc": pope, "sqa_acc": sqa}}

    cells = [cell(0, 0.8, 0.9, 0.5), cell(0, 0.45, 0.8, 0.6), cell(0, 0.1, 0.7, 0.7),
             cell(1, 0.8, 0.7, 0.6), cell(1, 0.1, 0.9, 0.6), cell(2, 0.8, 0.9, 0.6)]
    r = controllability(cells)
    assert set(r) == {0, 1}  # seed 2 has one preference: no correlation
    assert r[0] == pytest.approx({"r_rob_pope_adv": 1.0, "r_util_sqa": 1.0})
    assert r[1]["r_rob_pope_adv"] == pytest.approx(-1.0) and r[1]["r_util_sqa"] == 0.0


def test_bootstrap_lines_pick_the_best_baseline_and_pair_the_rows_by_hand() -> None:
    from hipp_torchprune.compare import bootstrap_lines

    def cell(method: str, seed: int, pope: str, sqa: str, table: str = "table1", pref: tuple = (0.6, 0.3, 0.1),
             sparsity: float = 0.32) -> dict:
        acc = {"pope_adv_bal_acc": pope.count("1") / len(pope), "sqa_acc": sqa.count("1") / len(sqa)}
        return {"table": table, "method": method, "preference": list(pref), "seed": seed, "realized_sparsity": sparsity,
                "post_recovery": acc, "rows": {"pope_adversarial": pope, "scienceqa": sqa}}

    cells = [cell("hipp", 0, "1111", "1100"), cell("hipp", 1, "1111", "1100"),
             cell("owl", 0, "1100", "1111"), cell("owl", 1, "1100", "1111"),
             cell("wanda", 0, "1000", "0000"), cell("wanda", 1, "1000", "0000"), cell("wanda", 2, "0000", "0000")]
    results = {"cells": {str(i): c for i, c in enumerate(cells)}, "config": {"tolerance": 0.005},
               "strata": {"pope_adversarial": "1100", "scienceqa": "0000"}}
    pope, sqa = bootstrap_lines(results, resamples=200)[1:]
    assert pope.startswith("HiPP (0.60, 0.30, 0.10) minus the best baseline on pope_adv_bal_acc")
    # POPE: owl is best (0.5 vs 0.25); HiPP is right on every row, owl on the gold-yes ones only:
    # balanced accuracy 1.0 vs 0.5, and every resample of the "no" stratum gives the same +1.0
    assert "(owl): +50.0 points, 95 % interval [+50.0, +50.0]" in pope and "4 test rows x 2 seeds" in pope
    assert "(owl): -50.0 points" in sqa and "includes 0" not in sqa
    no_rows = {"cells": {k: {kk: vv for kk, vv in c.items() if kk != "rows"} for k, c in results["cells"].items()},
               "strata": results["strata"]}
    assert "No paired bootstrap" in bootstrap_lines(no_rows)[1]
    # Table-3 queries at Table 1's sparsity (within the tolerance) get their own lines; others do not
    table3 = [cell("hipp", s, "1111", "1111", "table3", (0.1, 0.8, 0.1), 0.324) for s in (0, 1)]
    table3 += [cell("hipp", s, "1111", "1111", "table3", (0.3, 0.3, 0.4), 0.45) for s in (0, 1)]
    results["cells"] |= {f"t3-{i}": c for i, c in enumerate(table3)}
    lines = bootstrap_lines(results, resamples=200)[1:]
    assert len(lines) == 4 and lines[2].startswith("HiPP (0.10, 0.80, 0.10) minus the best baseline on pope_adv_bal_acc")
    assert "(owl): +0.0 points" in lines[3]  # right on every ScienceQA row, as owl is
    # the dense + recovery reference comes last: the headroom over the best baseline, never a baseline itself
    results["cells"] |= {f"ref-{s}": {**cell("dense", s, "1110", "1111", "reference", (0, 0, 0), 0.0),
                                      "preference": None} for s in (0, 1)}
    lines = bootstrap_lines(results, resamples=200)[1:]
    assert len(lines) == 6 and lines[4].startswith("dense + recovery minus the best baseline on pope_adv_bal_acc (owl)")
    assert "(owl): +25.0 points" in lines[4] and "(owl): +0.0 points" in lines[5]
    # owl slicing instead of pruning rows: every line again against the best MLP-row baseline (wanda)
    results["kinds"] = {"owl": "slicing", "wanda": "mlp-rows"}
    both = bootstrap_lines(results, resamples=200)[1:]
    assert both[:6] == lines and len(both) == 12
    assert both[6].startswith("HiPP (0.60, 0.30, 0.10) minus the best MLP-row baseline on pope_adv_bal_acc (wanda)")
    assert "(wanda): +75.0 points" in both[6] and "(wanda): +50.0 points" in both[7]


def test_render_tables_without_table4() -> None:
    text = render_tables({"cells": {}, "dense": None})
    assert "Not run: no sampler policies" in text and "Not run: no ablation policies" in text


def test_row_score_reaches_every_cells_context() -> None:
    """``CompareConfig.row_score`` (default :data:`DEFAULT_ROW_SCORE`) is the row score of every cell."""
    from types import SimpleNamespace

    from hipp_torchprune.compare import SharedInputs, _context

    policy = SimpleNamespace(round_to=16, policy=SimpleNamespace(config=SimpleNamespace(r_max=0.9)))
    assert CompareConfig(model="m", data="d", policy="p").row_score == DEFAULT_ROW_SCORE
    for score in ("wanda-sp", "wanda-mix"):
        shared = SharedInputs(None, None, None, [], None, {}, None, score)
        assert _context(shared, policy, 0).row_score == score
        assert _context(shared, policy, 0, (0.6, 0.3, 0.1)).row_score == score
    assert _context(SharedInputs(None, None, None, [], None, {}, None), policy, 0).row_score == DEFAULT_ROW_SCORE
    refit = SharedInputs(None, None, None, [], None, {}, None, DEFAULT_ROW_SCORE, "lstsq")
    assert _context(refit, policy, 0).reconstruct == _context(refit, policy, 0, (0.6, 0.3, 0.1)).reconstruct == "lstsq"
    assert _context(SharedInputs(None, None, None, [], None, {}, None), policy, 0).reconstruct == "none"


def test_compare_cli_passes_the_row_score(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hipp_torchprune import compare
    from hipp_torchprune.cli import main

    seen = []

    def fake_run(config: CompareConfig, out: str, **kwargs: object) -> dict:
        seen.append(config)
        (Path(out) / "tables.md").write_text("tables")
        return {}

    monkeypatch.setattr(compare, "run_compare", fake_run)
    other = next(s for s in ROW_SCORES if s != DEFAULT_ROW_SCORE)
    base = ["compare", "--data", "W", "--policy", "P", "--out", str(tmp_path)]
    assert main(base) == 0 and main([*base, "--row-score", other]) == 0
    assert [c.row_score for c in seen] == [DEFAULT_ROW_SCORE, other]
    assert seen[0].signature() != seen[1].signature()
    assert main([*base, "--reconstruct", "lstsq"]) == 0
    assert seen.pop().reconstruct == "lstsq" and seen[0].reconstruct == "none"
    assert main([*base, "--ablation-policy", "no-gate=G", "--ablation-policy", "flat=F"]) == 0
    assert seen[-1].ablations == (("no-gate", "G"), ("flat", "F")) and seen[-1].signature() == seen[0].signature()
    assert main([*base, "--dense-recovery"]) == 0
    assert seen.pop().dense_recovery and not seen[0].dense_recovery
    for bad in (["--ablation-policy", "no-gate"], ["--ablation-policy", "a=X", "--sampler-policy", "a=Y"],
                ["--ablation-policy", "main=X"]):
        assert main([*base, *bad]) == 2
    assert len(seen) == 3  # refused before running


@pytest.mark.parametrize(("setting", "message"), [({"row_score": "taylor"}, "row score 'taylor' is not one of"),
                                                  ({"reconstruct": "obs"}, "reconstruction 'obs' is not one of")])
def test_unknown_row_score_or_refit_is_refused_before_loading(setting: dict, message: str, tmp_path: Path) -> None:
    config = CompareConfig(model="nope", data="W", policy="P", methods=(), **setting)
    with pytest.raises(CompareError, match=message):
        run_compare(config, tmp_path, progress=False, registry=Registry(make_plugin_manager(autoload=False)))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("methods", "message"), [(("hipp",), "HiPP is always compared"),
                                                  (("hipp", "wanda"), "HiPP is always compared"),
                                                  (("wanda", "wanda"), "names a method twice")])
def test_methods_that_would_duplicate_cells_are_refused_before_loading(methods: tuple[str, ...], message: str,
                                                                       tmp_path: Path) -> None:
    reg = Registry(make_plugin_manager(autoload=False))
    reg.pm.register(pytest.importorskip("hipp_baselines.plugin"))
    config = CompareConfig(model="nope", data="W", policy="P", methods=methods)
    with pytest.raises(CompareError, match=message):
        run_compare(config, tmp_path, progress=False, registry=reg)
    assert not list(tmp_path.iterdir())
