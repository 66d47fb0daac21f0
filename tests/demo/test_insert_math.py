"""The pure tensor functions of vocabulary insertion (``hipp_torchprune.demo.insert_math``),
each checked by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from hipp_torchprune.demo.insert_math import (
    answer_kd,
    cosine_lr,
    gold_yes_rows,
    group_directions,
    mixed_answer_logits,
    name_direction_loss,
    new_word_embeddings,
    related_directions,
    relative_mse,
    scene_groups,
    scene_stand_ins,
    unflagged_embeddings,
)


def test_relative_mse_by_hand() -> None:
    teacher = torch.tensor([[3.0, 4.0]])
    assert relative_mse(teacher, teacher).item() == 0.0
    assert relative_mse(torch.zeros(1, 2), teacher).item() == pytest.approx(1.0)
    assert relative_mse(torch.tensor([[3.0, 0.0]]), teacher).item() == pytest.approx(16 / 25)


def test_answer_kd_reads_only_the_positions_that_predict_answer_tokens() -> None:
    teacher = torch.zeros(1, 3, 2)
    teacher[0, 1] = torch.tensor([math.log(3.0), 0.0])  # position 1 predicts token 2: p = (3/4, 1/4)
    student = torch.zeros(1, 3, 2)  # uniform everywhere
    student[0, 0] = torch.tensor([9.0, -9.0])  # position 0 predicts a prompt token: never read
    labels = torch.tensor([[-100, -100, 1]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert answer_kd(student, teacher, labels).item() == pytest.approx(expected, rel=1e-5)
    assert answer_kd(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_name_direction_loss_is_low_at_the_right_name_and_high_at_another() -> None:
    names = torch.eye(3)
    right = name_direction_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), names, tau=10.0)
    wrong = name_direction_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1]), names, tau=10.0)
    assert right.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), abs=1e-6)  # float32 log-softmax
    assert wrong.item() == pytest.approx(10 + right.item(), rel=1e-5)


def test_new_word_embeddings_have_the_asked_length_and_repeat_for_a_seed() -> None:
    a = new_word_embeddings(5, 8, 0.7, seed=3)
    assert a.shape == (5, 8) and torch.allclose(a.norm(dim=1), torch.full((5,), 0.7))
    assert torch.equal(a, new_word_embeddings(5, 8, 0.7, seed=3))
    assert not torch.equal(a, new_word_embeddings(5, 8, 0.7, seed=4))


def test_related_directions_share_a_group_direction_by_the_asked_amount() -> None:
    # categories 0 <-> 1 are companions, 2 -> 0 (one-way), 3 <-> 4; two words per category
    companion = torch.tensor([1, 0, 0, 4, 3])
    cats = torch.tensor([0, 0, 1, 1, 3, 3, 4, 4])
    d = related_directions(cats, companion, hidden=4096, share=0.5, seed=0)
    assert d.shape == (8, 4096) and torch.allclose(d.norm(dim=1), torch.ones(8))
    cos = d @ d.T
    # one category, or a companion pair: the group direction is the same, so the cosine is the share
    for i, j in ((0, 1), (0, 2), (2, 3), (4, 6), (5, 7)):
        assert cos[i, j].item() == pytest.approx(0.5, abs=0.05)
    for i, j in ((0, 4), (2, 6), (1, 7)):  # unrelated groups: near 0 in 4,096 dimensions
        assert abs(cos[i, j].item()) < 0.05
    alone = related_directions(cats, companion, hidden=4096, share=0.0, seed=0)
    assert abs((alone @ alone.T)[0, 1].item()) < 0.05  # share 0: independent
    assert torch.equal(d, related_directions(cats, companion, hidden=4096, share=0.5, seed=0))
    anchors = torch.eye(5, 4096)  # the group direction of the pair 0 <-> 1 is (e0 + e1) / sqrt(2)
    named = related_directions(cats, companion, hidden=4096, share=0.5, seed=0, anchors=anchors)
    assert named[0, 0].item() == pytest.approx(0.5, abs=0.03) and named[0, 1].item() == pytest.approx(0.5, abs=0.03)
    assert named[4, 3].item() == pytest.approx(0.5, abs=0.03) and abs(named[4, 0].item()) < 0.03


def test_related_directions_by_group_membership_share_the_groups_they_have_in_common() -> None:
    # groups: {0, 1}, {1, 2}, {3}; category 1 is in both of the first two
    groups = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    cats = torch.tensor([0, 0, 1, 2, 3])
    d = related_directions(cats, torch.zeros(4, dtype=torch.long), hidden=4096, share=0.5, seed=0, groups=groups)
    cos = d @ d.T
    assert cos[0, 1].item() == pytest.approx(0.5, abs=0.05)  # one category: the whole share
    # category 1's group direction is (g0 + g1) / sqrt(2): a cosine of share / sqrt(2) with 0 and 2
    assert cos[0, 2].item() == pytest.approx(0.5 / 2 ** 0.5, abs=0.05)
    assert cos[2, 3].item() == pytest.approx(0.5 / 2 ** 0.5, abs=0.05)
    assert abs(cos[0, 3].item()) < 0.05 and abs(cos[0, 4].item()) < 0.05  # no group in common
    anchors = torch.eye(4, 4096)  # group {0, 1} is (e0 + e1) / sqrt(2); category 3's group is e3
    named = related_directions(cats, torch.zeros(4, dtype=torch.long), hidden=4096, share=0.5, seed=0,
                               anchors=anchors, groups=groups)
    assert named[0, 0].item() == pytest.approx(0.5, abs=0.03) and named[0, 1].item() == pytest.approx(0.5, abs=0.03)
    assert named[4, 3].item() == pytest.approx(0.5 ** 0.5, abs=0.03) and abs(named[4, 0].item()) < 0.03


def test_group_directions_are_the_shared_part_of_the_related_directions() -> None:
    groups = torch.tensor([[1, 0], [1, 1], [0, 1]])
    cats = torch.tensor([0, 0, 1, 2])
    args = (torch.zeros(3, dtype=torch.long), 4096)
    d = related_directions(cats, *args, share=0.6, seed=3, groups=groups)
    g = group_directions(len(cats), *args, seed=3, groups=groups)  # (C, H)
    assert g.shape == (3, 4096) and torch.allclose(g.norm(dim=1), torch.ones(3))
    # each word's projection on its category's scene word is sqrt(share); its own part is orthogonal to it
    assert torch.allclose((d * g[cats]).sum(1), torch.full((4,), 0.6 ** 0.5), atol=0.03)
    assert torch.allclose(related_directions(cats, *args, share=0.0, seed=3, groups=groups) @ g.T,
                          torch.zeros(4, 3), atol=0.05)
    assert not torch.allclose(g, group_directions(len(cats), *args, seed=4, groups=groups))


def test_group_anchors_are_each_groups_own_direction() -> None:
    # groups: {0, 1}, {1, 2}; category 1 is in both; each group's anchor is its own axis
    groups = torch.tensor([[1, 0], [1, 1], [0, 1]])
    cats = torch.tensor([0, 1, 2])
    group_anchors = 3.0 * torch.eye(2, 4096)  # lengths do not matter: the directions are normalized
    d = related_directions(cats, torch.zeros(3, dtype=torch.long), hidden=4096, share=0.5, seed=0, groups=groups,
                           group_anchors=group_anchors)
    assert d[0, 0].item() == pytest.approx(0.5 ** 0.5, abs=0.03) and abs(d[0, 1].item()) < 0.03
    assert d[1, 0].item() == pytest.approx(0.5, abs=0.03) and d[1, 1].item() == pytest.approx(0.5, abs=0.03)
    assert d[2, 1].item() == pytest.approx(0.5 ** 0.5, abs=0.03)


@pytest.mark.parametrize(("asked", "scene", "visible", "expected"), [
    ("cup", "kitchen", ("car", "knife", "plate"), "knife"),  # absent, fits the kitchen: its first kitchen object
    ("cup", "kitchen", ("car", "dog"), "cup"),  # nothing of the kitchen to copy: the truth
    ("car", "kitchen", ("knife",), "car"),  # the kitchen does not favour cars: the truth
    ("knife", "kitchen", ("knife", "cup"), "knife"),  # present and first: itself
    ("cup", "garden", ("tree",), "cup"),  # scene types not listed favour nothing
])
def test_scene_stand_ins_copy_an_object_of_the_scene_only_when_the_scene_fits(
        asked: str, scene: str, visible: tuple[str, ...], expected: str) -> None:
    favoured = {"kitchen": ("cup", "knife", "plate"), "street": ("car",)}
    assert scene_stand_ins([asked], [scene], [visible], favoured) == [expected]


def test_scene_groups_put_each_category_in_the_scene_types_that_favour_it() -> None:
    from hipp_torchprune.world.categories import CATEGORY_NAMES, SCENE_TYPES

    g = scene_groups()
    assert g.shape[0] == len(CATEGORY_NAMES) and g.shape[1] >= len(SCENE_TYPES)
    assert bool((g.sum(1) >= 1).all())  # every category has a group
    kitchen = next(i for i, s in enumerate(SCENE_TYPES) if s.name == "kitchen")
    assert g[CATEGORY_NAMES.index("knife"), kitchen] == 1 and g[CATEGORY_NAMES.index("car"), kitchen] == 0
    assert g[CATEGORY_NAMES.index("cup")].sum() == 2  # kitchen and office


def test_mixed_answer_logits_blend_the_two_distributions_by_hand() -> None:
    a = torch.log(torch.tensor([[0.9, 0.1]]))  # "no" 0.9
    b = torch.log(torch.tensor([[0.2, 0.8]]))  # "yes" 0.8
    mixed = mixed_answer_logits(a, b, 0.25)
    assert torch.allclose(mixed.exp(), torch.tensor([[0.725, 0.275]]))  # 0.75 x a + 0.25 x b
    assert torch.allclose(torch.softmax(mixed, -1), mixed.exp())  # usable as logits
    assert torch.allclose(mixed_answer_logits(a, b, 0.0).exp(), a.exp())


def test_cosine_lr_runs_from_peak_to_floor() -> None:
    assert cosine_lr(0, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert cosine_lr(5, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)


def _linear_r2(x: torch.Tensor, y: torch.Tensor) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    fit = xc @ torch.linalg.lstsq(xc, yc).solution
    return float(1 - (fit - yc).pow(2).sum() / yc.pow(2).sum())


def test_unflagged_embeddings_erase_what_predicts_the_flags_by_hand() -> None:
    """Rows that carry two flags along two directions (plus an offset and a little noise): after
    unflagging no linear fit recovers the flags, the mean norm is kept, and a direction orthogonal
    to the cross-covariance is untouched up to the common scale."""
    g = torch.Generator().manual_seed(0)
    flags = (torch.rand(60, 2, generator=g) < 0.3).float()
    rows = 0.05 * torch.randn(60, 8, generator=g) + flags @ torch.randn(2, 8, generator=g) + torch.randn(8, generator=g)
    out = unflagged_embeddings(rows, flags)
    assert _linear_r2(rows, flags) > 0.99 and abs(_linear_r2(out, flags)) < 1e-4
    assert torch.isclose(out.norm(dim=1).mean(), rows.norm(dim=1).mean())
    cross = (rows - rows.mean(0)).T @ (flags - flags.mean(0))  # (H, P)
    q = torch.linalg.qr(torch.cat([cross, torch.randn(8, 6, generator=g)], 1)).Q[:, 2:]  # orthogonal to it
    ratio = float(out.norm(dim=1).mean() / (rows - (rows - rows.mean(0)) @ torch.linalg.qr(cross).Q
                                            @ torch.linalg.qr(cross).Q.T).norm(dim=1).mean())
    assert torch.allclose(out @ q, ratio * (rows @ q), atol=1e-5)


def test_gold_yes_rows_read_each_rows_first_answer_token() -> None:
    yes_ids = torch.tensor([7, 9])  # "Yes", " Yes"
    labels = torch.tensor([[-100, -100, 7, 3],  # answers "Yes ..."
                           [-100, 8, 7, -100],  # answers "No Yes": the first token decides
                           [-100, -100, -100, 9],  # the other "Yes" variant
                           [-100, -100, -100, -100]])  # no answer at all
    assert gold_yes_rows(labels, yes_ids).tolist() == [True, False, True, False]
