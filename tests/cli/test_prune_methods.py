"""``hipp prune --method``: every registered method writes a checkpoint that reloads to the same
logits, ``hipp eval`` runs on it, ``hipp recover`` takes a sliced one; bad combinations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hipp_torchprune.checkpoint as checkpoint
import hipp_torchprune.registry as registry_module
from hipp_torchprune import api
from hipp_torchprune.checkpoint import load_pruned
from hipp_torchprune.cli import main
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.registry import Registry
from tests.conftest import baselines_registry, samples

pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")

#: Every registered method (``test_table_covers_every_registered_method`` keeps this complete).
METHODS = ("random", "wanda", "llm-pruner", "owl", "ecoflap", "flap", "slicegpt", "hipp")
EVAL_TASKS = {"pope_random", "pope_popular", "pope_adversarial", "scienceqa"}


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The CLI's default registry, with the baselines registered (autoload stays off)."""
    reg = baselines_registry()
    monkeypatch.setattr(registry_module, "default_registry", lambda: reg)
    return reg


@pytest.fixture(scope="module")
def world(make_world) -> Path:
    """An 8-image proving-ground world (calibration for every method, data for eval/recover)."""
    return make_world(0, 8)


@pytest.fixture(scope="module")
def policy(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step HiPP policy for tiny-llava (only its plan matters here)."""
    out = tmp_path_factory.mktemp("policy") / "p"
    assert main(["train", "--model", "tiny-llava", "--data", str(world), "--out", str(out), "--steps", "1",
                 "--group", "2", "--round-to", "16", "--budget", "0.2,0.5", "--reward-limit", "4",
                 "--calib-n", "2"]) == 0
    return out


def _prune(method: str, world: Path, policy: Path, out: Path, *extra: str) -> list[str]:
    args = ["prune", "--model", "tiny-llava", "--method", method, "--calib", str(world), "--calib-n", "4",
            "--sparsity", "0.3", "--round-to", "16", "--out", str(out), *extra]
    return args + (["--policy", str(policy), "--preference", "0.6,0.3,0.1"] if method == "hipp" else [])


def _logits(model: torch.nn.Module, processor: object) -> torch.Tensor:
    s = samples(3, seed=7)
    batch = api.get_adapter(model).encode(processor, [x[0] for x in s], [x[1] for x in s])
    with torch.no_grad():
        return model(**batch).logits


def test_table_covers_every_registered_method(plugins: Registry) -> None:
    assert sorted(plugins.names("method")) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_method_checkpoint_reloads_exactly_and_evaluates(method: str, world: Path, policy: Path, plugins: Registry,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    saved = []
    real_save = checkpoint.save_pruned
    monkeypatch.setattr(checkpoint, "save_pruned",
                        lambda model, *a, **k: saved.append(model) or real_save(model, *a, **k))
    out = tmp_path / "ck"
    assert main([*_prune(method, world, policy, out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["method"], report["out"]) == (method, str(out)) and 0.15 < report["realized_sparsity"] < 0.5
    assert json.loads((out / "plan.json").read_text())["method"] == method
    loaded, processor = load_pruned(out), build_tiny("tiny-llava")[1]
    dense = sum(p.numel() for p in build_tiny("tiny-llava", seed=0)[0].parameters())
    assert sum(p.numel() for p in loaded.parameters()) < dense
    if report["kind"] == "slicing":
        assert loaded.model.language_model.embed_tokens.embedding_dim == report["details"]["hidden_after"] < 64
    else:
        assert [layer["width_after"] for layer in report["layers"]] == api.get_adapter(loaded).intermediate_widths()
    assert torch.equal(_logits(saved[0], processor), _logits(loaded, processor))
    assert main(["eval", "--model", str(out), "--data", str(world), "--limit", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == EVAL_TASKS and all(r["n"] > 0 for r in results.values())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "slicegpt"])
def test_refitted_checkpoint_reloads_exactly(method: str, world: Path, policy: Path, plugins: Registry,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``--reconstruct lstsq``: every MLP-row method's checkpoint records the refit, carries a bias on
    each pruned down_proj, and reloads to the logits of the model it saved."""
    saved = []
    real_save = checkpoint.save_pruned
    monkeypatch.setattr(checkpoint, "save_pruned",
                        lambda model, *a, **k: saved.append(model) or real_save(model, *a, **k))
    out = tmp_path / "ck"
    assert main([*_prune(method, world, policy, out, "--reconstruct", "lstsq"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "plan.json").read_text())["reconstruct"] == "lstsq"
    loaded, processor = load_pruned(out), build_tiny("tiny-llava")[1]
    for layer, mlp in zip(report["layers"], api.get_adapter(loaded).mlps()):
        assert (mlp.down.bias is not None) == (layer["width_after"] < layer["width_before"])
    assert torch.equal(_logits(saved[0], processor), _logits(loaded, processor))


def test_sliced_checkpoint_recovers_and_reloads(world: Path, policy: Path, plugins: Registry, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_prune("slicegpt", world, policy, tmp_path / "sliced")) == 0
    assert main(["recover", "--model", str(tmp_path / "sliced"), "--data", str(world), "--steps", "1",
                 "--batch-size", "2", "--limit", "4", "--lora-layers", "1", "--out", str(tmp_path / "rec"),
                 "--no-progress"]) == 0
    sliced, recovered = load_pruned(tmp_path / "sliced"), load_pruned(tmp_path / "rec")
    shapes = {n: p.shape for n, p in sliced.named_parameters()}
    assert {n: p.shape for n, p in recovered.named_parameters()} == shapes
    assert shapes["model.language_model.embed_tokens.weight"][1] < 64
    assert not torch.equal(sliced.lm_head.weight, recovered.lm_head.weight)  # recovery trained the head


def test_qwen_slicegpt_is_refused_before_calibration(plugins: Registry, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import hipp_torchprune.calib_data as calib_data

    def no_calibration(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibrated before refusing")

    monkeypatch.setattr(calib_data, "calibration_samples", no_calibration)
    out = tmp_path / "ck"
    assert main(["prune", "--model", "tiny-qwen2_5_vl", "--method", "slicegpt", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "slicegpt supports LLaVA only, not Qwen2_5_VLForConditionalGeneration" in err and "not changed" in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "wanda", "--strategy", "uniform"], "does not go with --strategy or --importance"),
    (["--method", "wanda", "--importance", "taylor"], "does not go with --strategy or --importance"),
    (["--method", "nope"],
     "unknown method 'nope'; valid names: ecoflap, flap, hipp, llm-pruner, owl, random, slicegpt, wanda"),
    (["--method", "hipp"], "--method hipp needs a trained policy and a preference (--policy DIR"),
    (["--method", "wanda", "--policy", "POLICY", "--preference", "1,1,1"], "go with --method hipp or --strategy hipp"),
    (["--method", "slicegpt", "--reconstruct", "lstsq"],
     "--reconstruct refits pruned MLP rows: --method slicegpt is a slicing method"),
])
def test_bad_method_options_exit_2(args: list[str], message: str, policy: Path, plugins: Registry, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ck"
    args = [str(policy) if a == "POLICY" else a for a in args]
    assert main(["prune", "--model", "tiny-llava", "--round-to", "16", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_method_from_config_file_and_clash(plugins: Registry, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "prune.yaml"
    cfg.write_text("method: llm-pruner\nsparsity: 0.5\nround_to: 16\ncalib_n: 2\n")
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "llm-pruner" and report["details"]["importance"] == "taylor"
    cfg.write_text("method: wanda\nstrategy: owl\n")
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg)]) == 2
    assert "does not go with --strategy" in capsys.readouterr().err


def test_method_on_a_checkpoint_needs_calib(plugins: Registry, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, processor = build_tiny("tiny-llava")
    checkpoint.save_pruned(model, tmp_path / "dense", processor)
    assert main(["prune", "--model", str(tmp_path / "dense"), "--method", "slicegpt", "--out",
                 str(tmp_path / "ck")]) == 2
    assert "--method slicegpt needs calibration data: pass --calib DATA_DIR" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


#: The registered methods that take the shared row score (``test_row_score_takers_are_complete``).
ROW_SCORE_METHODS = ("random", "owl", "ecoflap", "hipp")


def test_row_score_takers_are_complete(plugins: Registry) -> None:
    takers = [m for m in plugins.names("method") if getattr(plugins.get("method", m), "shared_row_score", False)]
    assert sorted(takers) == sorted(ROW_SCORE_METHODS)


def _kept_rows(dense: torch.nn.Module, pruned: torch.nn.Module) -> list[list[int]]:
    """Per layer, the dense gate rows the pruned model kept (rows are copied exactly)."""
    out = []
    for d, p in zip(api.get_adapter(dense).mlps(), api.get_adapter(pruned).mlps()):
        same = (p.gate.weight[:, None, :] == d.gate.weight[None, :, :]).all(-1)
        assert bool((same.sum(1) == 1).all())
        out.append(same.int().argmax(1).tolist())
    return out


def _top_rows(world: Path, score: str, widths: list[int]) -> list[list[int]]:
    """The rows ``score`` keeps at ``widths``, from the calibration ``hipp prune`` runs."""
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.loading import load_model
    from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS, cap_pixels
    from hipp_torchprune.pruning.operator import keep_indices, layer_scores

    model, processor = load_model("tiny-llava", seed=0)
    stats = api.calibrate(model, cap_pixels(processor, DEFAULT_MAX_PIXELS), calibration_samples(str(world), 4))
    scores = layer_scores(api.get_adapter(model), api.importance(score, model, stats))
    return [keep_indices(s, k).tolist() for s, k in zip(scores, widths)]


@pytest.mark.parametrize("method", ROW_SCORE_METHODS)
def test_row_score_chooses_the_rows_of_every_taker(method: str, world: Path, policy: Path, plugins: Registry,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--row-score`` reaches the method: it keeps the top rows of that score, which are not the
    other score's at the same widths; without the flag the method uses ``DEFAULT_ROW_SCORE``."""
    from hipp_torchprune.methods import DEFAULT_ROW_SCORE

    dense = build_tiny("tiny-llava", seed=0)[0]
    for score, flags in (("wanda", ["--row-score", "wanda"]), ("wanda-sp", ["--row-score", "wanda-sp"]),
                         (DEFAULT_ROW_SCORE, [])):
        out = tmp_path / f"{score}-{len(flags)}"
        assert main([*_prune(method, world, policy, out, *flags), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["details"]["importance"] == score
        widths = [layer["width_after"] for layer in report["layers"]]
        kept = _kept_rows(dense, load_pruned(out))
        assert kept == _top_rows(world, score, widths)
        other = "wanda-sp" if score == "wanda" else "wanda"
        assert kept != _top_rows(world, other, widths)


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "wanda", "--row-score", "wanda-mix"], "not --method wanda"),
    (["--method", "flap", "--row-score", "wanda"], "take the shared row score (ecoflap, hipp, owl, random)"),
    (["--row-score", "wanda-sp"], "give --importance instead"),
])
def test_row_score_refused_where_it_does_not_apply(args: list[str], message: str, plugins: Registry,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ck"
    assert main(["prune", "--model", "tiny-llava", "--calib-n", "2", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_row_score_outside_the_candidates_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", "tiny-llava", "--method", "owl", "--row-score", "magnitude", "--out",
              str(tmp_path / "ck")])
    assert exc.value.code == 2 and "invalid choice: 'magnitude'" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_row_score_from_a_config_file(world: Path, plugins: Registry, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``row_score`` in a ``--config`` YAML reaches the method like ``--row-score``; its default is the
    shared default, and a name outside the candidates is a config error before anything is written."""
    from hipp_torchprune.config import PruneConfig
    from hipp_torchprune.methods import DEFAULT_ROW_SCORE

    assert PruneConfig().row_score == DEFAULT_ROW_SCORE
    cfg = tmp_path / "prune.yaml"
    cfg.write_text("method: owl\nrow_score: wanda-sp\ncalib_n: 4\nround_to: 16\nsparsity: 0.3\n")
    out = tmp_path / "ck"
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg), "--calib", str(world), "--out", str(out),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["details"]["importance"] == "wanda-sp"
    cfg.write_text("method: owl\nrow_score: magnitude\n")
    assert main(["prune", "--model", "tiny-llava", "--config", str(cfg), "--out", str(tmp_path / "bad")]) == 2
    assert "row_score: 'magnitude' is not one of" in capsys.readouterr().err and not (tmp_path / "bad").exists()
