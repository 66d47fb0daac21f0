"""Task utilities: stringified loglikelihood results, records and aggregations, shipped YAMLs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hipp_lmms", reason="the hipp-lmms plugin is not installed (pip install -e plugins/hipp-lmms)")

from hipp_lmms import tasks_dir, utils  # noqa: E402
from hipp_lmms.taskgen import TASK_NAMES, write_tasks  # noqa: E402

from hipp_torchprune.errors import DataError  # noqa: E402
from hipp_torchprune.evaluation import mc_metrics, pope_metrics  # noqa: E402


@pytest.mark.parametrize("result,value", [("(-0.25, False)", -0.25), ((-1.5, True), -1.5), ("-3.0", -3.0),
                                          (" (-1e-07, True) ", -1e-07), (-2, -2.0)])
def test_parse_loglikelihood_accepts_strings_and_tuples(result: object, value: float) -> None:
    assert utils.parse_loglikelihood(result) == value


@pytest.mark.parametrize("result", ["not a tuple", "(True, False)", None, "()"])
def test_parse_loglikelihood_rejects_garbage(result: object) -> None:
    with pytest.raises(DataError, match="log-likelihood"):
        utils.parse_loglikelihood(result)


def test_stringified_results_give_the_same_metrics() -> None:
    docs = [{"answer": a} for a in ("yes", "no", "yes", "no", "no")]
    lls = [(-0.1, -2.0), (-0.3, -0.9), (-3.0, -0.2), (-2.5, -0.1), (-0.69, -0.7)]
    as_tuples = [utils.pope_process_results(d, [(y, False), (n, True)]) for d, (y, n) in zip(docs, lls)]
    as_strings = [utils.pope_process_results(d, [str((y, False)), str((n, True))]) for d, (y, n) in zip(docs, lls)]
    assert as_tuples == as_strings
    want = pope_metrics([y - n for y, n in lls], [d["answer"] == "yes" for d in docs])
    records = [r["accuracy"] for r in as_strings]
    assert utils.pope_accuracy(records) == want["accuracy"] == 0.4
    assert utils.pope_balanced_accuracy(records) == want["balanced_accuracy"]
    assert utils.pope_yes_ratio(records) == want["yes_ratio"] == 0.6  # predicted, not gold (0.4)
    assert utils.pope_f1(records) == want["f1"] and utils.pope_margin(records) == pytest.approx(want["margin"])
    assert utils.pope_loglik(records) == pytest.approx(want["loglik"])
    assert utils.pope_prob(records) == pytest.approx(want["prob"]) and 0.0 < want["prob"] < 1.0


def test_scienceqa_records_aggregate_with_mc_metrics() -> None:
    docs = [{"choices": ["a", "b", "c"], "answer": 2}, {"choices": ["a", "b"], "answer": 0}]
    results = [["(-2.0, False)", "(-1.0, False)", "(-0.5, True)"], ["(-0.2, True)", "(-1.9, False)"]]
    records = [utils.scienceqa_process_results(d, r)["margin"] for d, r in zip(docs, results)]
    want = mc_metrics([[-2.0, -1.0, -0.5], [-0.2, -1.9]], [2, 0])
    assert utils.scienceqa_accuracy(records) == want["accuracy"] == 1.0
    assert utils.scienceqa_margin(records) == pytest.approx(want["margin"])
    assert utils.scienceqa_prob(records) == pytest.approx(want["prob"]) and 0.5 < want["prob"] < 1.0
    with pytest.raises(DataError, match="expected 3 results"):
        utils.scienceqa_process_results(docs[0], results[1])


def test_prompts_and_targets_follow_lmms_eval() -> None:
    doc = {"question_id": "1", "question": "Is there a dog in the image?", "answer": "No", "image_source": "x",
           "image": None, "category": "random"}
    assert utils.pope_doc_to_text(doc) == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    assert utils.pope_doc_to_target(doc) == 1 and utils.pope_doc_to_choice(doc) == ["Yes", "No"]
    sqa = {"question": "Which?", "choices": ["cat", "dog"], "answer": 1, "hint": "A pet.", "image": None}
    assert utils.scienceqa_doc_to_text(sqa) == ("Context: A pet.\nWhich?\nA. cat\nB. dog\n"
                                                "Answer with the option's letter from the given choices directly.")
    with pytest.raises(DataError, match=r"no column\(s\) question_id"):
        utils.pope_doc_to_text({k: v for k, v in doc.items() if k != "question_id"})
    with pytest.raises(DataError, match="'yes' or 'no'"):
        utils.pope_doc_to_target({**doc, "answer": "maybe"})


def test_answer_variants_mirror_hipp_eval() -> None:
    from hipp_torchprune.evaluation import NO_VARIANTS, YES_VARIANTS

    assert utils.answer_variants(" Yes") == YES_VARIANTS and utils.answer_variants(" No") == NO_VARIANTS
    assert utils.answer_variants(" C") == ("C",) and utils.answer_variants(" maybe") is None


def test_shipped_tasks_are_the_generated_ones(tmp_path: Path) -> None:
    written = write_tasks(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in tasks_dir().glob("*.yaml"))
    for path in written:
        assert path.read_text() == (tasks_dir() / path.name).read_text(), path.name
    assert "dataset_path: lmms-lab/POPE" in (tmp_path / "hipp_pope_random.yaml").read_text()


def test_task_names_do_not_clash_with_builtin_tasks() -> None:
    lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed")
    builtin = Path(lmms_eval.__file__).parent / "tasks"
    declared = set()
    for yaml_file in builtin.rglob("*.y*ml"):
        for line in yaml_file.read_text(errors="ignore").splitlines():
            if line.startswith(("task:", "group:")):
                declared.add(line.split(":", 1)[1].strip().strip("\"'"))
    assert len(declared) > 100
    assert not declared & set(TASK_NAMES)
