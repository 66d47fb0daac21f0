"""lmms-eval through ``hipp_vlm`` on a SliceGPT checkpoint written by ``hipp prune --method slicegpt``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make test` installs it; see docs/lmms-eval.md)")
pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")
pytest.importorskip("hipp_baselines.plugin", reason="plugins/hipp-baselines is not installed")
pytest.importorskip("hipp_owl.plugin", reason="plugins/hipp-owl is not installed")

from hipp_lmms.models import HippVLM  # noqa: E402


@pytest.fixture(scope="module")
def sliced_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llava sliced to SliceGPT's parameter count at 30 % MLP sparsity, calibrated on the world."""
    import hipp_torchprune.registry as registry_module
    from hipp_torchprune.cli import main
    from tests.conftest import baselines_registry

    reg = baselines_registry()
    out = tmp_path_factory.mktemp("lmms") / "sliced"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry_module, "default_registry", lambda: reg)
        assert main(["prune", "--model", "tiny-llava", "--method", "slicegpt", "--sparsity", "0.3", "--calib",
                     str(world), "--calib-n", "4", "--out", str(out)]) == 0
    return out


def test_sliced_checkpoint_matches_hipp_evaluate(sliced_dir: Path, world: Path, tasks_dir: Path) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from hipp_torchprune.evaluation import evaluate

    lm = HippVLM(pretrained=str(sliced_dir), batch_size=8)
    assert lm.model.model.language_model.embed_tokens.embedding_dim < 64  # the sliced width came back
    want = evaluate(lm.model, lm.processor, world, "pope_adversarial,scienceqa_img")
    manager = TaskManager("ERROR", include_path=str(tasks_dir), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=["hipp_pope_adversarial", "hipp_scienceqa_img"], task_manager=manager,
                              verbosity="ERROR")["results"]
    assert results["hipp_pope_adversarial"]["balanced_accuracy,none"] == pytest.approx(
        want["pope_adversarial"]["balanced_accuracy"], abs=1e-6)
    assert results["hipp_scienceqa_img"]["margin,none"] == pytest.approx(want["scienceqa_img"]["margin"], abs=1e-6)
