"""PAMR (1-Stage, arXiv:2005.08104): `wsss.ops.pamr.pamr` against the official-style module.

The reference follows `visinf/1-stage-wseg: models/mods/pamr.py`: for every dilation a
replicate pad and a 3x3 shift-kernel convolution over the (B·K, 1, H, W) view, one module each
for |ΔI|, the copies of the mask and the local standard deviation, and a (B, C, P, H, W)
gather per iteration. Sizes: a 375x500 VOC image (21 classes) and a 4x81x81 training batch
(1-Stage at stride 4 of a 321 crop). Usage:

    python benchmarks/bench_pamr.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, agreement, compare, format_table, header  # noqa: E402

from wsss.ops.pamr import pamr  # noqa: E402
from wsss.ops.threads import single_cpu_thread  # noqa: E402

DILATIONS = (1, 2, 4, 8, 12, 24)


def _shift_kernels(kind: str) -> torch.Tensor:
    """3x3 kernels, one output channel each: "diff" (centre − neighbour), "copy" (neighbour),
    "window" (all 9 positions, centre included), neighbours in raster order."""
    positions = [(y, x) for y in range(3) for x in range(3)]
    if kind != "window":
        positions.remove((1, 1))
    k = torch.zeros(len(positions), 1, 3, 3)
    for i, (y, x) in enumerate(positions):
        k[i, 0, y, x] = 1.0
        if kind == "diff":
            k[i, 0, 1, 1] = 1.0
            k[i, 0, y, x] = -1.0
    return k


def _local(x: torch.Tensor, kernel: torch.Tensor, dilations) -> torch.Tensor:
    """Official `LocalAffinity.forward`: (B, K, H, W) → (B, K, P, H, W), a conv per dilation."""
    b, k, h, w = x.shape
    flat = x.reshape(b * k, 1, h, w)
    outs = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d)
            for d in dilations]
    return torch.cat(outs, 1).view(b, k, -1, h, w)


def pamr_reference(images: torch.Tensor, masks: torch.Tensor, *, dilations=DILATIONS,
                   num_iter: int = 10) -> torch.Tensor:
    """The official PAMR forward pass, written out (std kernel, |ΔI| kernel, copy kernel)."""
    diff_k, copy_k, win_k = (_shift_kernels(k).to(images) for k in ("diff", "copy", "window"))
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    std = _local(images, win_k, dilations).std(2, keepdim=True)
    aff = -_local(images, diff_k, dilations).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    for _ in range(num_iter):
        masks = (_local(masks, copy_k, dilations) * aff).sum(2)
    return masks


def cases(quick: bool) -> list[tuple[str, tuple[int, int, int, int], tuple[int, int]]]:
    """(name, image shape, mask size): masks come at stride 4 and are upsampled, as in 1-Stage."""
    out = [("PAMR 4x81x81 batch, 21 cl.", (4, 3, 81, 81), (81, 81))]
    if not quick:
        out.append(("PAMR 375x500 image, 21 cl.", (1, 3, 375, 500), (94, 125)))
    return out


def run(repeats: int = 3, quick: bool = False) -> list[Row]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, shape, mask_size in cases(quick):
        images = torch.rand(shape, generator=gen)
        masks = torch.softmax(4 * torch.randn(shape[0], 21, *mask_size, generator=gen), 1)
        with torch.inference_mode():
            ours, ref, ratio = compare(
                lambda: pamr(images, masks, dilations=DILATIONS, num_iter=10),
                lambda: pamr_reference(images, masks), repeats=repeats,
                ref_repeats=1 if shape[-1] > 200 else repeats)
        agree = agreement(ours.result, ref.result, class_dim=1)
        assert agree["argmax_equal"] and agree["max_abs_diff"] < 1e-4, agree
        rows.append(Row(name, ours.seconds, ref.seconds, ">= 10x", ratio >= 10, ours.peak_mb,
                        ref.peak_mb, f"max|Δ| {agree['max_abs_diff']:.1e}, argmax same",
                        ratio_value=ratio))
        if shape[0] > 1:  # the same comparison with the reference on one thread too
            with single_cpu_thread(), torch.inference_mode():
                ours, ref, ratio = compare(
                    lambda: pamr(images, masks, dilations=DILATIONS, num_iter=10),
                    lambda: pamr_reference(images, masks), repeats=repeats)
            rows.append(Row(name + ", 1 thread", ours.seconds, ref.seconds, ">= 10x",
                            ratio >= 10, ours.peak_mb, ref.peak_mb, "as above",
                            "both sides on one thread", ratio_value=ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the 375x500 image")
    args = parser.parse_args()
    print(header("PAMR"))
    print(format_table(run(args.repeats, args.quick)))


if __name__ == "__main__":
    main()
