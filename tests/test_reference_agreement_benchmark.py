"""benchmarks/reference_agreement.py: the comparison machinery without the references' code (always),
and against the references' checkouts when ``HIPP_REFS`` (default ``/tmp/refs``) holds them."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")

ROOT = Path(__file__).resolve().parents[1]
REFS = Path(os.environ.get("HIPP_REFS", "/tmp/refs"))


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_agreement", ROOT / "benchmarks" / "reference_agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_agreement"] = module
    spec.loader.exec_module(module)
    return module


ra = _bench()


def test_spearman_and_jaccard_by_hand() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ra.spearman(a, a * 10) == pytest.approx(1.0)
    assert ra.spearman(a, -a) == pytest.approx(-1.0)
    assert ra.spearman(a, torch.tensor([2.0, 1.0, 3.0, 4.0])) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert ra.jaccard(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ra.spearman(a, a[:3])


def test_compare_and_table_report_a_disagreeing_reference() -> None:
    ours = ra.Selection([torch.tensor([1.0, 2.0, 3.0, 4.0])], {0.5: [torch.tensor([2, 3])]})
    ref = ra.Selection([torch.tensor([4.0, 3.0, 2.0, 1.0])], {0.5: [torch.tensor([1, 3, 0])]})
    (row,) = ra.compare("m", ours, ref)
    assert row.rho == pytest.approx(-1.0) and row.overlap == {0.5: pytest.approx(0.25)}
    assert row.widths == {0.5: (2, 3)}
    table = ra.markdown_table([row]).splitlines()
    assert table[0] == "| method | layer | Spearman of scores | kept at 0.5 |"
    assert table[2] == "| m | 0 | -1.0000 | 0.250 (2/3) |"


def test_self_check_runs_the_whole_comparison_with_our_scorers(capsys: pytest.CaptureFixture[str]) -> None:
    ra.main(["--self-check", "--intermediate", "64", "--samples", "2", "--seqlen", "8", "--ratios", "0.25,0.5"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "|---" not in line]
    rows = [line.strip("| ").split(" | ") for line in lines[1:]]
    assert sorted({r[0] for r in rows}) == ["flap", "llm-pruner", "wanda-sp"] and len(rows) == 12
    assert all(r[2] == "1.0000" and r[3].startswith("1.000 (") and r[4].startswith("1.000 (") for r in rows)
    llm = {int(r[1]): r[4] for r in rows if r[0] == "llm-pruner"}
    assert llm[0] == "1.000 (64/64)" and llm[3] == "1.000 (64/64)"  # the dense end layers of a 4-layer model


@pytest.mark.parametrize("argv", [["--self-check", "--methods", "nope"], ["--self-check", "--ratios", "0.5,x"],
                                  ["--self-check", "--ratios", "0.99"], ["--refs", "/nonexistent/refs"], []])
def test_bad_arguments_exit_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ra.main(argv)
    assert exc.value.code == 2


def test_missing_reference_checkout_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="reference checkout not found"):
        ra.load_reference("ref_missing", tmp_path / "FLAP" / "lib", "prune")


@pytest.mark.skipif(not all((REFS / name).is_dir() for name in ("FLAP", "LLM-Pruner", "OWL")),
                    reason="the references' checkouts are not in HIPP_REFS (see docs/baselines.md)")
def test_against_the_references_code() -> None:
    bench = ra.Bench.build(ra.Setup(), [0.5])
    wanda = ra.run_wanda_sp(bench, REFS)
    assert all(r.rho == pytest.approx(1.0) for r in wanda) and wanda[0].overlap[0.5] == 1.0  # layer 0: same inputs
    assert all(r.rho == pytest.approx(1.0) and r.overlap[0.5] == 1.0 for r in ra.run_llm_pruner(bench, REFS))
    flap_rows, bias = ra.run_flap(bench, REFS)
    assert all(r.rho > 0.9 for r in flap_rows) and bias < 1e-3  # the reference keeps the mean in fp16
    ref_d, _ = ra.owl_reference(REFS, bench.causal, bench.ids, bench.setup, 0.5, 0.08, 5.0)
    ours = ra.owl_ours(bench.llava, bench.ids, ra.our_stats(bench.llava, bench.ids, False), 0.5, 0.08, 5.0)
    assert [100 * d for d in ours["D_all"]] == pytest.approx(ref_d)
