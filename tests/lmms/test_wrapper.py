"""The ``hipp_vlm`` wrapper in-process: registration, pruned checkpoints, log-probs, generation, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make test` installs it; see docs/lmms-eval.md)")
pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")

from hipp_lmms.models import HippVLM, ModelArgsError  # noqa: E402
from lmms_eval.api.instance import GenerationResult, Instance  # noqa: E402

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
    assert len(out) == 3 and all(isinstance(r, GenerationResult) and "\n" not in r.text for r in out)
    assert all(r.token_counts.output_tokens <= 4 for r in out)


@pytest.fixture(scope="module")
def demo_lm() -> HippVLM:
    """The shipped demo model in float64 (padding in a batch then cannot flip a greedy token)."""
    return HippVLM(pretrained="demo", dtype="float64", batch_size=3)


def _generation_requests(lm: HippVLM, world: Path, kwargs: list[dict], rows: list[int] | None = None) -> list[Instance]:
    """One ``generate_until`` request per kwargs dict: the POPE question and image of successive
    test rows, or of ``rows``."""
    from hipp_torchprune.data import TASKS, decode_image, load_task_docs

    rows = list(range(len(kwargs))) if rows is None else rows
    docs = load_task_docs(world, TASKS["pope_adversarial"], limit=max(rows) + 1)
    lm.task_dict = {"t": {"test": [{"image": decode_image(d["image"], "x")} for d in docs]}}
    return [Instance("generate_until", (docs[r]["question"], kw, lambda doc: [doc["image"]], r, "t", "test"), idx=0,
                     metadata={"task": "t", "doc_id": r, "repeats": 1}) for r, kw in zip(rows, kwargs, strict=True)]


def _generate(lm: HippVLM, reqs: list[Instance], batch_size: int) -> list[GenerationResult]:
    old, lm.batch_size_per_gpu = lm.batch_size_per_gpu, batch_size
    try:
        return lm.generate_until(reqs)
    finally:
        lm.batch_size_per_gpu = old


def test_generation_does_not_depend_on_batch_size(demo_lm: HippVLM, world: Path) -> None:
    # the demo model sometimes lists objects before its yes/no ("car bird cup Yes"): take three
    # such rows, so that a cut at 2 tokens and a stop at request 1's 2nd word both change the text
    scan = _generate(demo_lm, _generation_requests(demo_lm, world, [{"max_new_tokens": 16}] * 12), 3)
    rows = [i for i, r in enumerate(scan) if len(r.text.split()) >= 3][:3]
    assert len(rows) == 3, [r.text for r in scan]
    uncut = [scan[i] for i in rows]
    stop = " " + uncut[1].text.split()[1]
    kwargs = [{"max_new_tokens": 2}, {"max_new_tokens": 16, "until": [stop]}, {"max_new_tokens": 16}]
    reqs = _generation_requests(demo_lm, world, kwargs, rows)
    one, three = _generate(demo_lm, reqs, 1), _generate(demo_lm, reqs, 3)
    assert [(r.text, r.token_counts) for r in one] == [(r.text, r.token_counts) for r in three]
    # and each request got its own settings, not the first request's
    assert one[0].token_counts.output_tokens == 2 and uncut[0].token_counts.output_tokens > 2
    assert one[1].text == uncut[1].text.split(stop)[0] != uncut[1].text
    assert (one[2].text, one[2].token_counts) == (uncut[2].text, uncut[2].token_counts)
    assert one[2].token_counts.output_tokens > 2


def test_sampling_kwargs_reach_generate(demo_lm: HippVLM, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []
    real = demo_lm.model.generate

    def spy(**kwargs: object) -> object:
        seen.append({k: kwargs.get(k) for k in ("do_sample", "temperature", "top_p", "num_beams", "max_new_tokens")})
        return real(**kwargs)

    monkeypatch.setattr(demo_lm.model, "generate", spy)
    kwargs = [{"temperature": 0, "do_sample": True, "top_p": 0.5}, {"temperature": 0.8, "top_p": 0.9},
              {"num_beams": 2, "max_new_tokens": 3}]
    _generate(demo_lm, _generation_requests(demo_lm, world, kwargs), 3)
    assert seen == [
        {"do_sample": False, "temperature": None, "top_p": None, "num_beams": 1, "max_new_tokens": 32},
        {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "num_beams": 1, "max_new_tokens": 32},
        {"do_sample": False, "temperature": None, "top_p": None, "num_beams": 2, "max_new_tokens": 3},
    ]


def test_sampling_samples_and_temperature_zero_is_greedy(demo_lm: HippVLM, world: Path) -> None:
    import torch

    greedy = [r.text for r in _generate(demo_lm, _generation_requests(demo_lm, world, [{"max_new_tokens": 12}] * 3), 3)]
    zero = _generation_requests(demo_lm, world, [{"max_new_tokens": 12, "temperature": 0, "do_sample": True}] * 3)
    assert [r.text for r in _generate(demo_lm, zero, 3)] == greedy
    hot = _generation_requests(demo_lm, world, [{"max_new_tokens": 12, "temperature": 5.0, "do_sample": True}] * 3)
    torch.manual_seed(0)
    first = [r.text for r in _generate(demo_lm, hot, 3)]
    torch.manual_seed(0)
    assert [r.text for r in _generate(demo_lm, hot, 3)] == first  # seeded sampling is reproducible
    assert first != greedy


def test_token_counts_are_recorded(demo_lm: HippVLM, world: Path) -> None:
    from lmms_eval.models.model_utils.usage_metrics import reset_usage_metrics, summarize_usage_metrics

    reset_usage_metrics()
    demo_lm.token_counts.clear()
    reqs = _generation_requests(demo_lm, world, [{"max_new_tokens": 2}, {"max_new_tokens": 16}])
    out = demo_lm.generate_until(reqs)
    pooled = demo_lm.loglikelihood(_requests(demo_lm, world, [" Yes", " No"]))
    assert len(pooled) == 6
    prompt_lens = [len(demo_lm.tokenizer(demo_lm.prompt_text(r.args[0], 1))["input_ids"]) for r in reqs]
    image_tokens = demo_lm.model.config.image_seq_length - 1  # the <image> placeholder expands in place
    assert [r.token_counts.input_tokens for r in out] == [n + image_tokens for n in prompt_lens]
    assert [r.token_counts.output_tokens for r in out] == [2, len(demo_lm.tokenizer(out[1].text)["input_ids"])]
    kinds = [(c.request_type, c.doc_id, c.output_tokens) for c in demo_lm.token_counts]
    # one loglikelihood record per distinct context (the yes/no pair shares one forward pass)
    assert kinds == [("generate_until", 0, 2), ("generate_until", 1, out[1].token_counts.output_tokens),
                     ("loglikelihood", 0, 0), ("loglikelihood", 1, 0), ("loglikelihood", 2, 0)]
    totals = demo_lm.token_totals
    assert totals["calls"] == 5 and totals["output_tokens"] == sum(r.token_counts.output_tokens for r in out)
    usage = summarize_usage_metrics()["total"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["n_api_calls"]) == (
        totals["input_tokens"], totals["output_tokens"], 5)


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


def test_device_is_checked_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from hipp_lmms.models import DeviceError, available_devices, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices()[0] == "cpu" and "cuda" not in available_devices()
    assert resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match=r"device='cuda' is not available.*this machine has: cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"device='gpu' is not a torch device; this machine has: cpu"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="'cuda'"):  # before any loading
        HippVLM(pretrained="/no/such/checkpoint", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(None) == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceError, match=r"device='cuda:1' is not available; this machine has: cpu, cuda, cuda:0"):
        resolve_device("cuda:1")
    assert issubclass(DeviceError, ModelArgsError)


def test_batch_size_in_model_args_wins_over_lmms_evals_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    # lmms-eval's CLI always passes its --batch_size (default 1) next to --model_args
    lm = HippVLM.create_from_arg_string("pretrained=tiny-llava,batch_size=5",
                                        {"batch_size": 1, "max_batch_size": None, "device": None})
    assert lm.batch_size_per_gpu == 5
    lm = HippVLM.create_from_arg_string("pretrained=tiny-llava", {"batch_size": "auto", "max_batch_size": 8})
    assert lm.batch_size_per_gpu == 8
    assert HippVLM.create_from_arg_string({"pretrained": "tiny-llava"}, {"batch_size": 3}).batch_size_per_gpu == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ModelArgsError, match="device='cpu' in --model_args conflicts with --device 'cuda'"):
        HippVLM.create_from_arg_string("pretrained=tiny-llava,device=cpu", {"device": "cuda"})


def test_dtype_keeps_float32_buffers_and_defaults_to_the_checkpoints_own() -> None:
    """A converted model keeps rotary ``inv_freq`` in float32 (a plain ``.to(bf16)`` rounds it and
    moves the logits); no dtype keeps the demo checkpoint's bf16 on every device."""
    from hipp_lmms.models import load_for_eval

    from hipp_torchprune.errors import HippError

    model, _ = load_for_eval("demo", "cpu", None)
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_for_eval("demo", "cpu", "float16")
    assert next(model.parameters()).dtype == torch.float16
    inv = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert inv and all(b.dtype == torch.float32 for b in inv)
    with pytest.raises(HippError, match="int8"):
        load_for_eval("demo", "cpu", "int8")


def test_threads_apply_per_request_and_do_not_leak(pruned_lm: HippVLM, world: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``threads=`` holds while the wrapper answers requests; the caller's count is put back after
    each call and is never changed by building the wrapper."""
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    lm = HippVLM(model=pruned_lm.model, processor=pruned_lm.processor, threads=target)
    assert torch.get_num_threads() == before
    seen: list[int] = []
    real = lm._score_exact
    monkeypatch.setattr(lm, "_score_exact", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    lm.loglikelihood(_requests(lm, world, ["Paris"]))
    assert seen and set(seen) == {target} and torch.get_num_threads() == before
    with pytest.raises(ModelArgsError, match="threads"):
        HippVLM(model=pruned_lm.model, processor=pruned_lm.processor, threads="zero")
