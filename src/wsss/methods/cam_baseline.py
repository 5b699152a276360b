"""CAM baseline (IRN's CAM network and seeds): GAP classifier, multi-scale + flip CAMs, CRF seeds.

Follows `jiwoon-ahn/irn` (`net/resnet50_cam.py`, `step/make_cam.py`, `step/cam_to_ir_label.py`);
see docs/methods/cam_baseline.md for the paper / official code / wsss table.
"""

from __future__ import annotations

import copy
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import scaled_views
from wsss.methods import METHODS
from wsss.methods.base import Method
from wsss.models.backbones import FrozenStatsBatchNorm2d, build_backbone
from wsss.models.cam_classifier import CamClassifier
from wsss.models.fused import fuse_blocks, fused_kernels_available
from wsss.ops.cam import normalize_cams, strided_size, strided_up_size
from wsss.ops.winograd import WinogradConv2d
from wsss.pipeline.stages import Stage


@dataclass
class CamBaselineConfig:
    """IRN CAM recipe (irn.md §2.1, §5)."""

    name: str = "cam_baseline"
    detach_stages: int = 2  # IRN: conv1..layer2 receive no gradient
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    cam_flip: bool = True
    cam_eval_threshold: float = 0.15  # IRN `cam_eval_thres`
    seed_fg_threshold: float = 0.30  # IRN `conf_fg_thres`
    seed_bg_threshold: float = 0.05  # IRN `conf_bg_thres`
    seed_crf: bool = True


def multiscale_cams(
    cam_fn: Any, image: np.ndarray, *, scales: list[float], flip: bool, stride: int,
    device: torch.device, channels_last: bool = False, view_streams: bool = False,
    low_stride: int | None = None, merge: str = "strided",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """IRN `make_cam` merge: per scale, CAMs of the image and its flip are summed, each scale is
    resized to the stride-rounded full size and the scales are summed.

    Args:
        cam_fn: images (B, 3, h, w) → non-negative maps (B, C, h/s, w/s).
        image: uint8 (H, W, 3).
        channels_last: pass the views to `cam_fn` in channels-last (NHWC) memory format.
        view_streams: on the CPU with `flip`, more than one intra-op thread and no autocast,
            run the image and its mirror as two concurrent streams (`per_view_streams`) instead
            of one batch of two, for the scales whose views have >= `STREAM_MIN_PIXELS`.
        low_stride: also merge at this stride (IRN's strided `cam`, stride 4): each scale's
            flip-merged maps resized straight to `strided_size((H, W), low_stride)` and summed
            (`jiwoon-ahn/irn: step/make_cam.py` 38-40), not a reduction of the full map.
        merge: "strided" resizes each scale to the stride multiple above (H, W) and crops (IRN);
            "image" resizes it straight to (H, W) (PSA `infer_cls.py`, each view upsampled to
            the image and the views summed: resizing is linear and commutes with the flip, so
            summing the flip pair first is the same map).

    Returns:
        float32 (C, H, W), not normalised; with `low_stride` the pair (that map, float32
        (C, (H − 1) // low_stride + 1, (W − 1) // low_stride + 1)).
    """
    height, width = image.shape[:2]
    if merge not in ("strided", "image"):
        raise ValueError(f"merge must be 'strided' or 'image', got {merge!r}")
    up = strided_up_size((height, width), stride) if merge == "strided" else (height, width)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batches = [scaled_views(image, scale, flip=flip).to(device).contiguous(memory_format=layout)
               for scale in scales]
    can_stream = (view_streams and flip and device.type == "cpu" and torch.get_num_threads() > 1
                  and not torch.is_autocast_enabled("cpu"))  # autocast state is per thread
    streamed = [i for i, views in enumerate(batches)
                if can_stream and views.shape[-2] * views.shape[-1] >= STREAM_MIN_PIXELS]
    outputs = [None if i in streamed else cam_fn(views) for i, views in enumerate(batches)]
    if streamed:
        for i, maps in zip(streamed, per_view_streams(cam_fn, [batches[i] for i in streamed])):
            outputs[i] = maps
    low_size = strided_size((height, width), low_stride) if low_stride is not None else None
    total, low_total = None, None
    for maps in outputs:
        merged = maps[0] + maps[1].flip(-1) if flip else maps[0]
        if low_size is not None:
            low = F.interpolate(merged[None].float(), size=low_size, mode="bilinear",
                                align_corners=False)[0]
            low_total = low if low_total is None else low_total + low
        merged = F.interpolate(merged[None].float(), size=up, mode="bilinear",
                               align_corners=False)[0, :, :height, :width]
        total = merged if total is None else total + merged
    return total if low_stride is None else (total, low_total)


# Views smaller than this run as one batch: measured on 2 cores, streams ran 1.1-1.3x slower
# for ResNet-18 at 160-500 px and for ResNet-50 at scales 1.0 and 0.5 of 375x500, and faster
# only on the 1.5 and 2.0 scales (docs/performance.md).
STREAM_MIN_PIXELS = 400_000


def per_view_streams(cam_fn: Any, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """`[cam_fn(b) for b in batches]`, with each view (batch row) in its own Python thread over
    all batches, and the intra-op threads split between the streams (1 each on 2 cores).

    On a small CPU, one stream per view keeps each convolution on its own cores without
    OpenMP barriers between them, and one stream's memory-bound layers overlap the other's
    compute-bound ones (docs/performance.md). The caller's grad / inference mode carries over;
    the thread count is restored afterwards (the setting is per thread in OpenMP, but torch
    also keeps it process-wide for threads it has not seen yet).

    Args:
        batches: (V, 3, h_i, w_i) each, all with the same V (views).
    Returns:
        (V, C, h_i', w_i') per batch, as `cam_fn` returns them.
    """
    views = batches[0].shape[0]
    threads = torch.get_num_threads()
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def stream(index: int) -> list[torch.Tensor]:
        torch.set_num_threads(max(1, threads // views))
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return [cam_fn(batch[index:index + 1]) for batch in batches]

    try:
        with ThreadPoolExecutor(views, thread_name_prefix="wsss-view") as pool:
            per_view = list(pool.map(stream, range(views)))
    finally:
        torch.set_num_threads(threads)
    return [torch.cat(maps) for maps in zip(*per_view)]


_FROZEN_BN = (FrozenStatsBatchNorm2d,)

# Inference copies of CAM classifiers, rebuilt when a parameter or buffer of the original
# changes (every in-place update, e.g. an optimiser step or `load_state_dict`, bumps `_version`).
# Narrower 3×3 convolutions run at higher resolutions, where Winograd's memory-bound transforms
# cost more than the multiply-adds they save (docs/performance.md).
WINOGRAD_MIN_CHANNELS = 256
# model -> {(compile, winograd, min channels): (state versions, prepared copy)}
_INFERENCE_COPIES: weakref.WeakKeyDictionary[
    nn.Module, dict[tuple[bool, bool, int], tuple[tuple[int, ...], nn.Module]]
] = weakref.WeakKeyDictionary()


def _state_versions(model: nn.Module) -> tuple[int, ...]:
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple(t._version for t in tensors) + tuple(id(t) for t in tensors)


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an inference BatchNorm (running statistics) into the convolution before it."""
    with torch.no_grad():
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def _fold_batchnorms(module: nn.Module) -> None:
    """Fold every BatchNorm that directly follows a convolution in the data flow (in place):
    consecutive pairs of an `nn.Sequential`, and the convN/bnN pairs of torchvision's ResNet
    blocks. Other modules keep their BatchNorms."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and type(bn) in (nn.BatchNorm2d,) + _FROZEN_BN:
                _fold_into_conv(conv, bn)
                module._modules[second] = nn.Identity()
    elif isinstance(module, (BasicBlock, Bottleneck)):
        for i in (1, 2, 3):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and type(bn) in (nn.BatchNorm2d,) + _FROZEN_BN:
                _fold_into_conv(conv, bn)
                setattr(module, f"bn{i}", nn.Identity())
    for child in module.children():
        _fold_batchnorms(child)


def _use_winograd(module: nn.Module, min_channels: int) -> None:
    """Replace (in place) every eligible 3×3 convolution with at least `min_channels` input
    channels by a `WinogradConv2d`."""
    for name, child in module.named_children():
        if WinogradConv2d.eligible(child) and child.in_channels >= min_channels:
            setattr(module, name, WinogradConv2d(child))
        else:
            _use_winograd(child, min_channels)


def inference_model(model: nn.Module, *, compile: bool = False, winograd: bool = False
                    ) -> tuple[nn.Module, bool]:
    """A CAM classifier prepared for fast inference, and whether it wants channels-last input.

    For an eval-mode `CamClassifier`: a cached copy with the BatchNorms folded into the
    convolutions and channels-last weights (oneDNN's fastest layout on the CPU); identical maps
    up to float rounding. On the CPU, the ResNet blocks then run with their ReLUs and residual
    additions fused into the convolutions (`wsss.models.fused`), and with `winograd` the 3×3
    stride-1 convolutions with at least `WINOGRAD_MIN_CHANNELS` input channels run as Winograd
    F(4×4, 3×3) (`wsss.ops.winograd`; maps agree to about 1e-5 instead of 1e-6). With
    `compile`, the copy's `cams` goes through `torch.compile` (dynamic shapes, so image sizes
    do not trigger recompiles; inductor does its own fusion, so the blocks stay unfused). Any
    other model (or one in training mode) is returned as is.
    """
    if not isinstance(model, CamClassifier) or model.training:
        return model, False
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    winograd = winograd and on_cpu
    versions = _state_versions(model)
    variant = (compile, winograd, WINOGRAD_MIN_CHANNELS)
    copies = _INFERENCE_COPIES.setdefault(model, {})
    cached = copies.get(variant)
    if cached is not None and cached[0] == versions:
        return cached[1], True
    prepared = copy.deepcopy(model).requires_grad_(False)
    _fold_batchnorms(prepared)
    if winograd:
        _use_winograd(prepared, WINOGRAD_MIN_CHANNELS)
    if on_cpu and not compile and fused_kernels_available():
        fuse_blocks(prepared)
    prepared = prepared.to(memory_format=torch.channels_last)
    if compile:
        prepared.cams = torch.compile(prepared.cams, dynamic=True)
    copies[variant] = (versions, prepared)
    return prepared, True


@METHODS.register("cam_baseline")
class CamBaseline(Method):
    """IRN's CAM network: stages data → train_cam → make_cam → eval_cam → make_seeds → eval_seeds."""

    name = "cam_baseline"
    config_cls = CamBaselineConfig
    train_keys = ("method.name", "method.detach_stages")
    cam_keys = ("method.cam_scales", "method.cam_flip")
    pseudo_mask_stage = "make_seeds"

    def build_model(self, num_classes: int) -> nn.Module:
        m = self.cfg.model
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if m.frozen_bn and hasattr(backbone, "stem"):  # IRN: a ResNet's conv1 and bn1 never train
            for p in list(backbone.stem[0].parameters()) + list(backbone.stem[1].parameters()):
                p.requires_grad_(False)
        return CamClassifier(backbone=backbone, num_classes=num_classes,
                             detach_stages=self.mcfg.detach_stages)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch["image"])
        return {"cls": F.multilabel_soft_margin_loss(logits, batch["labels"])}

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        backbone, head = model.param_groups()
        mult = self.cfg.train.head_lr_mult
        return [{"params": backbone, "lr": base_lr}, {"params": head, "lr": base_lr * mult}]

    def infer_cams(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        arrays = self.cam_file_arrays(model, image, labels)
        return arrays["cams"], arrays["keys"]

    def cam_file_arrays(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                        ) -> dict[str, np.ndarray]:
        """IRN `make_cam`: `cams` (K, H, W) (`high_res`) and `cams_strided` (K, ⌈H/4⌉, ⌈W/4⌉)
        (`cam`, each scale resized straight to stride 4; what IRN's random walk reads), both
        max-normalised per class on their own, and `keys` (K,) = present classes."""
        device = next(model.parameters()).device
        fast, channels_last = inference_model(model, compile=self.cfg.pipeline.compile,
                                               winograd=self.cfg.pipeline.winograd)
        cams, strided = multiscale_cams(
            fast.cams, image, scales=list(self.mcfg.cam_scales), flip=self.mcfg.cam_flip,
            stride=model.backbone.output_stride, device=device, channels_last=channels_last,
            view_streams=(channels_last and self.cfg.pipeline.view_streams
                          and not self.cfg.pipeline.compile), low_stride=4,
            merge=self.cam_merge())
        present = np.flatnonzero(labels > 0)
        keep = torch.as_tensor(present, device=cams.device)
        cams, strided = (normalize_cams(x[keep], mode="max").detach().cpu().numpy()
                         .astype(np.float32) for x in (cams, strided))
        return {"cams": cams, "cams_strided": strided, "keys": present.astype(np.int64) + 1}

    def cam_merge(self) -> str:
        """How `multiscale_cams` brings the scales to the image size (IRN: "strided")."""
        return "strided"

    def stages(self) -> list[Stage]:
        return self.cam_stages()

    def cam_stages(self) -> list[Stage]:
        """IRN's CAM and seed stages; methods that start from CAM + CRF seeds reuse them."""
        return [
            self.data_stage(),
            self.train_stage("train_cam"),
            self.eval_classifier_stage("eval_cls", "train_cam"),
            self.make_cam_stage("make_cam", "train_cam"),
            self.eval_cam_stage("eval_cam", "make_cam"),
            self.make_seeds_stage("make_seeds", "make_cam"),
            self.eval_masks_stage("eval_seeds", "make_seeds"),
        ]
