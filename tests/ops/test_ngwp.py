"""1-Stage scores and targets: nGWP, focal mask penalty, pseudo GT, class-balanced CE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wsss.ops.ngwp import balanced_seg_loss, focal_mask_penalty, ngwp_scores, pseudo_gt_masks


def test_ngwp_equals_hand_computation() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    m = torch.tensor([[[[0.5, 0.0], [0.25, 1.0]]]])
    expected = (0.5 * 1 + 0 * 2 + 0.25 * 3 + 1.0 * 4) / (1 + 0.5 + 0 + 0.25 + 1.0)
    assert math.isclose(ngwp_scores(x, m).item(), expected, rel_tol=1e-6)


def test_ngwp_limits() -> None:
    x = torch.randn(2, 3, 4, 5)
    # empty masks → 0 (the ε = 1 in the denominator)
    assert torch.equal(ngwp_scores(x, torch.zeros_like(x)), torch.zeros(2, 3))
    # full masks → mean(x) · N / (1 + N); large N approaches the plain mean (GAP)
    n = 20
    expected = x.flatten(2).sum(-1) / (1 + n)
    torch.testing.assert_close(ngwp_scores(x, torch.ones_like(x)), expected)
    big = torch.full((1, 1, 100, 100), 2.0)
    assert abs(ngwp_scores(big, torch.ones_like(big)).item() - 2.0) < 1e-3


def test_focal_penalty_equals_hand_computation() -> None:
    m = torch.tensor([[[[0.2, 0.4], [0.0, 0.2]]]])  # mean 0.2
    out = focal_mask_penalty(m, p=3, lam=0.01)
    assert math.isclose(out.item(), 0.8**3 * math.log(0.21), rel_tol=1e-6)


def test_focal_penalty_limits() -> None:
    empty, full = torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)
    torch.testing.assert_close(focal_mask_penalty(empty, p=3, lam=0.01),
                               torch.full((1, 2), math.log(0.01)))
    assert torch.equal(focal_mask_penalty(full, p=3, lam=0.01), torch.zeros(1, 2))
    # p = 0: the plain size penalty log(λ + m̄)
    half = torch.full((1, 1, 2, 2), 0.5)
    assert math.isclose(focal_mask_penalty(half, p=0, lam=0.1).item(), math.log(0.6),
                        rel_tol=1e-6)
    # monotone: a larger mask is penalised less
    a = focal_mask_penalty(torch.full((1, 1, 2, 2), 0.1)).item()
    b = focal_mask_penalty(torch.full((1, 1, 2, 2), 0.3)).item()
    assert a < b <= 0


def test_pseudo_gt_cutoffs_floor_and_ambiguity() -> None:
    masks = torch.zeros(1, 3, 1, 5)
    masks[0, 0] = torch.tensor([1.0, 0.69, 0.71, 0.0, 0.9])  # bg: 0.7 · 1.0
    masks[0, 1] = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.9])  # fg: 0.6 · 0.9 = 0.54
    masks[0, 2] = torch.tensor([0.0, 0.0, 0.0, 0.15, 0.0])  # max 0.15 → floor 0.2 → empty
    pgt = pseudo_gt_masks(masks)
    assert pgt[0, 0, 0].tolist() == [1, 0, 1, 0, 0]  # last pixel: claimed twice → cleared
    assert pgt[0, 1, 0].tolist() == [0, 0, 0, 0, 0]
    assert pgt[0, 2].sum() == 0
    assert pgt.sum(1).max() <= 1


def test_balanced_loss_equals_hand_computation() -> None:
    logits = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    pgt = torch.zeros(1, 3, 2, 2)
    pgt[0, 0, 0, 0] = pgt[0, 0, 0, 1] = pgt[0, 0, 1, 0] = 1  # 3 bg pixels
    pgt[0, 2, 1, 1] = 1  # 1 pixel of class 2
    labels = torch.tensor([[0.0, 1.0]])  # class 2 (index 1) labelled
    loss = balanced_seg_loss(logits, pgt, labels)
    ce = -F.log_softmax(logits, 1)
    q_bg, q_2 = (4 - 3) / 5, (4 - 1) / 5
    expected = (q_bg * (ce[0, 0, 0, 0] + ce[0, 0, 0, 1] + ce[0, 0, 1, 0]) + q_2 * ce[0, 2, 1, 1]) / 4
    torch.testing.assert_close(loss, expected.view(1))


def test_balanced_loss_zero_when_a_labelled_class_is_missing() -> None:
    logits = torch.randn(2, 3, 4, 4)
    pgt = torch.zeros(2, 3, 4, 4)
    pgt[:, 0, :2] = 1
    pgt[:, 1, 2:] = 1
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # image 2 also has class 2: not found
    loss = balanced_seg_loss(logits, pgt, labels)
    assert loss[0] > 0 and loss[1] == 0
    # ignored pixels (all-zero pseudo GT) contribute nothing but count in the mean
    pgt[0, :, 0] = 0
    assert balanced_seg_loss(logits, pgt, labels)[0] < loss[0] + 1e-6
