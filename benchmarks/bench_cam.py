"""CAM generation (IRN recipe: ResNet-50 at output stride 16, scales 1.0/0.5/1.5/2.0 + flip) on a
375x500 image: `CamBaseline.infer_cams` against the official-style loop, and both against the
measured fp32 matmul rate.

The reference follows `jiwoon-ahn/irn: step/make_cam.py` with `net/resnet50_cam.py CAM`: per
scale, the rescaled image and its mirror as a batch of two in NCHW through the eval-mode network
(BatchNorm as a separate op), CAMs = ReLU(1x1 conv), image + unflipped mirror, bilinear to the
stride-16-rounded size, cropped, summed over scales, then max-normalised for the present classes.
FLOPs are counted over the network's convolutions as the official code runs them (2 · MACs of
direct convolutions, from forward hooks); efficiency is FLOP / time / matmul rate, with the rate
of a 2048² fp32 matmul measured in this process right before and after each timed call (median
over rounds of the per-call efficiency). `infer_cams` runs the wide 3x3 convolutions as Winograd
F(4x4, 3x3) by default (`pipeline.winograd`), which does fewer multiply-adds for the same
output: its efficiency is an effective rate, and the row also states the share of the matmul
rate it actually executes. The image and its mirror run as two concurrent single-view
streams (`pipeline.view_streams`). The `pipeline.winograd=false` and `pipeline.view_streams=false`
rows time the default path without each, alternated with it. Random weights: the cost of a forward pass does not depend on them.
Usage:

    python benchmarks/bench_cam.py [--repeats 3] [--bf16] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, agreement, format_table, header, matmul_gflops, measure  # noqa: E402

from wsss.config import load_config  # noqa: E402
from wsss.data.transforms import normalize_image, pil_rescale  # noqa: E402
from wsss.methods import build_method  # noqa: E402
from wsss.methods.cam_baseline import WINOGRAD_MIN_CHANNELS  # noqa: E402
from wsss.ops.cam import strided_up_size  # noqa: E402
from wsss.ops.winograd import WinogradConv2d, direct_is_faster  # noqa: E402

SCALES = (1.0, 0.5, 1.5, 2.0)


def cams_reference(model, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """IRN `make_cam` (high-res branch) with the model as IRN runs it."""
    height, width = image.shape[:2]
    up = strided_up_size((height, width), 16)
    outputs = []
    for scale in SCALES:
        scaled = image if scale == 1.0 else pil_rescale(image, scale, order=3)
        x = normalize_image(scaled)
        pair = torch.stack([x, x.flip(-1)])  # IRN's dataset stacks image and mirror
        feats = model.features(pair)
        cam = F.relu(F.conv2d(feats, model.classifier.weight))
        outputs.append(cam[0] + cam[1].flip(-1))
    high = torch.stack([F.interpolate(o[:, None], up, mode="bilinear", align_corners=False)
                        for o in outputs]).sum(0)[:, 0, :height, :width]
    valid = torch.from_numpy(np.flatnonzero(labels))
    high = high[valid]
    high = high / (F.adaptive_max_pool2d(high, (1, 1)) + 1e-5)
    return high.numpy()


def _direct_flops(module, output) -> int:
    """2 · multiply-adds of a direct convolution producing `output`."""
    k = module.kernel_size[0] * module.kernel_size[1]
    return 2 * output.numel() * module.in_channels // module.groups * k


def _count_flops(model, image: np.ndarray, cost) -> int:
    """Sum of cost(conv, output) over every convolution of the 4 scales x flip."""
    total = [0]

    def hook(module, _inputs, output):
        total[0] += cost(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            for scale in SCALES:
                scaled = image if scale == 1.0 else pil_rescale(image, scale, order=3)
                x = normalize_image(scaled)
                model.cams(torch.stack([x, x.flip(-1)]))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def conv_flops(model, image: np.ndarray) -> int:
    """FLOPs (2 · multiply-adds) of every convolution over the 4 scales x flip."""
    return _count_flops(model, image, _direct_flops)


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (12, 16, 3)).repeat(32, 0).repeat(32, 1)[:375, :500]
    image = np.clip(blocks + rng.normal(0, 8, blocks.shape), 0, 255).astype(np.uint8)
    labels = np.zeros(20, dtype=np.float32)
    labels[[4, 14]] = 1
    return image, labels


def executed_flops(method, model, image: np.ndarray) -> int:
    """FLOPs `infer_cams` executes: `conv_flops`, except that each convolution the inference
    copy runs as Winograd F(4x4, 3x3) counts its 36 tile products and both transforms instead
    of the direct 3x3 multiply-adds."""
    winograd = method.cfg.pipeline.winograd

    def cost(module, output) -> int:
        batch, out_channels, height, width = output.shape
        if not (winograd and WinogradConv2d.eligible(module)
                and module.in_channels >= WINOGRAD_MIN_CHANNELS
                and not direct_is_faster(output.shape, out_channels)):
            return _direct_flops(module, output)
        tiles = batch * -(-height // 4) * -(-width // 4)
        c = module.in_channels
        return 2 * 36 * tiles * (c * out_channels + 36 * c + 16 * out_channels)

    return _count_flops(model, image, cost)


def run(repeats: int = 3, bf16: bool = False, compile: bool = False) -> list[Row]:
    torch.manual_seed(0)
    image, labels = make_inputs()
    cfg = load_config("configs/voc/cam_baseline.yaml", ["model.pretrained=none"])
    method = build_method(cfg)
    model = method.build_model(20).eval()
    flops = conv_flops(model, image)
    rows = []
    ours, ref = [], []
    with torch.inference_mode():
        method.infer_cams(model, image, labels)  # warm-up
        for _ in range(repeats):
            ref.append(_timed_with_rate(lambda: cams_reference(model, image, labels)))
            ours.append(_timed_with_rate(lambda: method.infer_cams(model, image, labels)[0]))
        m_ours = measure(lambda: method.infer_cams(model, image, labels), repeats=1, warmup=0)
        m_ref = measure(lambda: cams_reference(model, image, labels), repeats=1, warmup=0)
    cams, ref_cams = ours[-1][0], ref[-1][0]
    ours_s, ref_s = (float(np.median([t for _, t, _ in runs])) for runs in (ours, ref))
    eff, ref_eff = _efficiency(ours, flops), _efficiency(ref, flops)
    rate = float(np.median([r for _, _, r in ours + ref]))
    agree = agreement(cams, ref_cams, class_dim=0)
    assert agree["argmax_equal"] and agree["max_abs_diff"] < 1e-4, agree
    ratio = float(np.median([r[1] / o[1] for r, o in zip(ref, ours)]))
    executed = executed_flops(method, model, image)
    rows.append(Row("CAMs R50 4 scales+flip 375x500", ours_s, ref_s, ">= 85% matmul",
                    eff >= 0.85, m_ours.peak_mb, m_ref.peak_mb,
                    f"max|Δ| {agree['max_abs_diff']:.1e}, argmax same",
                    f"{flops / 1e9:.0f} GFLOP, matmul {rate:.0f} GFLOP/s, efficiency "
                    f"{eff:.0%} (ref {ref_eff:.0%}); Winograd executes {executed / 1e9:.0f} "
                    f"GFLOP: {eff * executed / flops:.0%} of the matmul rate executed",
                    ratio_value=ratio))
    for key in ("winograd", "view_streams"):
        rows.append(_variant_row(method, model, image, labels, cams, flops, repeats, key))
    if compile:
        rows.append(_compiled_row(method, model, image, labels, cams, flops, repeats))
    if bf16:
        rows.append(_bf16_row(method, model, image, labels, cams, ours_s, repeats))
    return rows


def _timed_with_rate(fn):
    """(result, seconds, matmul GFLOP/s measured right before and after): the machine's speed
    drifts by up to 1.7× within minutes, so each timing gets its own rate."""
    before = matmul_gflops()
    began = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - began
    return result, seconds, (before + matmul_gflops()) / 2


def _efficiency(runs, flops: int) -> float:
    """Median over rounds of FLOP / time / that round's matmul rate."""
    return float(np.median([flops / 1e9 / seconds / rate for _, seconds, rate in runs]))


def _variant_row(method, model, image, labels, cams_default, flops, repeats, key: str) -> Row:
    """The default path with `pipeline.<key>: false`, alternated with the default."""
    def infer(on: bool):
        setattr(method.cfg.pipeline, key, on)
        return method.infer_cams(model, image, labels)[0]

    off, default = [], []
    with torch.inference_mode():
        infer(False)  # builds the variant's inference copy
        for _ in range(repeats):
            off.append(_timed_with_rate(lambda: infer(False)))
            default.append(_timed_with_rate(lambda: infer(True)))
    seconds, default_s = (float(np.median([t for _, t, _ in runs])) for runs in (off, default))
    eff, default_eff = _efficiency(off, flops), _efficiency(default, flops)
    agree = agreement(off[-1][0], cams_default, class_dim=0)
    assert agree["argmax_equal"] and agree["max_abs_diff"] < 1e-4, agree
    return Row(f"CAMs pipeline.{key}=false", seconds, default_s, ">= 85% matmul", eff >= 0.85,
               None, None, f"max|Δ| {agree['max_abs_diff']:.1e} vs default",
               f"efficiency {eff:.0%} (default in the same rounds {default_eff:.0%}); "
               "ratio = default time / this time",
               ratio_value=float(np.median([d[1] / o[1] for d, o in zip(default, off)])))


def _compiled_row(method, model, image, labels, cams_eager, flops, repeats) -> Row:
    """`pipeline.compile`: the same inference through torch.compile, alternated with eager."""
    def infer(compiled: bool):
        method.cfg.pipeline.compile = compiled
        return method.infer_cams(model, image, labels)[0]

    eager, compiled = [], []
    with torch.inference_mode():
        began = time.perf_counter()
        infer(True)  # compiles (dynamic shapes)
        compile_s = time.perf_counter() - began
        for _ in range(repeats):
            eager.append(_timed_with_rate(lambda: infer(False)))
            compiled.append(_timed_with_rate(lambda: infer(True)))
    method.cfg.pipeline.compile = False
    seconds, eager_s = (float(np.median([t for _, t, _ in runs])) for runs in (compiled, eager))
    eff, eager_eff = _efficiency(compiled, flops), _efficiency(eager, flops)
    agree = agreement(compiled[-1][0], cams_eager, class_dim=0)
    assert agree["argmax_equal"] and agree["max_abs_diff"] < 1e-4, agree
    return Row("CAMs compiled (pipeline.compile)", seconds, eager_s, ">= 85% matmul", eff >= 0.85,
               None, None, f"max|Δ| {agree['max_abs_diff']:.1e} vs eager",
               f"efficiency {eff:.0%} (eager in the same rounds {eager_eff:.0%}); compile "
               f"{compile_s:.0f} s once; ratio = eager time / compiled time",
               ratio_value=float(np.median([e[1] / c[1] for e, c in zip(eager, compiled)])))


def _bf16_row(method, model, image, labels, cams32, fp32_s, repeats) -> Row:
    """The same inference under CPU bf16 autocast: time, and its difference from fp32."""
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        method.infer_cams(model, image, labels)
        for _ in range(repeats):
            began = time.perf_counter()
            cams, _ = method.infer_cams(model, image, labels)
            times.append(time.perf_counter() - began)
    seconds = float(np.median(times))
    agree = agreement(cams.astype(np.float32), cams32, class_dim=0)
    fg32 = (cams32.max(0) > 0.15) * (cams32.argmax(0) + 1)
    fg16 = (cams.max(0) > 0.15) * (cams.argmax(0) + 1)
    return Row("CAMs bf16 autocast (vs fp32)", seconds, fp32_s, "optional", None, None, None,
               f"max|Δ| {agree['max_abs_diff']:.1e}, mask@0.15 differs on "
               f"{(fg32 != fg16).mean():.2%} px", "ratio = fp32 time / bf16 time",
               ratio_value=fp32_s / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast inference")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile path (pipeline.compile)")
    args = parser.parse_args()
    print(header("CAM generation"))
    print(format_table(run(args.repeats, args.bf16, args.compile)))


if __name__ == "__main__":
    main()
