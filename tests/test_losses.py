"""PCL (AMN) and IRN losses on hand-computed tiny examples."""

from __future__ import annotations

import math

import torch

from wsss.losses import irn_affinity_loss, irn_displacement_loss, pcl_loss, smoothed_targets


def _xent(logits: list[float], target: list[float]) -> float:
    log_z = math.log(sum(math.exp(v) for v in logits))
    return -sum(t * (v - log_z) for v, t in zip(logits, target))


def test_smoothed_targets_sum_to_one_with_amn_values() -> None:
    seeds = torch.tensor([[[0, 3, 255], [20, 1, 0]]])
    targets = smoothed_targets(seeds, 21, 0.4)
    assert targets.shape == (1, 21, 2, 3)
    torch.testing.assert_close(targets.sum(1), torch.ones(1, 2, 3))
    values = sorted(torch.unique(targets).tolist())
    assert len(values) == 2
    assert math.isclose(values[0], 0.02, rel_tol=1e-6)
    assert math.isclose(values[1], 0.6, rel_tol=1e-6)
    assert targets[0, 3, 0, 1] == targets.max()
    assert targets[0, 0, 0, 2] == targets.max()  # ignore → background one-hot (excluded later)


def test_pcl_hand_computed_with_ignore() -> None:
    logits = torch.tensor([[[[2.0, 0.0, 5.0, 1.0]], [[0.0, 1.0, -3.0, 0.0]],
                            [[1.0, 3.0, 0.0, 2.0]]]])  # (1, 3, 1, 4)
    seeds = torch.tensor([[[0, 2, 255, 0]]])
    eps = 0.4
    on, off = 1 - eps, eps / 2
    pix = [logits[0, :, 0, i].tolist() for i in range(4)]
    bg = (_xent(pix[0], [on, off, off]) + _xent(pix[3], [on, off, off])) / 2
    fg = _xent(pix[1], [off, off, on])
    expected = (bg + fg) / 2
    assert math.isclose(pcl_loss(logits, seeds, eps).item(), expected, rel_tol=1e-5)
    # The ignored pixel does not matter.
    changed = logits.clone()
    changed[0, :, 0, 2] = torch.tensor([-9.0, 9.0, 4.0])
    assert math.isclose(pcl_loss(changed, seeds, eps).item(), expected, rel_tol=1e-5)


def test_pcl_without_foreground_or_background_is_finite() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    only_bg = torch.zeros(2, 3, 3, dtype=torch.long)
    only_bg[0, 0, 0] = 255
    loss = pcl_loss(logits, only_bg)
    assert torch.isfinite(loss)
    targets = smoothed_targets(only_bg, 4)
    per_pixel = -(targets * torch.log_softmax(logits, 1)).sum(1)
    keep = only_bg == 0
    torch.testing.assert_close(loss, per_pixel[keep].mean())
    only_fg = torch.full((2, 3, 3), 2, dtype=torch.long)
    assert torch.isfinite(pcl_loss(logits, only_fg))
    nothing = torch.full((2, 3, 3), 255, dtype=torch.long)
    empty = pcl_loss(logits, nothing)
    assert empty.item() == 0.0
    empty.backward()
    assert torch.all(logits.grad == 0)


def test_irn_affinity_loss_hand_computed() -> None:
    aff = torch.tensor([[[0.9, 0.2, 0.5]]])
    bg = torch.tensor([[[1.0, 0.0, 0.0]]])
    fg = torch.tensor([[[0.0, 0.0, 1.0]]])
    neg = torch.tensor([[[0.0, 1.0, 0.0]]])
    pos_loss, neg_loss = irn_affinity_loss(aff, bg, fg, neg)
    e = 1e-5
    expected_pos = 0.5 * -math.log(0.9 + e) / (1 + e) + 0.5 * -math.log(0.5 + e) / (1 + e)
    assert math.isclose(pos_loss.item(), expected_pos, rel_tol=1e-5)
    assert math.isclose(neg_loss.item(), -math.log(1 + e - 0.2) / (1 + e), rel_tol=1e-5)


def test_irn_displacement_loss_zero_at_the_offsets() -> None:
    directions = torch.tensor([[0, 1], [1, -1]])
    pair = directions.t().float()[None, :, :, None].repeat(1, 1, 1, 5)  # (1, 2, D, S)
    fg = torch.ones(1, 2, 5)
    bg = torch.zeros(1, 2, 5)
    dp_fg, dp_bg = irn_displacement_loss(pair, directions, bg, fg)
    assert dp_fg.item() < 1e-6 and dp_bg.item() == 0.0
    dp_fg, dp_bg = irn_displacement_loss(torch.zeros_like(pair), directions, fg, fg)
    # |0 - d| summed over both channels: (1 + 2) / 2 per direction on average → 0.75.
    assert math.isclose(dp_fg.item(), 3 * 5 / (2 * 10 + 1e-5), rel_tol=1e-5)
    assert dp_bg.item() == 0.0
