"""The calibration loss that sees answers: by hand, the targets of a batch, and where it is used."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hipp_torchprune import api
from hipp_torchprune.calib_data import directory_samples, random_samples
from hipp_torchprune.errors import CalibrationError
from hipp_torchprune.models.tiny import build_tiny
from hipp_torchprune.pruning.answers import answer_loss, answer_variants, batch_targets, last_positions
from tests.conftest import samples


def _logits(probs: list[float], length: int = 3) -> torch.Tensor:
    """One row of ``length`` positions whose every position has the next-token distribution ``probs``."""
    return torch.tensor(probs).log().expand(1, length, len(probs)).clone()


def test_answer_loss_by_hand() -> None:
    logits = _logits([0.2, 0.3, 0.4, 0.1])
    assert float(answer_loss(logits, None, [(0, 1)])) == pytest.approx(-math.log(0.5))
    logits[0, 1] = torch.tensor([0.7, 0.1, 0.1, 0.1]).log()  # position 1 is last when the row is right-padded
    assert float(answer_loss(logits, torch.tensor([[1, 1, 0]]), [(0,)])) == pytest.approx(-math.log(0.7))
    assert float(answer_loss(logits, torch.tensor([[0, 1, 1]]), [(0,)])) == pytest.approx(-math.log(0.2))


def test_last_positions_for_either_padding_side() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_positions(mask, (3, 4)).tolist() == [3, 2, 3]
    assert last_positions(None, (2, 5)).tolist() == [4, 4]


def test_targets_per_batch() -> None:
    _, processor = build_tiny("tiny-llava")
    tok = processor.tokenizer
    assert answer_variants(" yes") == ("Yes", "yes") and answer_variants("B") == ("B",)
    targets = batch_targets(tok, random_samples(3), batch_size=2)
    assert len(targets) == 2 and len(targets[0]) == 2 and len(targets[1]) == 1
    assert set(targets[0][0]) == {tok.convert_tokens_to_ids(t) for t in ("Yes", "yes")} - {tok.unk_token_id}
    assert batch_targets(tok, samples(3), batch_size=2) == [None, None]
    with pytest.raises(CalibrationError, match="mix"):
        batch_targets(tok, [*random_samples(1), *samples(1)], batch_size=2)


def test_gradients_come_from_answers_when_samples_carry_them(monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor = build_tiny("tiny-llava", seed=0)
    calls = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(k.get("labels")) or real(*a, **k))
    with_answers = api.calibrate(model, processor, random_samples(2), with_grads=True)
    assert calls and all(labels is None for labels in calls)  # the answer loss reads logits, not labels
    without = api.calibrate(model, processor, [s[:2] for s in random_samples(2)], with_grads=True)
    assert calls[-1] is not None  # text loss
    name = next(iter(with_answers.taylor_abs))
    assert not torch.allclose(with_answers.taylor_abs[name], without.taylor_abs[name])
    assert torch.equal(with_answers.in_sq[name], without.in_sq[name])  # statistics read the prompt only


def test_world_calibration_samples_carry_gold_answers(make_world) -> None:
    from hipp_torchprune.data import TASKS, load_task_docs

    world: Path = make_world(0, 8)
    calib = directory_samples(world, 4)
    pope = load_task_docs(world, TASKS["pope"], split="calibration", limit=2)
    sqa = load_task_docs(world, TASKS["scienceqa"], split="calibration", limit=2)
    assert [s[2] for s in calib[0::2]] == [str(d["answer"]).capitalize() for d in pope]
    assert [s[2] for s in calib[1::2]] == ["ABCDEFGH"[int(d["answer"])] for d in sqa]


def test_calibration_samples_come_from_the_split_asked_for(make_world) -> None:
    """``calibration_samples(..., split=...)`` reads that split's rows, prompts and gold answers
    (the refit inside a training reward is fitted on the train split)."""
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.data import TASKS, load_task_docs, pope_prompt, scienceqa_prompt

    world: Path = make_world(0, 8)
    for split in ("calibration", "train"):
        samples = calibration_samples(str(world), 2, split=split)
        pope = load_task_docs(world, TASKS["pope"], split=split, limit=1)[0]
        sqa = load_task_docs(world, TASKS["scienceqa"], split=split, limit=1)[0]
        assert [s[1] for s in samples] == [pope_prompt(pope), scienceqa_prompt(sqa)]
    assert calibration_samples(str(world), 2, split="train")[1][1] != calibration_samples(str(world), 2)[1][1]
