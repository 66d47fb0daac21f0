"""Recovery loss terms, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from hipp_torchprune.recovery.losses import (
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
