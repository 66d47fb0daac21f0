"""Task functions for the ``hipp_pope_*`` and ``hipp_scienceqa_img`` lmms-eval tasks.

Every function here is a thin wrapper around hipp-torchprune's own code, so lmms-eval, ``hipp
eval`` and the reward scorers share one definition of each step:

* prompts: :func:`hipp_torchprune.data.pope_prompt` / :func:`~hipp_torchprune.data.scienceqa_prompt`
  (lmms-eval's own POPE and ``scienceqa_img`` prompts);
* required columns: :data:`hipp_torchprune.data.POPE_COLUMNS` / ``SCIENCEQA_COLUMNS``;
* answer variants: :data:`hipp_torchprune.evaluation.YES_VARIANTS` / ``NO_VARIANTS`` and the
  option letters (pooled per answer by the ``hipp_vlm`` wrapper, see :func:`answer_variants`);
* metrics: :func:`hipp_torchprune.evaluation.pope_metrics` / :func:`~hipp_torchprune.evaluation.mc_metrics`
  applied to per-document records in the aggregation functions.

lmms-eval 0.7.3 turns each loglikelihood result into a string (``"(-0.2, False)"``) before
``process_results`` sees it; :func:`parse_loglikelihood` accepts both forms.

Nothing here imports lmms-eval, so the module is cheap to import and testable on its own.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from hipp_torchprune.data import (
    POPE_COLUMNS,
    SCIENCEQA_COLUMNS,
    decode_image,
    option_letters,
    pope_prompt,
    scienceqa_prompt,
)
from hipp_torchprune.errors import DataError
from hipp_torchprune.evaluation import NO_VARIANTS, YES_VARIANTS, mc_metrics, pope_metrics

#: The two POPE answers, in the order of the task's ``doc_to_choice`` (index 0 = yes).
POPE_CHOICES: tuple[str, str] = ("Yes", "No")
#: POPE metric names reported by the tasks (keys of :func:`hipp_torchprune.evaluation.pope_metrics`).
POPE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "yes_ratio",
                                 "margin", "loglik", "prob")
#: ScienceQA metric names (keys of :func:`hipp_torchprune.evaluation.mc_metrics`).
MC_METRICS: tuple[str, ...] = ("accuracy", "margin", "loglik", "prob")


# ---------------------------------------------------------------- answers


def answer_variants(continuation: str) -> tuple[str, ...] | None:
    """The surface forms pooled into one answer's log-probability, or None for plain text.

    " Yes"/" No" pool the same variants as ``hipp eval`` (``YES_VARIANTS`` / ``NO_VARIANTS``);
    a single option letter (" A") pools only itself (its leading-space form is added by
    :func:`hipp_torchprune.evaluation.answer_token_ids`). Anything else is scored exactly.
    """
    word = continuation.strip()
    if word in ("Yes", "yes"):
        return YES_VARIANTS
    if word in ("No", "no"):
        return NO_VARIANTS
    if len(word) == 1 and "A" <= word <= "Z":
        return (word,)
    return None


def parse_loglikelihood(result: Any) -> float:
    """The log-likelihood in one lmms-eval result: ``(ll, greedy)``, ``"(ll, greedy)"`` or ``ll``."""
    value = result
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"cannot read a log-likelihood from the model result {result!r}") from exc
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"cannot read a log-likelihood from the model result {result!r}")
    return float(value)


# ---------------------------------------------------------------- documents


def require_columns(doc: dict[str, Any], columns: Sequence[str], task: str) -> None:
    """Raise :class:`DataError` naming the missing columns when ``doc`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in doc]
    if missing:
        raise DataError(f"{task}: the dataset has no column(s) {', '.join(missing)}; expected the "
                        f"lmms-lab layout with {', '.join(columns)} (regenerate the tasks with "
                        "`hipp lmms-tasks --data DIR --out TASKS_DIR` for a local directory)")


def _text_columns(columns: Sequence[str]) -> list[str]:
    # lmms-eval builds prompts from a copy of the dataset without its image columns
    return [c for c in columns if c != "image"]


def _filter_category(dataset: Any, category: str) -> Any:
    if "category" not in dataset.column_names:
        return dataset  # doc_to_text reports the missing columns with a clear message
    keep = [i for i, c in enumerate(dataset["category"]) if c == category]
    return dataset.select(keep)


def pope_random_docs(dataset: Any) -> Any:
    """Keep the ``random`` POPE rows (same order as the file)."""
    return _filter_category(dataset, "random")


def pope_popular_docs(dataset: Any) -> Any:
    """Keep the ``popular`` POPE rows (same order as the file)."""
    return _filter_category(dataset, "popular")


def pope_adversarial_docs(dataset: Any) -> Any:
    """Keep the ``adversarial`` POPE rows (same order as the file)."""
    return _filter_category(dataset, "adversarial")


def scienceqa_img_docs(dataset: Any) -> Any:
    """Keep the ScienceQA rows that have an image (as ``hipp eval`` does)."""
    if "image" not in dataset.column_names:
        return dataset
    images = dataset.with_format("arrow")["image"]
    keep = [i for i, v in enumerate(images.to_pylist()) if v is not None]
    return dataset.select(keep)


def doc_image(doc: dict[str, Any], task: str) -> Any:
    """The document's image as an RGB PIL image (decoded by ``datasets`` or an ``{bytes, path}`` struct)."""
    image = doc.get("image")
    if isinstance(image, dict):
        return decode_image(image, task)
    if image is None or not hasattr(image, "convert"):
        raise DataError(f"{task}: a document has no usable image (got {type(image).__name__})")
    return image.convert("RGB")


def pope_doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """``[image]`` of a POPE document."""
    require_columns(doc, POPE_COLUMNS, "hipp_pope")
    return [doc_image(doc, "hipp_pope")]


def pope_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """lmms-eval's POPE prompt (:func:`hipp_torchprune.data.pope_prompt`)."""
    require_columns(doc, _text_columns(POPE_COLUMNS), "hipp_pope")
    return pope_prompt(doc)


def pope_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The two candidates, yes first."""
    return list(POPE_CHOICES)


def pope_doc_to_target(doc: dict[str, Any]) -> int:
    """0 for a gold "yes", 1 for "no"; DataError on anything else."""
    answer = str(doc.get("answer", "")).strip().lower()
    if answer not in ("yes", "no"):
        raise DataError(f"hipp_pope: answer must be 'yes' or 'no', got {doc.get('answer')!r}")
    return 0 if answer == "yes" else 1


def scienceqa_doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """``[image]`` of a ScienceQA document."""
    require_columns(doc, SCIENCEQA_COLUMNS, "hipp_scienceqa_img")
    return [doc_image(doc, "hipp_scienceqa_img")]


def scienceqa_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """lmms-eval's ``scienceqa_img`` prompt (:func:`hipp_torchprune.data.scienceqa_prompt`)."""
    require_columns(doc, _text_columns(SCIENCEQA_COLUMNS), "hipp_scienceqa_img")
    return scienceqa_prompt(doc)


def scienceqa_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The option letters ("A", "B", ...) of the document's choices."""
    return option_letters(len(doc["choices"]))


def scienceqa_doc_to_target(doc: dict[str, Any]) -> int:
    """The gold option index; DataError when out of range."""
    gold = int(doc["answer"])
    if not 0 <= gold < len(doc["choices"]):
        raise DataError(f"hipp_scienceqa_img: answer {gold} out of range for {len(doc['choices'])} choices")
    return gold


# ---------------------------------------------------------------- results


def pope_process_results(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """One record ``{"yes_margin", "gold_yes"}`` per metric from the [yes, no] log-likelihoods."""
    if len(results) != 2:
        raise DataError(f"hipp_pope: expected 2 results (yes, no), got {len(results)}")
    ll_yes, ll_no = (parse_loglikelihood(r) for r in results)
    record = {"yes_margin": ll_yes - ll_no, "gold_yes": pope_doc_to_target(doc) == 0}
    return {name: record for name in POPE_METRICS}


def scienceqa_process_results(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """One record ``{"logprobs", "gold"}`` per metric from the per-option log-likelihoods."""
    logprobs = [parse_loglikelihood(r) for r in results]
    if len(logprobs) != len(doc["choices"]):
        raise DataError(f"hipp_scienceqa_img: expected {len(doc['choices'])} results, got {len(logprobs)}")
    record = {"logprobs": logprobs, "gold": scienceqa_doc_to_target(doc)}
    return {name: record for name in MC_METRICS}


def pope_summary(records: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """:func:`hipp_torchprune.evaluation.pope_metrics` over per-document records."""
    return pope_metrics([float(r["yes_margin"]) for r in records], [bool(r["gold_yes"]) for r in records])


def scienceqa_summary(records: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """:func:`hipp_torchprune.evaluation.mc_metrics` over per-document records."""
    return mc_metrics([list(r["logprobs"]) for r in records], [int(r["gold"]) for r in records])


def pope_accuracy(records: Sequence[dict[str, Any]]) -> float:
    """POPE accuracy."""
    return float(pope_summary(records)["accuracy"])


def pope_balanced_accuracy(records: Sequence[dict[str, Any]]) -> float:
    """POPE balanced accuracy ((TPR + TNR) / 2)."""
    return float(pope_summary(records)["balanced_accuracy"])


def pope_precision(records: Sequence[dict[str, Any]]) -> float:
    """POPE precision of the "yes" answers."""
    return float(pope_summary(records)["precision"])


def pope_recall(records: Sequence[dict[str, Any]]) -> float:
    """POPE recall of the "yes" answers."""
    return float(pope_summary(records)["recall"])


def pope_f1(records: Sequence[dict[str, Any]]) -> float:
    """POPE F1 of the "yes" answers."""
    return float(pope_summary(records)["f1"])


def pope_yes_ratio(records: Sequence[dict[str, Any]]) -> float:
    """Share of PREDICTED "yes" answers (lmms-eval's own ``pope_yes_ratio`` counts gold answers)."""
    return float(pope_summary(records)["yes_ratio"])


def pope_margin(records: Sequence[dict[str, Any]]) -> float:
    """Mean gold-answer log-margin ``log p(gold) - log p(other)``."""
    return float(pope_summary(records)["margin"])


def pope_loglik(records: Sequence[dict[str, Any]]) -> float:
    """Mean log-probability of the gold answer among yes/no (:func:`hipp_torchprune.evaluation.gold_loglik`)."""
    return float(pope_summary(records)["loglik"])


def pope_prob(records: Sequence[dict[str, Any]]) -> float:
    """Mean probability of the gold answer among yes/no (:func:`hipp_torchprune.evaluation.gold_prob`)."""
    return float(pope_summary(records)["prob"])


def scienceqa_accuracy(records: Sequence[dict[str, Any]]) -> float:
    """ScienceQA accuracy (highest option log-probability)."""
    return float(scienceqa_summary(records)["accuracy"])


def scienceqa_margin(records: Sequence[dict[str, Any]]) -> float:
    """Mean ``lp[gold] - logsumexp(lp[others])``."""
    return float(scienceqa_summary(records)["margin"])


def scienceqa_loglik(records: Sequence[dict[str, Any]]) -> float:
    """Mean log-probability of the gold letter among the options (:func:`hipp_torchprune.evaluation.gold_loglik`)."""
    return float(scienceqa_summary(records)["loglik"])


def scienceqa_prob(records: Sequence[dict[str, Any]]) -> float:
    """Mean probability of the gold letter among the options (:func:`hipp_torchprune.evaluation.gold_prob`)."""
    return float(scienceqa_summary(records)["prob"])
