"""The ``hipp_vlm`` wrapper in-process: registration, pruned checkpoints, log-probs, generation, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make test` installs it; see docs/lmms-eval.md)")
pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")

from hipp_lmms.models import HippVLM, ModelArgsError  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402

from hipp_torchprune.errors import CheckpointError, DataError  # noqa: E402


def simple_evaluate(lm: HippVLM, tasks: list[str], tasks_dir: Path) -> dict:
    """lmms-eval's ``simple_evaluate`` on an in-memory wrapper with the given task directory."""
    from lmms_eval.evaluator import simple_evaluate as run
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR", include_path=str(tasks_dir), include_defaults=False)
    return run(model=lm, tasks=tasks, task_manager=manager, verbosity="ERROR")


@pytest.fixture(scope="module")
def pruned_lm(pruned_dir: Path) -> HippVLM:
    """The wrapper loaded from a pruned checkpoint directory."""
    return HippVLM(pretrained=str(pruned_dir), batch_size=8)


def test_entry_point_resolves_hipp_vlm() -> None:
    from lmms_eval.models import get_model

    assert get_model("hipp_vlm") is HippVLM


def test_pruned_checkpoint_matches_hipp_evaluate(pruned_lm: HippVLM, pruned_dir: Path, world: Path,
                                                 tasks_dir: Path) -> None:
    from hipp_torchprune.checkpoint import read_pruning_meta
    from hipp_torchprune.evaluation import evaluate

    widths = read_pruning_meta(pruned_dir)["intermediate_sizes"]
    assert [layer.mlp.gate_proj.out_features for layer in pruned_lm.model.model.language_model.layers] == widths
    want = evaluate(pruned_lm.model, pruned_lm.processor, world, "pope_adversarial,scienceqa_img")
    for _ in range(2):  # a second evaluate() works too: clean() keeps the model
        results = simple_evaluate(pruned_lm, ["hipp_pope_adversarial", "hipp_scienceqa_img"], tasks_dir)["results"]
        assert results["hipp_pope_adversarial"]["balanced_accuracy,none"] == pytest.approx(
            want["pope_adversarial"]["balanced_accuracy"], abs=1e-6)
        assert results["hipp_scienceqa_img"]["margin,none"] == pytest.approx(
            want["scienceqa_img"]["margin"], abs=1e-6)
        assert pruned_lm.model is not None


def _requests(lm: HippVLM, world: Path, continuations: list[str]) -> list[Instance]:
    from hipp_torchprune.data import TASKS, decode_image, load_task_docs

    docs = load_task_docs(world, TASKS["pope_adversarial"], limit=3)
    lm.task_dict = {"t": {"test": [{"image": decode_image(d["image"], "x")} for d in docs]}}
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    return [Instance("loglikelihood", (d["question"], c, lambda doc: [doc["image"]], i, "t", "test"), idx=j,
                     metadata=meta) for i, d in enumerate(docs) for j, c in enumerate(continuations)]


def test_loglikelihood_is_batched_log_probability(pruned_lm: HippVLM, world: Path) -> None:
    pooled = pruned_lm.loglikelihood(_requests(pruned_lm, world, [" Yes", " No", " Yes it is"]))
    assert len(pooled) == 9 and all(lp <= 0 and isinstance(g, bool) for lp, g in pooled)
    pruned_lm.answer_pooling = False
    try:
        exact = pruned_lm.loglikelihood(_requests(pruned_lm, world, [" Yes", " No", " Yes it is"]))
    finally:
        pruned_lm.answer_pooling = True
    for i in range(0, 9, 3):
        # pooling adds the other surface forms' probability mass; never less than one form alone
        assert pooled[i][0] >= exact[i][0] - 1e-6 and pooled[i + 1][0] >= exact[i + 1][0] - 1e-6
        # a longer continuation is scored exactly either way and is less likely than its first word
        assert pooled[i + 2][0] == pytest.approx(exact[i + 2][0], abs=1e-5)
        assert exact[i + 2][0] < exact[i][0]
    assert math.exp(pooled[0][0]) + math.exp(pooled[1][0]) <= 1 + 1e-6


def test_generate_until_returns_cut_strings(pruned_lm: HippVLM, world: Path) -> None:
    reqs = _requests(pruned_lm, world, ["x"])
    gen = [Instance("generate_until", (r.args[0], {"max_new_tokens": 4, "until": ["\n"]}, *r.args[2:]), idx=0,
                    metadata=r.metadata) for r in reqs]
    out = pruned_lm.generate_until(gen)
    assert len(out) == 3 and all(isinstance(t, str) and "\n" not in t for t in out)


def test_wraps_in_memory_model(pruned_lm: HippVLM) -> None:
    lm = HippVLM(model=pruned_lm.model, processor=pruned_lm.processor)
    assert lm.model is pruned_lm.model and lm.batch_size_per_gpu == 64
    with pytest.raises(ModelArgsError, match="processor"):
        HippVLM(model=pruned_lm.model)


def test_bad_model_args_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        HippVLM(pretrained=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        HippVLM(pretrained=str(tmp_path / "empty"))
    with pytest.raises(ModelArgsError, match="unknown model argument.*colour"):
        HippVLM(pretrained="tiny-llava", colour="red")
    with pytest.raises(ModelArgsError, match="batch size"):
        HippVLM(pretrained="tiny-llava", batch_size="0")


def test_dataset_without_expected_columns_is_named(pruned_lm: HippVLM, world: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from hipp_lmms.taskgen import write_tasks

    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pq.read_table(world / "test" / "pope.parquet").drop(["question"]), bad / "pope.parquet")
    pq.write_table(pq.read_table(world / "test" / "scienceqa.parquet"), bad / "scienceqa.parquet")
    write_tasks(tmp_path / "tasks", bad)  # the data went bad after the tasks were written
    with pytest.raises(DataError, match=r"no column\(s\) question"):
        simple_evaluate(pruned_lm, ["hipp_pope_adversarial"], tmp_path / "tasks")
