"""The ``hipp-baselines`` plugin: entry points, every method on both tiny models, ECoFLaP and SliceGPT math."""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.checkpoint import load_pruned, save_pruned
from hipp_torchprune.cli import main
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, mlp_param_total
from hipp_torchprune.registry import Registry, make_plugin_manager
from tests.conftest import samples

plugin = pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
owl = pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")
from hipp_baselines import slicegpt as sg
from hipp_baselines.ecoflap import zeroth_order_scores

EXPECTED = {"random": ("random", DEFAULT_ROW_SCORE), "wanda": ("uniform", "wanda-sp"),
            "llm-pruner": ("llm-pruner", "taylor"), "owl": ("owl", DEFAULT_ROW_SCORE),
            "ecoflap": ("ecoflap", DEFAULT_ROW_SCORE), "flap": ("flap", "flap")}


def _registry() -> Registry:
    reg = Registry(make_plugin_manager(autoload=False))
    reg.pm.register(owl)
    reg.pm.register(plugin)
    return reg


def _inputs(model: torch.nn.Module, processor: object, n: int = 3) -> dict:
    s = samples(n, seed=5)
    return api.get_adapter(model).encode(processor, [x[0] for x in s], [x[1] for x in s])


def test_entry_point_registers_methods_and_ecoflap() -> None:
    assert "hipp_baselines" in {ep.name for ep in importlib.metadata.entry_points(group="hipp_torchprune")}
    auto = Registry(make_plugin_manager(autoload=True))
    assert set(auto.names("method")) >= {*EXPECTED, "slicegpt"} and "ecoflap" in auto.names("strategy")
    off = Registry(make_plugin_manager(autoload=False))
    assert off.names("method") == ["hipp"] and "ecoflap" not in off.names("strategy")  # hipp is built in


def test_method_aliases() -> None:
    methods = _registry().all("method")
    for name, (strategy, importance) in EXPECTED.items():
        assert (methods[name].strategy, methods[name].importance) == (strategy, importance)


@pytest.mark.parametrize("method", [*EXPECTED, "slicegpt"])
def test_every_method_on_tiny_models(tiny, method: str, tmp_path: Path) -> None:
    name, model, processor = tiny
    reg = _registry()
    calib = samples(3)
    stats = api.calibrate(model, processor, calib, with_grads=True, registry=reg)
    ctx = MethodContext(processor, calib, stats, round_to=16, seed=1, registry=reg)
    total = mlp_param_total(model, reg)
    impl = reg.get("method", method)()
    if method == "slicegpt" and name == "tiny-qwen2_5_vl":
        with pytest.raises(sg.SliceGPTUnsupportedError, match="Qwen2.5-VL"):
            impl.prune(model, 0.3, ctx)
        return
    report = impl.prune(model, 0.3, ctx)
    assert abs(report.realized_sparsity - 0.3) < 0.03
    if report.kind == "mlp-rows":
        assert list(report.widths) == api.get_adapter(model, reg).intermediate_widths()
        assert sum(report.widths) < 4 * 256 and abs(mlp_param_total(model, reg) / total - 0.7) < 0.03
    batch = _inputs(model, processor)
    if report.kind == "slicing":
        assert model.model.language_model.embed_tokens.weight.shape[1] == report.details["hidden_after"] < 64
    save_pruned(model, tmp_path / "ck", processor, registry=reg)
    loaded = load_pruned(tmp_path / "ck", registry=reg)  # a sliced LLaVA reloads too
    assert {n: p.shape for n, p in loaded.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_ecoflap_scores_are_deterministic_and_leave_model_untouched() -> None:
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava")
    batch = _inputs(model, processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = zeroth_order_scores(model, processor, samples(2), seed=3)
    b = zeroth_order_scores(model, processor, samples(2), seed=3)
    assert a == b and len(a) == 4 and all(x > 0 for x in a)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit-identical
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_ecoflap_through_hipp_prune(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import hipp_torchprune.registry as registry_module

    monkeypatch.setattr(registry_module, "default_registry", _registry)
    assert main(["prune", "--model", "tiny-llava", "--strategy", "ecoflap", "--importance", "magnitude",
                 "--sparsity", "0.3", "--round-to", "16", "--calib-n", "2"]) == 0
    assert "realized MLP sparsity" in capsys.readouterr().out


def test_dims_for_budget_by_hand() -> None:
    assert sg.dims_for_budget(1000, 300, 64) == 3
    assert sg.dims_for_budget(1200, 300, 64) == 4
    assert sg.dims_for_budget(10**9, 300, 64) == 63
    assert sg.dims_for_budget(0, 300, 64) == 0
    assert sg.dims_for_budget(1000, 300, 64, multiple=4) == 4
    assert sg.dims_for_budget(100, 300, 64, multiple=4) == 0


def test_slicegpt_unsliced_rotation_keeps_logits() -> None:
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava")
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial norm weights, so folding is exercised
        for name, p in model.named_parameters():
            if "language_model" in name and "norm" in name:
                p.uniform_(0.5, 1.5)
    batch = _inputs(model, processor)
    rotated = copy.deepcopy(model)
    sg.fold_norms(rotated)
    q = sg.pca_basis(sg.residual_covariance(rotated, processor, samples(3)))
    assert torch.allclose(q.T @ q, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-8)
    sg.rotate_and_slice(rotated, q, q.shape[0])
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, rotated(**batch).logits, atol=1e-4)
    before = sum(p.numel() for p in rotated.parameters())
    per_dim = sg.params_per_hidden_dim(rotated)
    sg.rotate_and_slice(rotated, torch.eye(64, dtype=torch.float64), 60)
    assert before - sum(p.numel() for p in rotated.parameters()) == 4 * per_dim



@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_methods_use_the_callers_registry(method: str) -> None:
    """A model that only the caller's registry can adapt is pruned through that registry, never the default."""
    from hipp_torchprune.adapters.llava import LlavaAdapter
    from hipp_torchprune.errors import UnsupportedModelError
    from hipp_torchprune.models.tiny import build_tiny

    model, processor = build_tiny("tiny-llava", seed=0)
    model.__class__ = type("CustomLlava", (type(model),), {})
    custom = type("CustomLlavaAdapter", (LlavaAdapter,), {"name": "custom-llava", "model_class_names": ("CustomLlava",)})

    class Plugin:
        @staticmethod
        @plugin.hookimpl
        def hipp_model_adapters() -> list[type]:
            return [custom]

    reg = _registry()
    reg.pm.register(Plugin())
    with pytest.raises(UnsupportedModelError):
        api.get_adapter(model)  # the default registry does not know the class
    calib = samples(3)
    stats = api.calibrate(model, processor, calib, with_grads=True, registry=reg)
    report = reg.get("method", method)().prune(model, 0.3, MethodContext(processor, calib, stats, round_to=16,
                                                                          registry=reg))
    assert abs(report.realized_sparsity - 0.3) < 0.03
    if report.kind == "mlp-rows":
        assert list(report.widths) == api.get_adapter(model, reg).intermediate_widths()
