"""Recovery loss terms, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from hipp_torchprune.recovery.losses import (
    answer_nll,
    class_balanced_mean,
    margin_hinge,
    next_token_nll,
    option_logprobs,
    pope_fraction,
    yes_rate_penalty,
)


def test_class_balanced_mean_by_hand() -> None:
    assert float(class_balanced_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))) == pytest.approx(2.25)
    assert float(class_balanced_mean(torch.tensor([4.0, 2.0]), torch.tensor([1, 1]))) == pytest.approx(3.0)
    assert float(class_balanced_mean(torch.tensor([]), torch.tensor([], dtype=torch.long))) == 0.0


def test_yes_rate_penalty_by_hand() -> None:
    z = torch.zeros(2)
    assert float(yes_rate_penalty(z, z)) == 0.0
    big = torch.tensor([50.0, 50.0])
    assert float(yes_rate_penalty(big, -big)) == pytest.approx(0.25)
    assert float(yes_rate_penalty(torch.tensor([50.0, -50.0]), torch.tensor([-50.0, 50.0]))) == pytest.approx(0.0)
    # p = sigmoid(log 3) = 0.75 for both -> (0.75 - 0.5)^2
    lp = torch.tensor([math.log(0.75), math.log(0.75)])
    assert float(yes_rate_penalty(lp, torch.log(torch.tensor([0.25, 0.25])))) == pytest.approx(0.0625)
    assert float(yes_rate_penalty(lp, torch.log(torch.tensor([0.25, 0.25])), 0.75)) == pytest.approx(0.0)
    assert float(yes_rate_penalty(big, -big, 1.0)) == pytest.approx(0.0)  # an all-"yes" batch wants "yes"


def test_answer_nll_counts_every_row_once_by_hand() -> None:
    nll, gold = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, 1])
    pope = torch.tensor([False, True, True])
    assert float(answer_nll(nll, pope, gold)) == pytest.approx(7 / 3)  # (1 + 2 * (2 + 4) / 2) / 3
    assert float(answer_nll(nll, pope, gold, w_pope=0.0)) == pytest.approx(1 / 3)
    assert float(answer_nll(nll, torch.zeros(3, dtype=torch.bool), gold)) == pytest.approx(7 / 3)  # plain mean
    # POPE only, 3 "no" rows at loss 1 and one "yes" row at loss 5: balanced (1 + 5) / 2 = 3, not the mean 2
    assert float(answer_nll(torch.tensor([1.0, 1.0, 1.0, 5.0]), torch.ones(4, dtype=torch.bool),
                            torch.tensor([1, 1, 1, 0]))) == pytest.approx(3.0)
    assert float(answer_nll(torch.tensor([]), torch.tensor([], dtype=torch.bool), torch.tensor([]))) == 0.0


def test_margin_hinge_by_hand() -> None:
    # row 0: gold 0, gap = log .6 - log .4 (2 options); row 1: gold 2 of 3, gap = log .5 - log(.3 + .2) = 0
    lp = torch.log(torch.tensor([[0.6, 0.4, 0.0], [0.3, 0.2, 0.5]]))
    gold = torch.tensor([0, 2])
    gap0 = math.log(0.6 / 0.4)
    assert float(margin_hinge(lp, gold, 1.0)) == pytest.approx(((1 - gap0) + 1.0) / 2, rel=1e-5)
    assert float(margin_hinge(lp, gold, 0.0)) == pytest.approx(0.0, abs=1e-6)


def test_option_logprobs_and_nll() -> None:
    lp = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    out = option_logprobs(lp, [[[0, 1], [3]]])
    assert torch.allclose(out, torch.log(torch.tensor([[0.3, 0.4]])))
    padded = option_logprobs(torch.cat([lp, lp]), [[[0], [1]], [[0], [1], [2]]])
    assert padded.shape == (2, 3) and padded[0, 2] == float("-inf")
    assert float(next_token_nll(lp, torch.tensor([2]))[0]) == pytest.approx(-math.log(0.3))


def test_pope_fraction_by_hand() -> None:
    assert pope_fraction(0.5) == 0.5
    assert pope_fraction(0.5, 0.0) == 0.5
    assert pope_fraction(0.5, 0.5) == pytest.approx(0.7)
    assert pope_fraction(0.5, 1.0) == pytest.approx(0.9)


def _rows(golds: list[int], fam: str = "pope") -> list:
    from hipp_torchprune.recovery.data import Row

    return [(fam, Row("", "", ((0,), (1,)), g)) for g in golds]  # token 0 = "yes", token 1 = "no"


def test_recovery_loss_composition_by_hand() -> None:
    from hipp_torchprune.recovery import RecoveryConfig, recovery_loss

    only_nll = RecoveryConfig(w_margin=0.0, w_yes_rate=0.0)
    # POPE rows gold yes / no, p(yes) = .8 / .4 of a 3-token vocabulary: each row counts once
    lp = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1]]))
    total, terms = recovery_loss(lp, _rows([0, 1]), only_nll)
    assert float(total) == pytest.approx((-math.log(0.8) - math.log(0.5)) / 2)  # was twice this
    assert terms["balanced"] == pytest.approx(float(total))
    # three "yes" rows and one "no" row whose mean p(yes) is the gold rate .75: no yes-rate pull
    lp = torch.log(torch.tensor([[0.75, 0.25, 1e-9]] * 4))
    _, terms = recovery_loss(lp, _rows([0, 0, 0, 1]), RecoveryConfig())
    assert terms["yes_rate"] == pytest.approx(0.0, abs=1e-6)
    _, terms = recovery_loss(lp, _rows([0, 1, 0, 1]), RecoveryConfig())  # gold rate .5: pulled by .25^2
    assert terms["yes_rate"] == pytest.approx(0.0625, rel=1e-4)
    # the weights: total = nll + w_margin * margin + w_yes_rate * yes_rate
    cfg = RecoveryConfig(w_margin=0.7, w_yes_rate=3.0)
    total, terms = recovery_loss(lp, _rows([0, 1]) + _rows([1], "mc"), cfg)
    assert float(total) == pytest.approx(terms["nll"] + 0.7 * terms["margin"] + 3.0 * terms["yes_rate"], rel=1e-6)
