"""AffinityNet / PSA (arXiv:1803.10464) refinement stages after any method's CAMs, and the
`affinitynet` method (CAM baseline → AffinityNet).

`affinitynet_stages(method, cam_stage=...)` returns make_aff_labels → eval_aff_labels →
train_affinitynet → make_aff_masks → eval_aff_masks. Affinity labels come from two dense-CRF
passes over the CAMs with a large and a small background ((1 − max cam)^α, α_low / α_high);
AffinityNet learns pixel features whose pairwise affinities exp(−mean |f_i − f_j|) match the
labels within a radius; the CAMs (plus a (1 − max)^α background) are then propagated by a random
walk on those affinities and arg-maxed into pseudo-masks.
Follows `jiwoon-ahn/psa: infer_cls.py` (`_crf_with_alpha`), `voc12/data.py`
(`ExtractAffinityLabelInRadius`), `network/resnet38_aff.py`, `train_aff.py`, `infer_aff.py`;
SEAM / ICAM reuse it with other values. See docs/methods/affinitynet.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import TrainConfig, select
from wsss.data import build_dataset
from wsss.data.labels import BACKGROUND
from wsss.data.transforms import mask_to_tensor, normalize_image
from wsss.data.voc import DatasetView
from wsss.io import DataError, load_cams, load_image, npz_bytes, save_mask, write_bytes
from wsss.methods import METHODS
from wsss.methods.base import cams_to_masks, train_transform
from wsss.methods.cam_baseline import CamBaseline, CamBaselineConfig
from wsss.methods.irn import refiner_train_stage, refiner_walk_stage
from wsss.models.affinitynet import AffinityNet
from wsss.models.backbones import build_backbone
from wsss.models.cam_classifier import CamClassifier
from wsss.ops.affinity import (
    PathIndex,
    affinity_labels,
    affinity_seed_labels,
    background_stack,
    downsample_labels,
    feature_affinity,
    feature_pair_affinity,
    neighbour_pairs,
    pooled_affinity_labels,
)
from wsss.ops.random_walk import random_walk_pairs
from wsss.pipeline.stages import Stage, StageContext

__all__ = [
    "AffinityNetConfig",
    "AffinityNetMethod",
    "AffinityNetMethodConfig",
    "affinity_walk",
    "affinitynet_loss",
    "affinitynet_loss_terms",
    "affinitynet_scores",
    "affinitynet_seeds",
    "affinitynet_stages",
    "build_affinitynet",
]

# Small constant of PSA's losses (`train_aff.py`): keeps −log finite at a = 0 and a = 1.
_LOG_EPS = 1e-5


def _psa_train_defaults() -> TrainConfig:
    # PSA's AffinityNet recipe (psa_affinitynet.md §4, README command): SGD, lr 0.1 (SEAM/ICAM
    # 0.01), new layers 10×, wd 5e-4, poly 0.9, batch 8, 8 epochs, crop 448, no rescaling, flip,
    # colour jitter (0.3, 0.3, 0.3, 0.1). The official PolyOptimizer puts the weight decay into
    # SGD's momentum slot (effective momentum 5e-4 ≈ 0) → momentum 0 here.
    return TrainConfig(epochs=8, batch_size=8, crop_size=448, resize_long=None, scale_range=None,
                       flip=True, color_jitter=[0.3, 0.3, 0.3, 0.1], optimizer="sgd", lr=0.1,
                       head_lr_mult=10.0, weight_decay=5e-4, momentum=0.0, poly_power=0.9)


@dataclass
class AffinityNetConfig:
    """AffinityNet labels, training and random walk (defaults: PSA's released code,
    `jiwoon-ahn/psa` README; psa_affinitynet.md §3-§5). SEAM/ICAM: low_alpha 2 / high_alpha 4
    (ICAM) or 4 / 24 (SEAM), walk_alpha 6, num_steps 64, train.lr 0.01."""

    train: TrainConfig = field(default_factory=_psa_train_defaults)
    # Backbone weights: "pretrained" builds `model.backbone` with `model.pretrained` (PSA:
    # ImageNet ResNet-38); "cam" copies the trained CAM network's backbone (from-scratch runs).
    backbone_weights: str = "pretrained"
    output_stride: int = 8  # PSA: ResNet-38 at stride 8 (features 56×56 for 448 crops)
    radius: int = 5  # pair radius γ, training and walk (34 half-disc directions)
    distance: str = "mean"  # channel mean of |f_i − f_j| (code); "sum" = the paper's L1 norm
    low_alpha: float = 4.0  # α_low: large background → confident foreground ("la")
    high_alpha: float = 32.0  # α_high: small background → confident background; paper 24
    label_crf: bool = True  # dense CRF (PSA settings) on both stacks before the arg-max
    # Training labels per feature cell: "pooled" = PSA (the la / ha score maps are cropped with
    # the image, 8×8 average-pooled, then the label rule; cells without score 255); "nearest" =
    # the rule at full resolution, each cell reading its centre pixel's label (no score maps
    # stored, two float maps per image fewer).
    label_cells: str = "pooled"
    walk_alpha: float = 16.0  # background power of the walked CAM stack
    beta: float = 8.0  # affinity exponent β
    num_steps: int = 256  # t = 2 ** logt, PSA logt = 8
    # Truncation bound of the Chebyshev walk, relative to each map's maximum; 0 = the plain
    # num_steps sparse products (`wsss.ops.random_walk`).
    walk_tol: float = 1e-6
    # Pairs of the walk: "window" = PSA's `get_indices_of_pairs` (sources only in the window
    # rows [0, h − 4), cols [4, w − 4)), "full" = every pair within the radius.
    walk_pairs: str = "window"


# Layers frozen with `model.frozen_bn` (pretrained backbones): PSA's `not_training` on ResNet-38;
# ResNets use IRN's stem convention (the default below); VGG freezes nothing.
_FROZEN_PREFIXES = {"resnet38": ("conv1a.", "b2.", "b2_1.", "b2_2."), "vgg16": ()}


def build_affinitynet(cfg: Any, *, config_key: str = "method.affinitynet",
                      load_pretrained: bool = True) -> AffinityNet:
    """AffinityNet on `cfg.model`'s backbone at the configured output stride, with
    `model.pretrained` weights unless `load_pretrained` is False.

    With `model.frozen_bn` (pretrained backbones) every BatchNorm keeps its statistics and the
    first layers do not train, as PSA's `not_training` (ResNet-38: conv1a, b2, b2_1, b2_2;
    ResNets: the stem convolution and BatchNorm, IRN's convention).
    """
    m = cfg.model
    a: AffinityNetConfig = select(cfg, config_key)
    backbone = build_backbone(m.backbone, output_stride=a.output_stride,
                              pretrained=m.pretrained if load_pretrained else "none",
                              frozen_bn=m.frozen_bn)
    if m.frozen_bn:
        prefixes = _FROZEN_PREFIXES.get(m.backbone, ("stem.0.", "stem.1."))
        for name, p in backbone.named_parameters():
            if name.startswith(prefixes):
                p.requires_grad_(False)
    return AffinityNet(backbone=backbone)


# Labels ------------------------------------------------------------------------------------------

def affinitynet_scores(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, *,
                       low_alpha: float, high_alpha: float, crf: bool
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two AffinityNet label score stacks of one image (PSA `infer_cls.py`
    `_crf_with_alpha` at α_low and α_high).

    Key-0 channels are dropped. Each stack [(1 − max cam)^α; cams] goes through the PSA dense CRF
    (`dense_crf` defaults) when `crf`.

    Args:
        image: uint8 (H, W, 3).
        cams: float (K, H, W) in [0, 1] with `keys` (K,) class indices.

    Returns:
        low, high float32 (K' + 1, H, W) (channel 0 the background; a single channel of ones
        when no foreground class is present) and their keys int64 (K' + 1,).
    """
    fg = keys > 0
    cams_t = torch.from_numpy(np.ascontiguousarray(cams[fg], dtype=np.float32))
    keys_ext = np.concatenate([[BACKGROUND], keys[fg]]).astype(np.int64)
    stacks = [background_stack(cams_t, alpha).numpy() for alpha in (low_alpha, high_alpha)]
    if crf and fg.any():
        from wsss.ops.crf import dense_crf

        stacks = [dense_crf(image, s) for s in stacks]
    low, high = (np.ascontiguousarray(s, dtype=np.float32) for s in stacks)
    return low, high, keys_ext


def affinitynet_seeds(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, *,
                      low_alpha: float, high_alpha: float, crf: bool) -> np.ndarray:
    """AffinityNet labels of one image at full resolution (`affinitynet_scores`, then the label
    rule of `ExtractAffinityLabelInRadius`, `affinity_seed_labels`, on every pixel).

    Args:
        image: uint8 (H, W, 3).
        cams: float (K, H, W) in [0, 1] with `keys` (K,) class indices.

    Returns:
        uint8 (H, W): 0 confident background, class ids confident foreground, 255 unsure.
    """
    if not (keys > 0).any():  # no class: all background (ICAM stores {0: ones})
        return np.zeros(cams.shape[-2:], dtype=np.uint8)
    low, high, keys_ext = affinitynet_scores(image, cams, keys, low_alpha=low_alpha,
                                             high_alpha=high_alpha, crf=crf)
    labels = affinity_seed_labels(torch.from_numpy(low), torch.from_numpy(high),
                                  torch.from_numpy(keys_ext))
    return labels.numpy().astype(np.uint8)


def _labels_one(args: tuple[str, str, str, dict[str, Any]]) -> None:
    """Labels for one image (module level, so a process pool can run it). With
    `save_scores`, the two score stacks go to `../scores/<name>.npz` (PSA's la / ha files),
    written before the PNG that marks the image done."""
    image_path, cam_path, out_path, params = args
    params = dict(params)
    save_scores = params.pop("save_scores", False)
    cams, keys = load_cams(cam_path)
    image = load_image(image_path)
    if image.shape[:2] != cams.shape[-2:]:
        raise DataError(f"{cam_path}: CAMs are {cams.shape[-1]}x{cams.shape[-2]} but the image "
                        f"{image_path} is {image.shape[1]}x{image.shape[0]}")
    low, high, keys_ext = affinitynet_scores(image, cams, keys, **params)
    if save_scores:
        out = Path(out_path)
        write_bytes(out.parent.parent / "scores" / f"{out.stem}.npz",
                    npz_bytes({"low": low, "high": high, "keys": keys_ext}))
    labels = affinity_seed_labels(torch.from_numpy(low), torch.from_numpy(high),
                                  torch.from_numpy(keys_ext))
    save_mask(out_path, labels.numpy().astype(np.uint8))


class AffinityScoreDataset(DatasetView):
    """AffinityNet's training set with PSA's labels: images with their la / ha score maps
    (`make_aff_labels/scores/<name>.npz`), cropped and flipped together, then reduced to one
    label per feature cell by `pooled_affinity_labels` (`voc12/data.py AffDataset`).

    The paired transform moves an index map (pixel index + 256) instead of the scores, so any
    geometric step of the library transform applies to the scores unchanged; crop padding (255
    in the index map) carries no score, as PSA's zero-padded crop. Samples: `image` float32
    (3, h, w), `labels` (C,), `mask` int64 (⌈h / cell⌉, ⌈w / cell⌉), `name`, `index`.
    """

    _OFFSET = 256  # above the mask padding value 255

    def __init__(self, dataset: Any, score_dir: str | Path, transform: Any, cell: int) -> None:
        super().__init__(dataset, transform)
        self.score_dir = Path(score_dir)
        self.cell = int(cell)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        path = self.score_dir / f"{name}.npz"
        try:
            with np.load(path) as data:
                low, high, keys = data["low"], data["high"], data["keys"]
        except FileNotFoundError:
            raise DataError(f"affinity score file missing: {path}") from None
        image = self.dataset.load_image(index)
        height, width = image.shape[:2]
        if low.shape[-2:] != (height, width) or high.shape != low.shape:
            raise DataError(f"{path}: scores are {low.shape[-1]}x{low.shape[-2]} but the image "
                            f"is {width}x{height}")
        where = np.arange(height * width, dtype=np.int32).reshape(height, width) + self._OFFSET
        image_t, where_t = self.transform(image, where)
        if isinstance(where_t, np.ndarray):
            where_t = mask_to_tensor(where_t)
        inside = where_t >= self._OFFSET
        scores = torch.from_numpy(np.concatenate([low, high]).reshape(2 * low.shape[0], -1))
        crop = scores.new_zeros((scores.shape[0], *where_t.shape))
        crop[:, inside] = scores[:, where_t[inside] - self._OFFSET]
        k = low.shape[0]
        mask = pooled_affinity_labels(crop[:k], crop[k:], torch.from_numpy(keys), self.cell)
        return {"image": image_t, "labels": torch.from_numpy(self.dataset.label_vector(index)),
                "mask": mask, "name": name, "index": index}


def _score_dataset(labels_stage: str, config_key: str) -> Any:
    def build(ctx: StageContext, train_cfg: Any) -> AffinityScoreDataset:
        cfg: AffinityNetConfig = select(ctx.cfg, config_key)
        base = build_dataset(ctx.cfg.data, ctx.cfg.data.infer_split)
        return AffinityScoreDataset(base, ctx.stage_dir(labels_stage) / "scores",
                                    train_transform(train_cfg), cfg.output_stride)

    return build


# Training ----------------------------------------------------------------------------------------

def affinitynet_loss(affinity: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
                     neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSA's AffinityNet loss (`train_aff.py`), as its three weighted terms.

    L_bg = Σ bg·(−log(a + 1e-5)) / (Σ bg + 1e-5), L_fg likewise, L_neg = Σ neg·(−log(1 + 1e-5 − a))
    / (Σ neg + 1e-5), sums over the whole batch; total L_bg/4 + L_fg/4 + L_neg/2 (the paper's
    L_bg + L_fg + 2 L_neg divided by 4).

    Args:
        affinity: (B, D, S) pair affinities in (0, 1].
        bg_pos, fg_pos, neg: (B, D, S) float pair labels (`affinity_labels`).

    Returns:
        {"affinity_bg": L_bg / 4, "affinity_fg": L_fg / 4, "affinity_neg": L_neg / 2}.
    """
    bg = (bg_pos * -torch.log(affinity + _LOG_EPS)).sum() / (bg_pos.sum() + _LOG_EPS)
    fg = (fg_pos * -torch.log(affinity + _LOG_EPS)).sum() / (fg_pos.sum() + _LOG_EPS)
    ng = (neg * -torch.log(1.0 + _LOG_EPS - affinity)).sum() / (neg.sum() + _LOG_EPS)
    return {"affinity_bg": bg / 4, "affinity_fg": fg / 4, "affinity_neg": ng / 2}


@lru_cache(maxsize=16)
def _path_index(radius: int, size: tuple[int, int]) -> PathIndex:
    return PathIndex.build(radius, size)


def affinitynet_loss_terms(model: nn.Module, batch: dict[str, Any], *, radius: int,
                           distance: str = "mean") -> dict[str, torch.Tensor]:
    """AffinityNet's loss on one batch.

    Labels already at the feature size (`AffinityScoreDataset`, PSA's pooled cells) are used
    as they are; a full-resolution label crop is reduced to the feature size by pixel-centre
    nearest sampling (`downsample_labels`). Pairs are PSA's windowed half-disc pairs of the
    radius (shrunk on small maps as ICAM's `resnet38_aff`, `_window_radius`).

    Args:
        batch: `image` (B, 3, H, W), `mask` (B, h, w) int64 affinity labels (255 = unsure /
            padding), at the image or the feature size.
        radius: pair radius (PSA: 5).
        distance: "mean" or "sum" (`feature_affinity`).
    """
    features = model(batch["image"])
    size = tuple(features.shape[-2:])
    labels = downsample_labels(batch["mask"], size)
    index = _path_index(_training_radius(radius, size), size)
    bg_pos, fg_pos, neg = affinity_labels(labels, index)
    return affinitynet_loss(feature_affinity(features, index, distance=distance),
                            bg_pos, fg_pos, neg)


def _window_radius(radius: int, size: tuple[int, int]) -> int:
    """The pair radius on an (h, w) feature map: `radius`, or (min(h, w) − 1) // 2 when
    min(h, w) < 2·radius + 1 (`arvijj/icam: network/resnet38_aff.py` forward; PSA itself
    keeps 5, which leaves no valid pair on such maps). Below 2 there are no pairs (maps under
    5×5 cells)."""
    min_edge = min(size)
    return (min_edge - 1) // 2 if min_edge < 2 * radius + 1 else radius


def _training_radius(radius: int, size: tuple[int, int]) -> int:
    r = _window_radius(radius, size)
    if r < 2:  # the official code has no pair there and trains on a zero loss
        raise ValueError(f"feature map {size[0]}x{size[1]} too small for AffinityNet pairs "
                         "(needs at least 5x5 cells)")
    return r


# Random walk -------------------------------------------------------------------------------------

def affinity_walk(
    model: AffinityNet,
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    *,
    cfg: AffinityNetConfig,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-walk pseudo-mask of one image (PSA `infer_aff.py`).

    The normalised image is zero-padded right/bottom to a multiple of the stride; the stack
    [(1 − max cam)^walk_alpha; cams] is zero-padded alike and average-pooled by the stride; it is
    walked on the AffinityNet affinities (A^β, columns normalised, t steps), upsampled bilinearly
    to the padded size, cropped and arg-maxed. Key-0 input channels are dropped.

    Args:
        image: uint8 (H, W, 3).
        cams: float (K, H, W) in [0, 1] with `keys` (K,) class indices.

    Returns:
        mask uint8 (H, W) class indices; probs float32 (K' + 1, H, W) in [0, 1] (the walked
        background and class maps); their keys int64 (K' + 1,) starting with 0.
    """
    height, width = image.shape[:2]
    fg = keys > 0
    probs_keys = np.concatenate([[BACKGROUND], keys[fg]]).astype(np.int64)
    if not fg.any():
        return (np.zeros((height, width), dtype=np.uint8),
                np.ones((1, height, width), dtype=np.float32), probs_keys)
    stride = model.output_stride
    pad_h, pad_w = math.ceil(height / stride) * stride, math.ceil(width / stride) * stride
    pad = (0, pad_w - width, 0, pad_h - height)
    x = F.pad(normalize_image(image)[None].to(device), pad)
    features = model(x)[0]
    stack = background_stack(torch.from_numpy(np.ascontiguousarray(cams[fg])).float().to(device),
                             cfg.walk_alpha)
    low = F.avg_pool2d(F.pad(stack, pad)[None], stride, stride)[0]
    size = tuple(low.shape[-2:])
    if tuple(features.shape[-2:]) != size:  # backbones whose maps are not exactly H/stride
        features = F.interpolate(features[None], size=size, mode="bilinear",
                                 align_corners=False)[0]
    window = cfg.walk_pairs == "window"
    radius = _window_radius(cfg.radius, size) if window else cfg.radius
    if radius >= 2:
        src, dst = neighbour_pairs(size, radius, window=window)
    else:  # maps under 5×5 cells: no pair, as the official code there (the walk keeps the CAMs)
        src = dst = torch.zeros(0, dtype=torch.int64)
    affinity = feature_pair_affinity(features, src, dst, distance=cfg.distance)
    walked = random_walk_pairs(low, src.to(device), dst.to(device), affinity, beta=cfg.beta,
                               num_steps=cfg.num_steps, tol=cfg.walk_tol)
    up = F.interpolate(walked[None], size=(pad_h, pad_w), mode="bilinear",
                       align_corners=False)[0, :, :height, :width]
    mask = torch.from_numpy(probs_keys).to(up.device)[up.argmax(dim=0)]
    return (mask.cpu().numpy().astype(np.uint8),
            up.clamp(0, 1).cpu().numpy().astype(np.float32), probs_keys)


# Stages ------------------------------------------------------------------------------------------

def affinitynet_stages(
    method: Any,
    *,
    cam_stage: str,
    config_key: str = "method.affinitynet",
    backbone_stage: str = "train_cam",
    names: tuple[str, str, str, str, str] = ("make_aff_labels", "eval_aff_labels",
                                             "train_affinitynet", "make_aff_masks",
                                             "eval_aff_masks"),
) -> list[Stage]:
    """AffinityNet stages after any method's CAM files.

    Usage from a method: put `affinitynet: AffinityNetConfig = field(default_factory=...)` in
    its config dataclass and append `*affinitynet_stages(self, cam_stage="make_cam")` to its
    `stages()`.

    Args:
        method: the `Method` whose pipeline they extend (its run config holds an
            `AffinityNetConfig` at `config_key`).
        cam_stage: stage writing `cams/<name>.npz` (full-resolution CAMs in [0, 1]; background
            channels, key 0, are dropped) for the infer split.
        config_key: dotted key of the `AffinityNetConfig`.
        backbone_stage: CAM training stage whose `model.pt` backbone (`backbone.*` keys)
            AffinityNet copies when `backbone_weights` is "cam".
        names: the five stage names.

    Returns:
        [make affinity labels (`masks/` palette PNGs, 255 = unsure), evaluate them, train
        AffinityNet (`model.pt`), random-walk pseudo-masks (`masks/` palette PNGs and `probs/`
        CAM-format `.npz`: walked background at key 0, then the walked class maps), evaluate
        them (mIoU + contour F)].
    """
    labels_name, eval_labels_name, train_name, mask_name, eval_name = names
    a_cfg: AffinityNetConfig = select(method.cfg, config_key)
    if a_cfg.backbone_weights not in ("cam", "pretrained"):
        raise ValueError(f"{config_key}.backbone_weights must be 'cam' or 'pretrained', got "
                         f"{a_cfg.backbone_weights!r}")
    if a_cfg.walk_pairs not in ("window", "full"):
        raise ValueError(f"{config_key}.walk_pairs must be 'window' or 'full', got "
                         f"{a_cfg.walk_pairs!r}")
    if a_cfg.label_cells not in ("pooled", "nearest"):
        raise ValueError(f"{config_key}.label_cells must be 'pooled' or 'nearest', got "
                         f"{a_cfg.label_cells!r}")
    if a_cfg.distance not in ("mean", "sum"):
        raise ValueError(f"{config_key}.distance must be 'mean' or 'sum', got "
                         f"{a_cfg.distance!r}")

    def make_labels(ctx: StageContext) -> dict[str, Any]:
        cfg: AffinityNetConfig = select(ctx.cfg, config_key)
        params = dict(low_alpha=cfg.low_alpha, high_alpha=cfg.high_alpha, crf=cfg.label_crf,
                      save_scores=cfg.label_cells == "pooled")
        return cams_to_masks(ctx, build_dataset(ctx.cfg.data, ctx.cfg.data.infer_split),
                             cam_stage, _labels_one, params, desc=labels_name)

    def build(run_cfg: Any, *, load_pretrained: bool) -> AffinityNet:
        return build_affinitynet(run_cfg, config_key=config_key, load_pretrained=load_pretrained)

    def walk(model: AffinityNet, image: np.ndarray, cam_file: Path, cfg: AffinityNetConfig,
             device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cams, keys = load_cams(cam_file)
        if image.shape[:2] != cams.shape[-2:]:
            raise DataError(f"{cam_file}: CAMs are {cams.shape[-1]}x{cams.shape[-2]} but the "
                            f"image is {image.shape[1]}x{image.shape[0]}")
        return affinity_walk(model, image, cams, keys, cfg=cfg, device=device)

    label_keys = ("data.infer_split", f"{config_key}.low_alpha", f"{config_key}.high_alpha",
                  f"{config_key}.label_crf", f"{config_key}.label_cells")
    train_keys = ("data.root", "data.infer_split", "model", "pipeline.seed",
                  f"{config_key}.train", f"{config_key}.backbone_weights",
                  f"{config_key}.output_stride", f"{config_key}.radius",
                  f"{config_key}.distance", f"{config_key}.label_cells")
    walk_keys = ("data.infer_split", f"{config_key}.radius", f"{config_key}.distance",
                 f"{config_key}.walk_alpha", f"{config_key}.beta", f"{config_key}.num_steps",
                 f"{config_key}.walk_tol", f"{config_key}.walk_pairs")
    return [
        Stage(labels_name, make_labels, needs=(cam_stage,), depends_on=label_keys,
              description="AffinityNet labels: CRF at α_low / α_high → fg / bg / 255"),
        method.eval_masks_stage(eval_labels_name, labels_name),
        refiner_train_stage(
            method, train_name, labels_stage=labels_name, backbone_stage=backbone_stage,
            config_key=config_key, build=build, network="affinitynet",
            dataset_fn=(_score_dataset(labels_name, config_key)
                        if a_cfg.label_cells == "pooled" else None),
            step_fn=lambda cfg: lambda net, batch: affinitynet_loss_terms(
                net, batch, radius=cfg.radius, distance=cfg.distance),
            depends_on=train_keys, description="train AffinityNet on the affinity labels"),
        refiner_walk_stage(
            mask_name, train_stage=train_name, cam_stage=cam_stage, config_key=config_key,
            build=build, walk=walk, depends_on=walk_keys,
            description="random walk of the CAMs on AffinityNet affinities → pseudo-masks"),
        method.eval_masks_stage(eval_name, mask_name),
    ]


# The CAM baseline followed by AffinityNet (PSA's pipeline) ---------------------------------------

@dataclass
class AffinityNetMethodConfig(CamBaselineConfig):
    """CAM baseline (IRN's CAM recipe) + AffinityNet refinement (PSA)."""

    name: str = "affinitynet"
    # PSA's classifier (`network/resnet38_cls.py`, `infer_cls.py`): Dropout2d(0.5) on the
    # features before GAP; each view's CAM upsampled straight to the image size and summed.
    # 0 / "strided" give IRN's CAM recipe (the CAM baseline's).
    dropout: float = 0.5
    cam_merge: str = "image"
    affinitynet: AffinityNetConfig = field(default_factory=AffinityNetConfig)


@METHODS.register("affinitynet")
class AffinityNetMethod(CamBaseline):
    """PSA's pipeline on the CAM baseline: data → train_cam → make_cam → eval_cam →
    make_aff_labels → eval_aff_labels → train_affinitynet → make_aff_masks → eval_aff_masks."""

    name = "affinitynet"
    config_cls = AffinityNetMethodConfig
    pseudo_mask_stage = "make_aff_masks"
    train_keys = CamBaseline.train_keys + ("method.dropout",)
    cam_keys = CamBaseline.cam_keys + ("method.cam_merge",)

    def cam_merge(self) -> str:
        return self.mcfg.cam_merge

    def build_model(self, num_classes: int) -> nn.Module:
        """The CAM baseline's classifier with PSA's dropout before GAP; on ResNet-38 with
        `model.frozen_bn`, PSA's `not_training` layers (conv1a, b2, b2_1, b2_2) are frozen
        instead of a ResNet stem."""
        m = self.cfg.model
        if self.mcfg.cam_merge not in ("strided", "image"):
            raise ValueError(f"method.cam_merge must be 'strided' or 'image', got "
                             f"{self.mcfg.cam_merge!r}")
        if m.backbone != "resnet38":
            model = super().build_model(num_classes)
            model.dropout = float(self.mcfg.dropout)
            return model
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if m.frozen_bn:
            for name, p in backbone.named_parameters():
                if name.startswith(_FROZEN_PREFIXES["resnet38"]):
                    p.requires_grad_(False)
        return CamClassifier(backbone=backbone, num_classes=num_classes,
                             detach_stages=self.mcfg.detach_stages, dropout=self.mcfg.dropout)

    def stages(self) -> list[Stage]:
        cam = [s for s in self.cam_stages() if s.name not in ("make_seeds", "eval_seeds")]
        return cam + affinitynet_stages(self, cam_stage="make_cam")
