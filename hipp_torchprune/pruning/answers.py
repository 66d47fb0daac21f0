"""The calibration loss that sees answers: what every loss- or gradient-based method measures.

A calibration sample is ``(image, prompt)`` or ``(image, prompt, answer)``. The world's
calibration split carries gold answers (POPE "Yes"/"No", ScienceQA option letters,
:func:`hipp_torchprune.calib_data.directory_samples`), and with them the loss is the one HiPP's
rewards and the evaluation read: the negative log-probability of the gold answer's first token
(summed over its variants, e.g. "Yes"/"yes") at the last prompt position, averaged over rows.
Without answers it falls back to the mean next-token loss over the prompt's real text tokens
(image placeholders and padding excluded), so plain ``(image, prompt)`` lists keep working.

Used by LLM-Pruner's Taylor gradients (:func:`hipp_torchprune.pruning.calibration.collect_stats`),
ECoFLaP's zeroth-order probe and the calibration-split selection of OWL's and ECoFLaP's
hyper-parameters; every method of a comparison gets the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.errors import CalibrationError

#: Gold token ids of each row of a batch (``None``: the batch has no answers).
Targets = list[tuple[int, ...]] | None


def sample_answer(sample: Sequence[Any]) -> str | None:
    """The gold answer of a calibration sample, or ``None`` for an ``(image, prompt)`` pair."""
    return str(sample[2]) if len(sample) > 2 and sample[2] is not None else None


def answer_variants(answer: str) -> tuple[str, ...]:
    """The strings that count as ``answer``: both casings of Yes/No, an option letter as is."""
    from hipp_torchprune.evaluation import NO_VARIANTS, YES_VARIANTS

    text = answer.strip()
    return {"yes": YES_VARIANTS, "no": NO_VARIANTS}.get(text.lower(), (text,))


def batch_targets(tokenizer: Any, samples: Sequence[Sequence[Any]], batch_size: int = 8) -> list[Targets]:
    """Per batch of ``batch_size`` samples (the batches of
    :func:`hipp_torchprune.api.calibration_batches`): each row's gold token ids, or ``None``.

    A batch mixing samples with and without answers raises :class:`CalibrationError`.
    """
    from hipp_torchprune.evaluation import answer_token_ids

    out: list[Targets] = []
    for start in range(0, len(samples), batch_size):
        answers = [sample_answer(s) for s in samples[start:start + batch_size]]
        if all(a is None for a in answers):
            out.append(None)
        elif any(a is None for a in answers):
            raise CalibrationError("calibration samples mix (image, prompt) pairs and (image, prompt, answer) "
                                   "triples; give answers for all of them or for none")
        else:
            out.append([tuple(answer_token_ids(tokenizer, answer_variants(a))) for a in answers])
    return out


def last_positions(attention_mask: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """Index of each row's last real token (left or right padding); ``T - 1`` without a mask."""
    if attention_mask is None:
        return torch.full((shape[0],), shape[1] - 1, dtype=torch.long)
    flipped = attention_mask.flip(1).to(torch.long).argmax(1)
    return (attention_mask.shape[1] - 1 - flipped).cpu()


def answer_loss(logits: torch.Tensor, attention_mask: torch.Tensor | None,
                targets: list[tuple[int, ...]]) -> torch.Tensor:
    """``mean_b -log sum_{v in targets[b]} softmax(logits[b, last_b])[v]`` (float32).

    Example: one row whose last-position probabilities put 0.2 on "Yes" and 0.3 on "yes", with
    targets ``[(Yes, yes)]``, gives ``-log 0.5``.
    """
    if len(targets) != logits.shape[0]:
        raise CalibrationError(f"{len(targets)} answers for a batch of {logits.shape[0]} rows")
    last = last_positions(attention_mask, (logits.shape[0], logits.shape[1])).to(logits.device)
    logp = torch.log_softmax(logits[torch.arange(logits.shape[0], device=logits.device), last].float(), -1)
    rows = [-torch.logsumexp(logp[b, list(ids)], 0) for b, ids in enumerate(targets)]
    return torch.stack(rows).mean()


def text_loss(model: nn.Module, adapter: ModelAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over real text tokens (vision placeholders and padding excluded)."""
    labels = batch["input_ids"].clone()
    labels[adapter.non_text_positions(labels)] = -100
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return model(**batch, labels=labels, use_cache=False).loss


def calibration_loss(model: nn.Module, adapter: ModelAdapter, batch: dict[str, torch.Tensor],
                     targets: Targets) -> torch.Tensor:
    """:func:`answer_loss` of one batch when it has ``targets``, else :func:`text_loss`."""
    if targets is None:
        return text_loss(model, adapter, batch)
    out = model(**batch, use_cache=False)
    return answer_loss(out.logits, batch.get("attention_mask"), targets)


def loss_batches(adapter: ModelAdapter, processor: Any, samples: Sequence[Sequence[Any]],
                 batch_size: int = 8) -> list[tuple[dict[str, torch.Tensor], Targets]]:
    """The calibration samples encoded once, on the model's device, with their targets."""
    from hipp_torchprune.api import calibration_batches

    if not samples:
        raise CalibrationError("the calibration set is empty: give at least one (image, prompt) sample")
    device = next(adapter.model.parameters()).device
    targets = batch_targets(processor.tokenizer, samples, batch_size)
    batches = calibration_batches(adapter, processor, samples, batch_size)
    return [({k: v.to(device) for k, v in b.items()}, t) for b, t in zip(batches, targets)]


@torch.no_grad()
def mean_calibration_loss(model: nn.Module, adapter: ModelAdapter,
                          batches: Sequence[tuple[dict[str, torch.Tensor], Targets]]) -> float:
    """The mean :func:`calibration_loss` over prepared :func:`loss_batches` (no gradients)."""
    return sum(float(calibration_loss(model, adapter, b, t)) for b, t in batches) / len(batches)
