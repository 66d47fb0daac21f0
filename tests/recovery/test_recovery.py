"""Recovery on the tiny models: widths stay, LoRA merges exactly, same seed same result, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.checkpoint import load_pruned, save_pruned
from hipp_torchprune.cli import main
from hipp_torchprune.errors import DataError
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.recovery import RecoveryConfig, RecoveryError, recover
from hipp_torchprune.recovery.data import encode_rows, load_pool, step_rows
from hipp_torchprune.recovery.lora import ShapeSnapshot, attach, head_modules, merge
from hipp_torchprune.world import build_world

CFG = RecoveryConfig(steps=2, batch_size=4, lora_layers=2, lora_rank=4, save_every=1, limit=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    build_world(out, 0, 200)
    return out


def _pruned(name: str) -> tuple[torch.nn.Module, object]:
    model, processor = build_tiny(name, seed=0)
    plan = api.make_plan(model, "random", 0.4, round_to=16, seed=1)
    api.prune_model(model, plan, api.importance("magnitude", model))
    return model, processor


def test_only_head_norm_projector_and_lora_train(tiny) -> None:
    name, _, _ = tiny
    model, _ = _pruned(name)
    from hipp_torchprune.api import get_adapter

    adapter = get_adapter(model)
    net = attach(model, adapter, CFG)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    head = {id(p) for m in head_modules(adapter) for p in m.parameters()}
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert "lora_" in n or id(p) in head, n
    n_layers = len(adapter.decoder_layers())
    assert any(f"layers.{n_layers - 1}.mlp.down_proj.lora_A" in n for n in trainable)
    assert not any("layers.0.mlp" in n and "lora_" in n for n in trainable)  # only the last 2 layers


def test_merged_logits_equal_peft_and_widths_stay(tiny, world: Path) -> None:
    name, _, _ = tiny
    model, processor = _pruned(name)
    from hipp_torchprune.api import get_adapter

    adapter = get_adapter(model)
    snap = ShapeSnapshot.of(model, adapter)
    net = attach(model, adapter, CFG)
    torch.manual_seed(3)
    with torch.no_grad():  # non-trivial adapters (peft initializes B to zero)
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    pool = load_pool(processor, world, CFG)
    batch = encode_rows(processor, pool, step_rows(pool, CFG, 0))
    with torch.no_grad():
        before = net(**batch, use_cache=False).logits
        merged = merge(net, model)
        after = merged(**batch, use_cache=False).logits
    assert torch.allclose(before, after, atol=1e-5)
    snap.check(merged, get_adapter(merged))
    assert get_adapter(merged).intermediate_widths() == list(snap.widths)


def test_recover_same_seed_same_result_and_save(tiny, world: Path, tmp_path: Path) -> None:
    name, _, _ = tiny
    results = []
    for _ in range(2):
        model, processor = _pruned(name)
        widths = api.get_adapter(model).intermediate_widths()
        grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
        res = recover(model, processor, world, CFG, progress=False)
        assert api.get_adapter(res.model).intermediate_widths() == widths
        assert {n: p.requires_grad for n, p in res.model.named_parameters()} == grads_before
        assert len(res.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
        results.append(res)
    for (n, a), (_, b) in zip(results[0].model.state_dict().items(), results[1].model.state_dict().items()):
        assert torch.equal(a, b), n
    save_pruned(results[0].model, tmp_path / "ck", processor)
    assert api.get_adapter(load_pruned(tmp_path / "ck")).intermediate_widths() == widths


def test_resume_extends_to_the_same_weights(world: Path, tmp_path: Path) -> None:
    cfg4 = RecoveryConfig(**{**CFG.to_dict(), "steps": 4, "save_every": 2})
    model, processor = _pruned("tiny-llava")
    full = recover(model, processor, world, cfg4, progress=False, work_dir=tmp_path / "a").model
    model, processor = _pruned("tiny-llava")
    recover(model, processor, world, RecoveryConfig(**{**cfg4.to_dict(), "steps": 2}), progress=False,
            work_dir=tmp_path / "b")
    model, processor = _pruned("tiny-llava")
    resumed = recover(model, processor, world, cfg4, progress=False, work_dir=tmp_path / "b")
    assert resumed.resumed_from == 2 and [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n
    model, processor = _pruned("tiny-llava")
    with pytest.raises(RecoveryError, match="different recovery run"):
        recover(model, processor, world, RecoveryConfig(**{**cfg4.to_dict(), "lr": 0.5}), progress=False,
                work_dir=tmp_path / "b")


def test_selection_score_averages_pope_balanced_and_mc_accuracy() -> None:
    from hipp_torchprune.recovery.train import selection_score

    metrics = {"pope_adversarial": {"accuracy": 0.9, "balanced_accuracy": 0.8, "n": 10},
               "scienceqa": {"accuracy": 0.6, "margin": 1.0, "n": 10}}
    assert selection_score(metrics) == pytest.approx(0.7)
    with pytest.raises(RecoveryError):
        selection_score({})


def test_selection_hands_back_the_best_scored_step(world: Path, tmp_path: Path) -> None:
    """The returned weights are exactly those of a plain run stopped at the kept step (0 = untouched)."""
    cfg = RecoveryConfig(**{**CFG.to_dict(), "steps": 3, "lr": 0.05, "select_every": 1, "select_limit": 16})
    model, processor = _pruned("tiny-llava")
    chosen = recover(model, processor, world, cfg, progress=False, work_dir=tmp_path / "sel")
    scores = [h["select_score"] for h in chosen.history]
    assert len(scores) == 3 and chosen.best_step in (0, 1, 2, 3)
    model, processor = _pruned("tiny-llava")
    plain = RecoveryConfig(**{**cfg.to_dict(), "steps": chosen.best_step, "select_every": 0})
    reference = recover(model, processor, world, plain, progress=False).model
    for (n, a), (_, b) in zip(chosen.model.state_dict().items(), reference.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n
    if chosen.best_step:
        assert scores[chosen.best_step - 1] == max(scores)


def test_paired_selection_keeps_a_state_until_a_gain_clears_z_standard_errors(world: Path, tmp_path: Path) -> None:
    """With ``select_z`` the held state changes only on a paired gain beyond ``z`` standard errors: an
    unreachable ``z`` hands back the unrecovered model; the logged scores are the rows' mean metrics."""
    cfg = RecoveryConfig(**{**CFG.to_dict(), "steps": 3, "lr": 0.05, "select_every": 1, "select_limit": 16,
                            "select_tasks": "pope,scienceqa", "select_z": 1e6})
    model, processor = _pruned("tiny-llava")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    kept = recover(model, processor, world, cfg, progress=False)
    assert kept.best_step == 0 and len(kept.history) == 3
    for name, value in kept.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    model, processor = _pruned("tiny-llava")
    plain = recover(model, processor, world, RecoveryConfig(**{**cfg.to_dict(), "steps": 1, "select_z": 0.0}),
                    progress=False)
    assert plain.history[0]["select_score"] == kept.history[0]["select_score"]  # z changes the choice, not the score
    assert 0.0 <= kept.history[0]["select_score"] <= 1.0


def test_guard_scores_only_the_ends_and_keeps_the_last_state_unless_it_lost(world: Path) -> None:
    """``select_mode="guard"``: no intermediate state is scored; with an unreachable ``z`` the last state
    is handed back, exactly as a run without selection; with ``z = 0`` the choice follows the scores."""
    cfg = RecoveryConfig(**{**CFG.to_dict(), "steps": 3, "lr": 0.05, "select_every": 1, "select_limit": 16,
                            "select_tasks": "pope,scienceqa", "select_mode": "guard", "select_z": 1e6})
    model, processor = _pruned("tiny-llava")
    kept = recover(model, processor, world, cfg, progress=False)
    assert kept.best_step == 3 and ["select_score" in h for h in kept.history] == [False, False, True]
    model, processor = _pruned("tiny-llava")
    plain = recover(model, processor, world, RecoveryConfig(**{**cfg.to_dict(), "select_every": 0}), progress=False)
    for (n, a), (_, b) in zip(kept.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), n
    model, processor = _pruned("tiny-llava")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    strict = recover(model, processor, world, RecoveryConfig(**{**cfg.to_dict(), "select_z": 0.0}), progress=False)
    assert strict.best_step in (0, 3)
    if strict.best_step == 0:  # the last state lost on the selection rows: the unrecovered model comes back
        assert all(torch.equal(v, before[n]) for n, v in strict.model.state_dict().items())


def test_bad_selection_tasks_fail_before_lora_touches_the_model(world: Path) -> None:
    """An unknown ``select_tasks`` name is a HippError raised before recovery changes anything."""
    from hipp_torchprune.errors import HippError

    model, processor = _pruned("tiny-llava")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    cfg = RecoveryConfig(**{**CFG.to_dict(), "select_every": 1, "select_tasks": "pope,nonsense"})
    with pytest.raises(HippError, match="nonsense"):
        recover(model, processor, world, cfg, progress=False)
    after = model.state_dict()
    assert list(after) == list(before)  # no LoRA module was injected
    assert all(torch.equal(after[n], v) for n, v in before.items())


def test_compare_defaults_to_the_guard() -> None:
    import argparse

    from hipp_torchprune.recovery.config import GUARD_SELECTION, add_selection_arguments, selection_kwargs

    p = argparse.ArgumentParser()
    add_selection_arguments(p, RecoveryConfig(**GUARD_SELECTION))
    assert selection_kwargs(p.parse_args([])) == GUARD_SELECTION
    with pytest.raises(RecoveryError, match="select_mode"):
        RecoveryConfig(select_mode="median")  # type: ignore[arg-type]


def test_default_lora_scope_is_every_decoder_layer() -> None:
    """LLM-Pruner's recovery scope: LoRA on the seven projections of every layer (``lora_layers=2``: the last 2)."""
    from hipp_torchprune.recovery.config import lora_layers
    from hipp_torchprune.recovery.lora import lora_target_names

    model, _ = _pruned("tiny-llava")
    adapter = api.get_adapter(model)
    assert RecoveryConfig().lora_layers is None
    every = lora_target_names(model, adapter, RecoveryConfig().lora_layers)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert sorted(every) == sorted(f"model.language_model.layers.{i}.{'self_attn' if p[0] in 'qkvo' else 'mlp'}.{p}"
                                   for i in range(len(adapter.decoder_layers())) for p in projections)
    assert {n.split(".")[3] for n in lora_target_names(model, adapter, 2)} == {"2", "3"}
    assert (lora_layers("all"), lora_layers("2"), lora_layers("0")) == (None, 2, 0)
    with pytest.raises(RecoveryError, match="'all' or a layer count"):
        lora_layers("some")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": -1}, "steps"), ({"lora_rank": 0}, "lora_rank"), ({"lora_layers": -1}, "lora_layers"),
    ({"data": "x"}, "data"), ({"w_rob": 2.0}, "w_rob"),
    ({"select_every": -1}, "select_every"), ({"select_every": 5, "select_split": "test"}, "test split"),
    ({"select_z": -1.0}, "select_z"), ({"select_limit": 0}, "select_limit")])
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(RecoveryError, match=message):
        RecoveryConfig(**kwargs)


def test_cli_recover(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", "tiny-llava", "--sparsity", "0.3", "--round-to", "16", "--out", str(pruned),
                 "--calib-n", "2", "--json"]) == 0
    widths = load_pruned(pruned).config.text_config.hipp_intermediate_sizes
    capsys.readouterr()
    out = tmp_path / "rec"
    assert main(["recover", "--model", str(pruned), "--data", str(world), "--steps", "1", "--out", str(out),
                 "--batch-size", "2", "--limit", "8", "--no-progress", "--json", "--preference", "0.8,0.1,0.1"]) == 0
    assert (out / "recovery.json").is_file() and (tmp_path / "rec.recovery" / "recovery_state.pt").is_file()
    assert api.get_adapter(load_pruned(out)).intermediate_widths() == widths
    assert json.loads(capsys.readouterr().out)["kept_step"] == 1
    selected = tmp_path / "rec-selected"
    assert main(["recover", "--model", str(pruned), "--data", str(world), "--steps", "2", "--out", str(selected),
                 "--batch-size", "2", "--limit", "8", "--no-progress", "--json", "--select-every", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((selected / "recovery.json").read_text())
    assert printed["kept_step"] in (0, 1, 2) and report["kept_step"] == printed["kept_step"]
    assert [h["step"] for h in report["history"] if "select_score" in h] == [1, 2]
    assert main(["recover", "--model", str(pruned), "--data", str(tmp_path / "nope"), "--steps", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_empty_task_is_a_data_error(tmp_path: Path) -> None:
    _, processor = build_tiny("tiny-llava")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        load_pool(processor, tmp_path / "empty", CFG)



def test_selection_flags_parse_into_the_config() -> None:
    """``--select-tasks/--select-limit/--select-z`` reach :class:`RecoveryConfig`; bad counts are typed errors."""
    import argparse

    from hipp_torchprune.recovery.config import add_selection_arguments, row_limit, selection_kwargs

    p = argparse.ArgumentParser()
    add_selection_arguments(p)
    defaults = RecoveryConfig(**selection_kwargs(p.parse_args([])))
    assert (defaults.select_tasks, defaults.select_limit, defaults.select_z) == (
        RecoveryConfig.select_tasks, RecoveryConfig.select_limit, RecoveryConfig.select_z)
    args = p.parse_args(["--select-tasks", "pope,scienceqa", "--select-limit", "all", "--select-z", "2"])
    assert selection_kwargs(args) == {"select_mode": "best", "select_tasks": "pope,scienceqa", "select_limit": None,
                                      "select_z": 2.0}
    assert row_limit("64") == 64
    for bad in ("0", "many"):
        with pytest.raises(RecoveryError, match="--select-limit"):
            row_limit(bad)
