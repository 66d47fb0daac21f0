"""Batched log-probability evaluation of VLMs on POPE and ScienceQA-style multiple choice.

Scoring reads the next-token distribution at the answer position (the last prompt position,
prompts left-padded) with one forward pass per batch:

* POPE: margin ``m = log sum_{y in Y+} p(y) - log sum_{y in Y-} p(y)`` with ``Y+`` the gold
  answer's token variants ("Yes"/"yes") and ``Y-`` the other answer's; predicted "yes" iff the
  yes-vs-no margin is positive.
* Multiple choice: the gold letter's log-probability (summed over its variants) against the
  log-sum of the other options' letters; the prediction is the option letter with the highest
  log-probability.

The math lives in small pure functions (:func:`log_margin`, :func:`gold_loglik`,
:func:`pope_metrics`, :func:`mc_metrics`); :func:`prepare_eval` builds the batched inputs once so that repeated
:func:`evaluate` calls (thousands, during pruning) only run forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hipp_torchprune.data import (
    TaskSpec,
    decode_image,
    load_task_docs,
    option_letters,
    parse_tasks,
    pope_prompt,
    scienceqa_prompt,
)
from hipp_torchprune.errors import DataError

if TYPE_CHECKING:
    import torch

YES_VARIANTS: tuple[str, ...] = ("Yes", "yes")
NO_VARIANTS: tuple[str, ...] = ("No", "no")


# ---------------------------------------------------------------- pure math


def logsumexp(values: Sequence[float]) -> float:
    """Numerically stable ``log(sum(exp(v)))``; ``-inf`` for an empty sequence."""
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def log_margin(logprobs: Sequence[float], pos_ids: Sequence[int], neg_ids: Sequence[int]) -> float:
    """``log sum_{i in pos} p_i - log sum_{j in neg} p_j`` from a vector of log-probabilities."""
    return logsumexp([logprobs[i] for i in pos_ids]) - logsumexp([logprobs[j] for j in neg_ids])


def log_sigmoid(x: float) -> float:
    """Numerically stable ``log(1 / (1 + exp(-x)))``.

    Example: ``log_sigmoid(0.0) == -log(2)``; a large ``x`` gives about ``-exp(-x)``.
    """
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def gold_loglik(gold_margins: Sequence[float]) -> float:
    """Mean log-probability of the gold answer among the answer options, from gold margins.

    A gold margin ``m = log p(gold) - log sum p(others)`` (eq. 11) gives
    ``log(p(gold) / sum_options p) = log_sigmoid(m)``. Unlike the mean margin it saturates on
    rows the model already answers confidently and grows without bound on wrong ones, so it
    ranks models as accuracy does (a proper scoring rule). 0.0 for no rows.
    """
    return sum(log_sigmoid(m) for m in gold_margins) / len(gold_margins) if gold_margins else 0.0


def gold_prob(gold_margins: Sequence[float]) -> float:
    """Mean probability of the gold answer among the answer options, ``sigmoid(m)`` per row.

    Example: margins ``[0.0, 0.0]`` give 0.5. Bounded per row, it saturates on both sides: a row
    answered confidently right or hopelessly wrong moves it little, a row near the decision
    boundary most, so it tracks accuracy where :func:`gold_loglik` still rewards confidence on
    rows whose answer does not change. 0.0 for no rows.
    """
    return sum(math.exp(log_sigmoid(m)) for m in gold_margins) / len(gold_margins) if gold_margins else 0.0


def pope_metrics(yes_margins: Sequence[float], gold_yes: Sequence[bool]) -> dict[str, float | int]:
    """POPE metrics from yes-vs-no margins (``log p(yes) - log p(no)``) and gold labels.

    Returns accuracy, balanced_accuracy ((TPR+TNR)/2), precision, recall, f1, yes_ratio (the
    PREDICTED yes ratio), margin (mean gold-answer log-margin), loglik (:func:`gold_loglik`), prob
    (:func:`gold_prob`) and n.
    Undefined ratios are 0.
    """
    if len(yes_margins) != len(gold_yes):
        raise ValueError("yes_margins and gold_yes differ in length")
    n = len(gold_yes)
    pred = [m > 0 for m in yes_margins]
    tp = sum(p and g for p, g in zip(pred, gold_yes))
    tn = sum((not p) and (not g) for p, g in zip(pred, gold_yes))
    fp = sum(p and not g for p, g in zip(pred, gold_yes))
    fn = sum((not p) and g for p, g in zip(pred, gold_yes))
    pos, neg = tp + fn, tn + fp
    tpr = tp / pos if pos else 0.0
    tnr = tn / neg if neg else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * tpr / (precision + tpr) if precision + tpr else 0.0
    gold_margins = [m if g else -m for m, g in zip(yes_margins, gold_yes)]
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "balanced_accuracy": (tpr + tnr) / 2,
        "precision": precision,
        "recall": tpr,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "margin": sum(gold_margins) / n if n else 0.0,
        "loglik": gold_loglik(gold_margins),
        "prob": gold_prob(gold_margins),
        "n": n,
    }


def mc_prediction(logprobs: Sequence[float]) -> int:
    """The predicted option: the first with the highest log-probability."""
    return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))


def mc_metrics(option_logprobs: Sequence[Sequence[float]], gold: Sequence[int]) -> dict[str, float | int]:
    """Multiple-choice accuracy, mean margin, :func:`gold_loglik` and :func:`gold_prob` from per-option
    log-probabilities.

    The margin of one question is ``lp[gold] - logsumexp(lp[others])``; the prediction is the
    first option with the highest log-probability.
    """
    if len(option_logprobs) != len(gold):
        raise ValueError("option_logprobs and gold differ in length")
    n = len(gold)
    correct, margins = 0, []
    for lps, g in zip(option_logprobs, gold):
        correct += mc_prediction(lps) == g
        margins.append(lps[g] - logsumexp([v for i, v in enumerate(lps) if i != g]))
    return {"accuracy": correct / n if n else 0.0, "margin": sum(margins) / n if n else 0.0,
            "loglik": gold_loglik(margins), "prob": gold_prob(margins), "n": n}


# ---------------------------------------------------------------- token variants


def answer_token_ids(tokenizer: Any, variants: Sequence[str]) -> list[int]:
    """Token ids that start each answer variant (also with a leading space), deduplicated.

    Variants that encode to a single token are preferred; otherwise the first token is used.
    The unknown token is never returned.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for v in variants:
        singles = [e for e in (tokenizer.encode(s, add_special_tokens=False) for s in (v, " " + v))
                   if len(e) == 1]
        chosen = [e[0] for e in singles] or [tokenizer.encode(v, add_special_tokens=False)[0]]
        for i in chosen:
            if i != unk and i not in ids:
                ids.append(i)
    if not ids:
        raise DataError(f"the tokenizer has no token for any of {list(variants)}")
    return ids


# ---------------------------------------------------------------- preparation


@dataclass(frozen=True)
class PreparedTask:
    """One task's pre-built model inputs.

    Attributes:
        name: task name.
        family: "pope" or "mc".
        batches: processor outputs (left-padded), one dict of tensors per batch.
        candidates: per example, the token-id lists of each option (POPE: [yes ids, no ids]).
        gold: per example, the gold option index (POPE: 0 = yes, 1 = no).
    """

    name: str
    family: str
    batches: list[dict[str, Any]]
    candidates: list[list[list[int]]]
    gold: list[int]


@dataclass(frozen=True)
class PreparedEval:
    """Pre-built inputs for several tasks; pass it to :func:`evaluate` instead of a data dir."""

    tasks: list[PreparedTask] = field(default_factory=list)


def _chat_text(processor: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _prepare_task(processor: Any, data_dir: str | Path, spec: TaskSpec, limit: int | None,
                  batch_size: int, split: str) -> PreparedTask:
    docs = load_task_docs(data_dir, spec, split=split, limit=limit)
    if not docs:
        raise DataError(f"task {spec.name!r}: no rows in {str(data_dir)!r}")
    return prepare_docs(processor, spec, docs, batch_size)


def prepare_docs(processor: Any, spec: TaskSpec, docs: Sequence[dict[str, Any]], batch_size: int = 64) -> PreparedTask:
    """Prompt and tokenize rows already loaded (``load_task_docs``' format: ``question``/``answer``
    or ``choices``, ``image``, ``_image_key``, ``_where``), for a benchmark that asks its own
    questions about a world's images."""
    tok = processor.tokenizer
    if spec.family == "pope":
        yes, no = answer_token_ids(tok, YES_VARIANTS), answer_token_ids(tok, NO_VARIANTS)
        prompts = [pope_prompt(d) for d in docs]
        candidates = [[yes, no]] * len(docs)
        gold = []
        for d in docs:
            ans = str(d["answer"]).strip().lower()
            if ans not in ("yes", "no"):
                raise DataError(f"{d['_where']}: answer must be 'yes' or 'no', got {d['answer']!r}")
            gold.append(0 if ans == "yes" else 1)
    else:
        letters = {L: answer_token_ids(tok, [L]) for L in option_letters(26)}
        prompts = [scienceqa_prompt(d) for d in docs]
        candidates = [[letters[L] for L in option_letters(len(d["choices"]))] for d in docs]
        gold = [int(d["answer"]) for d in docs]
        for d, g in zip(docs, gold):
            if not 0 <= g < len(d["choices"]):
                raise DataError(f"{d['_where']}: answer {g} out of range for {len(d['choices'])} choices")
    images: dict[str, Any] = {}
    for d in docs:
        if d["_image_key"] not in images:
            images[d["_image_key"]] = decode_image(d["image"], d["_where"])
    template = _chat_text(processor, "\x00")
    texts = [template.replace("\x00", p) for p in prompts]
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        batches = []
        for s in range(0, len(docs), batch_size):
            chunk = docs[s:s + batch_size]
            enc = processor(text=texts[s:s + batch_size], images=[images[d["_image_key"]] for d in chunk],
                            return_tensors="pt", padding=True)
            batches.append(dict(enc))
    finally:
        tok.padding_side = old_side
    return PreparedTask(spec.name, spec.family, batches, candidates, gold)


def prepare_eval(processor: Any, data_dir: str | Path, tasks: str | Sequence[str],
                 limit: int | None = None, batch_size: int = 64, split: str = "test") -> PreparedEval:
    """Load, decode, prompt and tokenize the tasks' rows once (left-padded batches).

    Args:
        processor: the model's processor (chat template + tokenizer + image processor).
        data_dir: world directory, split directory or lmms-lab download (see :mod:`hipp_torchprune.data`).
        tasks: comma-separated names or a sequence (pope_random, pope_popular, pope_adversarial,
            pope, scienceqa).
        limit: keep the first ``limit`` rows of each task.
        batch_size: examples per forward pass.
        split: which split of a world directory to read.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    specs = parse_tasks(tasks)
    return PreparedEval([_prepare_task(processor, data_dir, s, limit, batch_size, split) for s in specs])


# ---------------------------------------------------------------- scoring


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` position of each token among its row's real tokens (``cumsum - 1``; padding gets
    0), so a left-padded row has the positions it has alone, whatever its batch's longest row.

    Example: mask ``[[0, 0, 1, 1], [1, 1, 1, 1]]`` gives ``[[0, 0, 0, 1], [0, 1, 2, 3]]``.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def with_position_ids(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` plus ``position_ids`` from the attention mask (:func:`padded_position_ids`), so a
    row scores the same alone and in a padded batch. Models that derive their own positions from
    the mask (M-RoPE models such as Qwen2.5-VL, which have ``get_rope_index``) and inputs that
    already carry positions or have no mask are returned unchanged."""
    inner = getattr(model, "model", model)
    if "position_ids" in inputs or "attention_mask" not in inputs or hasattr(inner, "get_rope_index"):
        return inputs
    return {**inputs, "position_ids": padded_position_ids(inputs["attention_mask"])}


def last_position_logprobs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Log-softmax of the next-token logits at the last position, one forward pass (float32),
    with positions from the attention mask (:func:`with_position_ids`)."""
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device=device, dtype=dtype) if k == "pixel_values" else v.to(device))
              for k, v in batch.items() if hasattr(v, "to")}
    out = model(**with_position_ids(model, inputs), use_cache=False, logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def option_logprobs(model: Any, task: PreparedTask) -> list[list[float]]:
    """Per example, the log-probability of each option (POPE: [yes, no]) at the answer position."""
    import torch

    from hipp_torchprune.pruning.compute import float32_linears

    option_lps: list[list[float]] = []
    with torch.inference_mode(), float32_linears(model):
        i = 0
        for batch in task.batches:
            lp = last_position_logprobs(model, batch).cpu()
            for row in lp:
                cands = task.candidates[i]
                flat = sorted({t for c in cands for t in c})
                vals = dict(zip(flat, row[flat].tolist()))
                option_lps.append([logsumexp([vals[t] for t in c]) for c in cands])
                i += 1
    return option_lps


def score_task(model: Any, task: PreparedTask, per_row: bool = False) -> dict[str, Any]:
    """Run a prepared task through ``model`` and compute its metrics; with ``per_row`` also
    ``"correct"``: one ``"1"``/``"0"`` per row, whether its prediction was right (paired bootstraps)."""
    option_lps = option_logprobs(model, task)
    if task.family == "pope":
        margins = [o[0] - o[1] for o in option_lps]
        metrics: dict[str, Any] = dict(pope_metrics(margins, [g == 0 for g in task.gold]))
        predicted = [0 if m > 0 else 1 for m in margins]  # option 0 is "yes", as gold 0 is
    else:
        metrics = dict(mc_metrics(option_lps, task.gold))
        predicted = [mc_prediction(lps) for lps in option_lps]
    if per_row:
        metrics["correct"] = "".join("1" if p == g else "0" for p, g in zip(predicted, task.gold, strict=True))
    return metrics


def evaluate(model: Any, processor: Any, data: str | Path | PreparedEval,
             tasks: str | Sequence[str] = "pope_adversarial", limit: int | None = None,
             batch_size: int = 64, split: str = "test", per_row: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory model on tasks; returns ``{task: metrics}``.

    ``data`` is a data directory (prepared on each call) or a :class:`PreparedEval` from
    :func:`prepare_eval` (then ``tasks``, ``limit``, ``batch_size`` and ``split`` are ignored).
    ``per_row`` adds each task's per-row correctness (:func:`score_task`).
    """
    prepared = data if isinstance(data, PreparedEval) else prepare_eval(
        processor, data, tasks, limit=limit, batch_size=batch_size, split=split)
    was_training = model.training
    model.eval()
    try:
        return {t.name: score_task(model, t, per_row) for t in prepared.tasks}
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- loading


def load_model_and_processor(path: str | Path, device: str | None = None,
                             dtype: str | None = None) -> tuple[Any, Any]:
    """Load a checkpoint directory, dense or pruned (or "demo"), as ``(model, processor)`` in eval mode.

    Goes through :func:`hipp_torchprune.loading.load_model`, so pruned checkpoints with per-layer
    MLP widths load too. ``dtype`` (a :data:`~hipp_torchprune.loading.DTYPE_CHOICES` name) defaults
    to the checkpoint's own; ``device`` to ``cuda`` when available.
    """
    import torch

    from hipp_torchprune.loading import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(path, dtype=dtype, device=device)
