"""ICAM, "Activation-Based Sampling for Pixel- to Image-Level Aggregation in WSSS" (Jonnarth,
Felsberg, Zhang; arXiv:2203.12459, earlier "Importance Sampling CAMs for WSSS"), on the SEAM base
(Wang et al., arXiv:2004.04581).

Softmax CAMs with a background channel, image-level predictions by GAP / GMP and by importance
sampling combined with λ, and the feature similarity loss; `base: seam` is the SEAM baseline
(ReLU CAMs, max-norm, SEAM's ER / ECR / AMP losses), on which sampling and FSL act "naively"
(paper Table 5). Follows `arvijj/icam` (`train_cam.py`, `infer_cam.py`, `tool/probutils.py`,
`network/resnet38_cam.py`) and `YudeWang/SEAM` (`train_SEAM.py`, `infer_SEAM.py`); the code wins
over the paper where they differ (importance_sampling.md §8). docs/methods/icam.md has the paper /
official code / wsss table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.config import ConfigError, TrainConfig
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, scaled_views
from wsss.io import load_cams, save_mask
from wsss.methods import METHODS
from wsss.methods.affinitynet import AffinityNetConfig, affinitynet_stages
from wsss.methods.base import Method
from wsss.models.backbones import build_backbone
from wsss.models.seam import SeamNet
from wsss.ops.cam import cams_to_mask
from wsss.ops.importance_sampling import (
    adaptive_min_pooling_loss,
    feature_similarity_loss,
    importance_sample,
    max_norm,
    max_onehot,
    probs_to_logits,
)
from wsss.pipeline.stages import Stage, StageContext, per_image

__all__ = ["Icam", "IcamConfig", "icam_cams", "icam_losses", "seam_cams", "seam_losses"]


def _icam_affinitynet_defaults() -> AffinityNetConfig:
    # ICAM / SEAM AffinityNet (importance_sampling.md §5.2-5.3): CRF label alphas 2 / 4 (SEAM
    # 4 / 24), walk α 6, β 8, t = 2^6 = 64, radius 5, lr 0.01, batch 8, 8 epochs, crop 448.
    return AffinityNetConfig(
        train=TrainConfig(epochs=8, batch_size=8, crop_size=448, resize_long=None,
                          scale_range=None, flip=True, color_jitter=[0.3, 0.3, 0.3, 0.1],
                          optimizer="sgd", lr=0.01, head_lr_mult=10.0, weight_decay=5e-4,
                          momentum=0.0, poly_power=0.9),
        low_alpha=2.0, high_alpha=4.0, walk_alpha=6.0, beta=8.0, num_steps=64, radius=5)


@dataclass
class IcamConfig:
    """ICAM defaults: the official code's values (`arvijj/icam train_cam.py`), paper values in
    comments (arXiv:2203.12459 §3-4, Appendix B)."""

    name: str = "icam"
    # icam: softmax CAMs, PCM on logits (the method); seam: the SEAM baseline network and losses
    # (ReLU CAMs); sampling / FSL on it are the paper's "naive" Table 5 rows.
    base: str = "icam"
    # Sampling on the SEAM base (base: seam, sampling_weight > 0): "relu" draws ∝ ReLU(logit) +
    # 1e-5 on both views; "hfpl" is `arvijj/hfpl` (train_cam_voc.py): ∝ sigmoid(logit) + 1e-5 on
    # view 1 only (hfpl's values: sampling_weight 0.2, num_samples 10).
    seam_sampling: str = "relu"
    pooling: str = "avg"  # GAP (VOC best, paper Fig. 2) | max (GMP)
    sampling_weight: float = 0.8  # λ in (1 − λ)·pooled + λ·sampled; 0 = off (VOC 0.8, COCO 0.9)
    num_samples: int = 100  # code 100; paper 1 per class (Appendix B: the count does not matter)
    rv_weight: float = 1.0  # code: + MLSM(GMP(PCM probs)) over C+1 channels; paper: none (0)
    probs_eps: float = 1e-3  # `probs_to_logits` epsilon
    view_scale: float = 0.3  # the second (siamese) view is the crop rescaled by this factor
    fsl_weight: float = 0.5  # code 0.5; paper 1.0; 0 = no feature similarity loss
    fsl_mu: float = 2.5  # μ, the code's fixed value (initial value when learned)
    fsl_sigma: float = 5.0  # σ in pixels of the stride-8 map (initial value when learned)
    fsl_learned: bool = False  # paper: μ and σ learned with the network; code: fixed
    fsl_radius: int | None = None  # None = all pixel pairs (code); n = pairs within n rows/cols
    fsl_half_gate: bool = False  # paper g = ½‖a_i − a_j‖²; code without ½
    fsl_normalization: str = "code"  # code 1/(B·h·w); paper 1/(h·w)² per image
    freeze_pretrained: bool = True  # ResNet-38 with weights: conv1a, b2, b2_1, b2_2 frozen
    cam_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    cam_flip: bool = True
    # ICAM CAMs: bg score = 1 − Σ_c cam_c after the per-pixel max suppression, so a pixel is
    # foreground iff its class value exceeds 0.5.
    cam_eval_threshold: float = 0.5
    seam_cam_eval_threshold: float = 0.26  # SEAM `out_cam_pred_alpha` (base: seam)
    # The official pipeline refines the CAMs with AffinityNet + random walk (PSA stages).
    affinitynet_refine: bool = True
    affinitynet: AffinityNetConfig = field(default_factory=_icam_affinitynet_defaults)


_BASES = ("icam", "seam")
_POOLING = ("avg", "max")
_FROZEN_PREFIXES = {"resnet38": ("conv1a.", "b2.", "b2_1.", "b2_2.")}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _mlsm(logits: Tensor, targets: Tensor) -> Tensor:
    """Multilabel soft margin loss of logits (B, K, ...) against targets broadcast to them
    (the mean BCE over every element, = `F.multilabel_soft_margin_loss` for (B, K))."""
    return F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits))


def _rgb(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Normalised images (B, 3, H, W) → RGB in [0, 1] at `size` (bilinear, align_corners)."""
    small = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
    mean = small.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = small.new_tensor(IMAGENET_STD)[None, :, None, None]
    return (small * std + mean).clamp(0.0, 1.0)


def _fsl_params(net: nn.Module, cfg: IcamConfig) -> tuple[Any, Any]:
    if getattr(net, "fsl_mu", None) is not None:
        return net.fsl_mu, net.fsl_log_sigma.exp()
    return cfg.fsl_mu, cfg.fsl_sigma


def _fsl(images: Tensor, maps: Tensor, net: nn.Module, cfg: IcamConfig) -> Tensor:
    mu, sigma = _fsl_params(net, cfg)
    return feature_similarity_loss(_rgb(images, tuple(maps.shape[-2:])), maps, mu=mu,
                                   sigma=sigma, radius=cfg.fsl_radius,
                                   half_gate=cfg.fsl_half_gate,
                                   normalization=cfg.fsl_normalization)


def _second_view(images: Tensor, scale: float) -> Tensor:
    size = (max(int(images.shape[-2] * scale), 1), max(int(images.shape[-1] * scale), 1))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=True)


# Losses ---------------------------------------------------------------------------------------


def icam_losses(model: nn.Module, images: Tensor, labels: Tensor, cfg: IcamConfig
                ) -> dict[str, Tensor]:
    """ICAM training terms (importance_sampling.md §3.2), weighted, on the crop and its
    `view_scale` rescaled copy.

    Args:
        model: a `SeamNet` with `pcm_on_logits` (or a DDP wrapper of one).
        images: (B, 3, H, W) normalised crops.
        labels: (B, C) multi-hot.

    Returns:
        cls_pool, cls_sample, cls_rv, er, ecr, fsl (the terms present), each a scalar.
    """
    lam = cfg.sampling_weight
    target = torch.cat([labels.new_ones(labels.shape[0], 1), labels], 1)[:, :, None]
    views = [images, _second_view(images, cfg.view_scale)]
    outs = [model(x) for x in views]
    probs = [F.softmax(o["logits"], 1) for o in outs]
    probs_rv = [F.softmax(o["logits_rv"], 1) for o in outs]
    terms: dict[str, Tensor] = {}
    if lam < 1.0:
        if cfg.pooling == "avg":
            pool = sum(_mlsm(o["logits"].mean((2, 3))[:, 1:], labels) for o in outs)
        else:
            pool = sum(_mlsm(probs_to_logits(p.flatten(2).amax(-1), eps=cfg.probs_eps),
                             target[..., 0]) for p in probs)
        terms["cls_pool"] = (1.0 - lam) * pool
    if lam > 0.0:
        sampled = sum(
            _mlsm(probs_to_logits(importance_sample(p, p, cfg.num_samples),
                                  eps=cfg.probs_eps)[:, 1:], labels[:, :, None])
            for p in probs)
        terms["cls_sample"] = lam * sampled
    if cfg.rv_weight > 0.0:
        rv = sum(_mlsm(probs_to_logits(r.flatten(2).amax(-1), eps=cfg.probs_eps), target[..., 0])
                 for r in probs_rv)
        terms["cls_rv"] = cfg.rv_weight * rv
    size = probs[1].shape[-2:]
    p1 = F.interpolate(probs[0], size=size, mode="bilinear", align_corners=True)
    r1 = F.interpolate(probs_rv[0], size=size, mode="bilinear", align_corners=True)
    p2, r2 = probs[1], probs_rv[1]
    terms["er"] = ((p1 - p2).abs().mean() + (r1 - r2).abs().mean() + (p1 - r1).abs().mean()
                   + (p2 - r2).abs().mean())
    terms["ecr"] = (p1 - r2).abs().mean() + (p2 - r1).abs().mean()
    if cfg.fsl_weight > 0.0:
        terms["fsl"] = cfg.fsl_weight * _fsl(images, probs[0], _unwrap(model), cfg)
    return terms


def seam_losses(model: nn.Module, images: Tensor, labels: Tensor, cfg: IcamConfig
                ) -> dict[str, Tensor]:
    """SEAM training terms (importance_sampling.md §3.1) plus the naive sampling / FSL.

    L = ½Σ_v [(1 − λ)·MLSM(pool(cam_v)) + λ·MLSM(sampled logits)] + ½Σ_v AMP(cam_rv_v) + ER +
    ECR (+ fsl_weight·FSL on view 1's max-normed stride-level CAMs with bg = 1 − max fg).
    Naive sampling draws pixels from the stride-level fg logits and feeds the drawn logits to
    MLSM: `seam_sampling: relu` ∝ ReLU(logit) + 1e-5 on both views (wsss's construction of the
    paper's Table 5 row); `hfpl` as `arvijj/hfpl` (`train_cam_voc.py`): ∝ sigmoid(logit) + 1e-5
    on view 1 only, L_cls = ½[(1 − λ)·MLSM(pool₁) + λ·MLSM(sampled₁)] + ½·MLSM(pool₂).

    Args and returns as `icam_losses` (keys cls_pool, cls_sample, rvmin, er, ecr, fsl).
    """
    lam = cfg.sampling_weight
    b = labels.shape[0]
    label = torch.cat([labels.new_ones(b, 1), labels], 1)[:, :, None, None]
    views = [images, _second_view(images, cfg.view_scale)]
    outs = [model(x) for x in views]
    cams, rvs = [], []
    for x, o in zip(views, outs):
        cams.append(F.interpolate(o["logits"], size=x.shape[-2:], mode="bilinear",
                                  align_corners=True))
        rvs.append(F.interpolate(o["logits_rv"], size=x.shape[-2:], mode="bilinear",
                                 align_corners=True))
    terms: dict[str, Tensor] = {}
    hfpl = cfg.seam_sampling == "hfpl"
    pool_weights = [1.0 - lam, 1.0 if hfpl else 1.0 - lam]
    if any(w > 0.0 for w in pool_weights):
        reduce = (lambda c: c.mean((2, 3))) if cfg.pooling == "avg" else (
            lambda c: c.flatten(2).amax(-1))
        terms["cls_pool"] = 0.5 * sum(w * _mlsm(reduce(c)[:, 1:], labels)
                                      for w, c in zip(pool_weights, cams) if w > 0.0)
    if lam > 0.0:
        def weights(logits: Tensor) -> Tensor:
            return (torch.sigmoid(logits) if hfpl else F.relu(logits)) + 1e-5

        sampled = sum(
            _mlsm(importance_sample(o["logits"][:, 1:], weights(o["logits"][:, 1:].detach()),
                                    cfg.num_samples), labels[:, :, None])
            for o in (outs[:1] if hfpl else outs))
        terms["cls_sample"] = lam * 0.5 * sampled
    terms["rvmin"] = 0.5 * sum(adaptive_min_pooling_loss((r * label)[:, 1:]) for r in rvs)
    size = cams[1].shape[-2:]
    cam1 = F.interpolate(max_norm(cams[0]), size=size, mode="bilinear", align_corners=True) * label
    rv1 = F.interpolate(max_norm(rvs[0]), size=size, mode="bilinear", align_corners=True) * label
    cam2, rv2 = max_norm(cams[1]) * label, max_norm(rvs[1]) * label
    terms["er"] = (cam1[:, 1:] - cam2[:, 1:]).abs().mean()
    cam1 = torch.cat([1.0 - cam1[:, 1:].amax(1, keepdim=True), cam1[:, 1:]], 1)
    cam2 = torch.cat([1.0 - cam2[:, 1:].amax(1, keepdim=True), cam2[:, 1:]], 1)
    k = int(0.2 * cam2.shape[1] * size[0] * size[1])

    def top_mean(err: Tensor) -> Tensor:
        return torch.topk(err.reshape(b, -1), max(k, 1), dim=-1).values.mean()

    terms["ecr"] = (top_mean((max_onehot(cam2.detach()) - rv1).abs())
                    + top_mean((max_onehot(cam1.detach()) - rv2).abs()))
    if cfg.fsl_weight > 0.0:
        fg = max_norm(outs[0]["logits"])[:, 1:] * label[:, 1:]
        maps = torch.cat([1.0 - fg.amax(1, keepdim=True), fg], 1)
        terms["fsl"] = cfg.fsl_weight * _fsl(images, maps, _unwrap(model), cfg)
    return terms


# Inference ------------------------------------------------------------------------------------


def icam_cams(model: nn.Module, image: np.ndarray, labels: np.ndarray, *,
              scales: list[float], flip: bool, device: torch.device) -> tuple[Tensor, np.ndarray]:
    """ICAM CAMs of one image (`infer_cam.py`, importance_sampling.md §5.1).

    Per view: p = ½·softmax(logits) + ½·softmax(PCM logits) at the feature stride, multiplied by
    [1, labels] and renormalised over channels; foreground channels bilinearly resized to (H, W)
    and unflipped. The views are averaged; per pixel only the maximum class keeps its value, then
    each class map is divided by its spatial maximum + 1e-5.

    Args:
        model: `SeamNet` (ICAM form) in eval mode.
        image: uint8 (H, W, 3).
        labels: (C,) multi-hot image labels.

    Returns:
        cams (K, H, W) in [0, 1) for the K present classes, keys (K,) = their class indices.
    """
    height, width = image.shape[:2]
    present = np.flatnonzero(np.asarray(labels) > 0)
    keep = torch.cat([torch.ones(1), torch.as_tensor(np.asarray(labels) > 0,
                                                     dtype=torch.float32)]).to(device)
    total, count = None, 0
    for scale in scales:
        out = model(scaled_views(image, scale, flip=flip).to(device))
        p = 0.5 * F.softmax(out["logits"].float(), 1) + 0.5 * F.softmax(out["logits_rv"].float(), 1)
        p = p * keep[None, :, None, None]
        p = p / p.sum(1, keepdim=True).clamp_min(1e-8)
        p = F.interpolate(p[:, 1:], size=(height, width), mode="bilinear", align_corners=False)
        if flip:
            p = torch.cat([p[:1], p[1:].flip(-1)], 0)
        total = p.sum(0) if total is None else total + p.sum(0)
        count += p.shape[0]
    mean = total / count
    top = mean.amax(0, keepdim=True)
    mean = torch.where(mean < top, torch.zeros_like(mean), mean)
    mean = mean / (mean.flatten(1).amax(-1)[:, None, None] + 1e-5)
    idx = torch.as_tensor(present, device=mean.device, dtype=torch.long)
    return mean[idx], present.astype(np.int64) + 1


def seam_cams(model: nn.Module, image: np.ndarray, labels: np.ndarray, *,
              scales: list[float], flip: bool, device: torch.device) -> tuple[Tensor, np.ndarray]:
    """SEAM CAMs of one image (`infer_SEAM.py`): the PCM maps of every view resized to the view
    and then to (H, W), foreground channels × labels, unflipped and summed; ReLU, then per class
    ReLU(x − min − 1e-5) / (max − min + 1e-5).

    Returns:
        cams (K, H, W) in [0, 1) for the K present classes, keys (K,).
    """
    height, width = image.shape[:2]
    present = np.flatnonzero(np.asarray(labels) > 0)
    total = None
    for scale in scales:
        x = scaled_views(image, scale, flip=flip).to(device)
        rv = F.interpolate(model(x)["logits_rv"].float(), size=x.shape[-2:], mode="bilinear",
                           align_corners=True)
        rv = F.interpolate(rv[:, 1:], size=(height, width), mode="bilinear", align_corners=False)
        if flip:
            rv = torch.cat([rv[:1], rv[1:].flip(-1)], 0)
        total = rv.sum(0) if total is None else total + rv.sum(0)
    idx = torch.as_tensor(present, device=total.device, dtype=torch.long)
    cams = max_norm(total[idx][None])[0] if len(present) else total[idx]
    return cams, present.astype(np.int64) + 1


# Method ---------------------------------------------------------------------------------------


@METHODS.register("icam")
class Icam(Method):
    """Stages: data → train_cam → make_cam → eval_cam → make_cam_masks → eval_cam_masks
    (mIoU + contour F of the CAM label maps) → with `affinitynet_refine`: make_aff_labels →
    eval_aff_labels → train_affinitynet → make_aff_masks → eval_aff_masks."""

    name = "icam"
    config_cls = IcamConfig
    train_keys = ("method.name", "method.base", "method.seam_sampling", "method.pooling",
                  "method.sampling_weight",
                  "method.num_samples", "method.rv_weight", "method.probs_eps",
                  "method.view_scale", "method.fsl_weight", "method.fsl_mu", "method.fsl_sigma",
                  "method.fsl_learned", "method.fsl_radius", "method.fsl_half_gate",
                  "method.fsl_normalization", "method.freeze_pretrained")
    cam_keys = ("method.cam_scales", "method.cam_flip")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        c = self.mcfg
        if c.base not in _BASES:
            raise ConfigError(f"method.base must be one of {_BASES}, got {c.base!r}")
        if c.seam_sampling not in ("relu", "hfpl"):
            raise ConfigError(f"method.seam_sampling must be 'relu' or 'hfpl', got "
                              f"{c.seam_sampling!r}")
        if c.pooling not in _POOLING:
            raise ConfigError(f"method.pooling must be one of {_POOLING}, got {c.pooling!r}")
        if not 0.0 <= c.sampling_weight <= 1.0:
            raise ConfigError(f"method.sampling_weight (λ) must lie in [0, 1], got "
                              f"{c.sampling_weight}")
        if c.num_samples < 1:
            raise ConfigError(f"method.num_samples must be at least 1, got {c.num_samples}")
        if c.fsl_sigma <= 0:
            raise ConfigError(f"method.fsl_sigma must be positive, got {c.fsl_sigma}")
        if c.fsl_normalization not in ("code", "paper"):
            raise ConfigError(f"method.fsl_normalization must be 'code' or 'paper', got "
                              f"{c.fsl_normalization!r}")
        if not 0.0 < c.view_scale <= 1.0:
            raise ConfigError(f"method.view_scale must lie in (0, 1], got {c.view_scale}")

    @property
    def pseudo_mask_stage(self) -> str:  # type: ignore[override]
        """The random-walk masks when AffinityNet refines the CAMs, else the CAM label maps."""
        return "make_aff_masks" if self.mcfg.affinitynet_refine else "make_cam_masks"

    @property
    def eval_threshold_key(self) -> str:
        return "cam_eval_threshold" if self.mcfg.base == "icam" else "seam_cam_eval_threshold"

    def build_model(self, num_classes: int) -> nn.Module:
        m, c = self.cfg.model, self.mcfg
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if c.freeze_pretrained and m.pretrained not in ("", "none"):
            prefixes = _FROZEN_PREFIXES.get(m.backbone, ())
            for name, p in backbone.named_parameters():
                if name.startswith(prefixes):
                    p.requires_grad_(False)
        return SeamNet(backbone=backbone, num_classes=num_classes,
                       pcm_on_logits=c.base == "icam",
                       learn_fsl=c.fsl_learned and c.fsl_weight > 0.0, fsl_mu=c.fsl_mu,
                       fsl_sigma=c.fsl_sigma)

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """Backbone parameters at lr, the new layers (fc8, f8_3, f8_4, f9, learned μ / σ) at
        lr·head_lr_mult; frozen parameters are left out."""
        net = _unwrap(model)
        new = [p for p in net.new_parameters() if p.requires_grad]
        new_ids = {id(p) for p in new}
        backbone = [p for p in net.parameters() if p.requires_grad and id(p) not in new_ids]
        groups = [{"params": backbone, "lr": base_lr},
                  {"params": new, "lr": base_lr * self.cfg.train.head_lr_mult}]
        # μ and σ are scalars of the loss, not weights: no weight decay on them.
        learned = [p for p in (net.fsl_mu, net.fsl_log_sigma) if p is not None]
        if learned:
            ids = {id(p) for p in learned}
            groups[1]["params"] = [p for p in new if id(p) not in ids]
            groups.append({"params": learned, "lr": base_lr * self.cfg.train.head_lr_mult,
                           "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        images, labels = batch["image"], batch["labels"].float()
        fn = icam_losses if self.mcfg.base == "icam" else seam_losses
        return fn(model, images, labels, self.mcfg)

    def infer_cams(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        device = next(model.parameters()).device
        fn = icam_cams if self.mcfg.base == "icam" else seam_cams
        cams, keys = fn(model, image, labels, scales=list(self.mcfg.cam_scales),
                        flip=self.mcfg.cam_flip, device=device)
        return cams.clamp(0.0, 1.0).cpu().numpy().astype(np.float32), keys

    # Stages -----------------------------------------------------------------------------------
    def cam_masks_stage(self, name: str = "make_cam_masks", cam_stage: str = "make_cam"
                        ) -> Stage:
        """CAM label maps at the evaluation rule (`eval_cam`'s fixed threshold), as PNGs, so
        that `eval_masks_stage` reports mIoU and contour F and the segnet can train on them."""
        key = self.eval_threshold_key

        def run(ctx: StageContext) -> dict[str, Any]:
            dataset = self.dataset(ctx.cfg.data.infer_split)
            cam_dir = ctx.stage_dir(cam_stage) / "cams"
            threshold = getattr(self.mcfg, key)

            def work(item: str) -> None:
                cams, keys = load_cams(cam_dir / f"{item}.npz")
                mask = cams_to_mask(cams.astype(np.float32), keys, bg_threshold=threshold)
                save_mask(ctx.out_dir / "masks" / f"{item}.png", mask.astype(np.uint8))

            done = per_image(dataset.names, lambda n: ctx.out_dir / "masks" / f"{n}.png", work,
                             desc=name)
            return {"split": ctx.cfg.data.infer_split, "images": len(dataset),
                    "computed": done, "threshold": threshold}

        return Stage(name, run, needs=(cam_stage,),
                     depends_on=("data.infer_split", f"method.{key}"),
                     description="CAM label maps at the fixed background threshold")

    def stages(self) -> list[Stage]:
        key = self.eval_threshold_key
        stages = [
            self.data_stage(),
            self.train_stage("train_cam", description="train the siamese CAM network "
                             "(SEAM base; ICAM sampling / FSL per config)"),
            self.make_cam_stage("make_cam", "train_cam"),
            self.eval_cam_stage("eval_cam", "make_cam", threshold_key=key),
            self.cam_masks_stage("make_cam_masks", "make_cam"),
            self.eval_masks_stage("eval_cam_masks", "make_cam_masks"),
        ]
        if self.mcfg.affinitynet_refine:
            stages += affinitynet_stages(self, cam_stage="make_cam")
        return stages
