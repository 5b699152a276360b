"""IRN boundary refinement (arXiv:1904.05044) as stages that follow any method's CAMs and seeds.

`irn_stages(method, cam_stage=..., seed_stage=...)` returns train_irn → make_pseudo_masks →
eval_pseudo_masks. IRNet learns class boundaries (and displacements) from seed labels; the
CAMs are then propagated inside the boundaries by a random walk and thresholded into pseudo-masks.
Follows `jiwoon-ahn/irn: step/train_irn.py`, `step/make_sem_seg_labels.py`,
`net/resnet50_irn.py`; AMN's changes (CAM power 1.3, background channel dropped) follow
`gaviotas/AMN: step/make_sem_seg_labels.py`. See docs/methods/irn.md.
"""

from __future__ import annotations

from collections.abc import Callable
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
from wsss.engine.checkpoint import load_checkpoint, load_model_state, load_submodule_state
from wsss.io import DataError, load_mask, save_cams, save_mask
from wsss.losses import irn_affinity_loss, irn_displacement_loss
from wsss.methods.base import fit_model, train_transform
from wsss.models.backbones import build_backbone
from wsss.models.irn import IRNet, stride4_size
from wsss.ops.affinity import (
    PathIndex,
    affinity_from_boundary,
    affinity_labels,
    downsample_labels,
    pair_displacement,
)
from wsss.ops.random_walk import random_walk
from wsss.pipeline.stages import Stage, StageContext, per_image

__all__ = [
    "IrnConfig",
    "SeedDataset",
    "build_irnet",
    "irn_loss_terms",
    "irn_stages",
    "pseudo_mask",
]


def _irn_train_defaults() -> TrainConfig:
    # IRN's IRNet recipe (irn.md §4): SGD, lr 0.1 boundary / 1.0 displacement, poly 0.9,
    # batch 32, 3 epochs, crop 512, random rescale 0.5-1.5, flip, no jitter; effective
    # momentum 1e-4 in the official code (weight decay in the momentum slot) → 0 here.
    return TrainConfig(epochs=3, batch_size=32, crop_size=512, resize_long=None,
                       scale_range=[0.5, 1.5], flip=True, color_jitter=None, optimizer="sgd",
                       lr=0.1, head_lr_mult=10.0, weight_decay=1e-4, momentum=0.0,
                       poly_power=0.9)


@dataclass
class IrnConfig:
    """IRNet training and random-walk settings (irn.md §3-§5; AMN sets `cam_power` 1.3)."""

    train: TrainConfig = field(default_factory=_irn_train_defaults)
    # Frozen backbone weights: "pretrained" builds `model.backbone` with `model.pretrained`
    # (IRN: ImageNet); "cam" copies the trained CAM network's backbone (for from-scratch runs,
    # where a random frozen backbone would carry no information).
    backbone_weights: str = "pretrained"
    train_radius: int = 10  # pair radius γ of the training losses
    radius: int = 5  # random-walk neighbourhood
    beta: float = 10.0  # affinity exponent β
    num_steps: int = 256  # t = 2 ** exp_times, IRN exp_times = 8
    # Truncation bound of the Chebyshev walk, relative to each map's maximum; 0 = the plain
    # num_steps sparse products (`wsss.ops.random_walk`).
    walk_tol: float = 1e-6
    cam_power: float = 1.0  # CAMs are raised to this before the walk (AMN: 1.3)
    # The boundary map at inference is computed on the image zero-padded to this square side
    # (IRN `EdgeDisplacement`, 512; GroupNorm statistics include the padding); 0 = unpadded.
    boundary_pad: int = 512
    bg_threshold: float = 0.25  # IRN `sem_seg_bg_thres`


class SeedDataset(DatasetView):
    """Images, image-level labels and seed masks from another stage, with paired augmentation.

    The image-level labels come from the underlying dataset (never from the seeds, which may
    have lost a class). Samples are dicts: `image` float32 (3, h, w), `labels` (C,), `mask`
    int64 (h, w) = the transformed seed (255 = unsure or padding), `name`, `index`.

    Args:
        dataset: a `SegmentationDataset` (its own transform is not used).
        seed_dir: folder of `<name>.png` seed masks for every image of `dataset`.
        transform: paired transform (uint8 image, uint8 seed) → tensors.
    """

    def __init__(self, dataset: Any, seed_dir: str | Path, transform: Any) -> None:
        super().__init__(dataset, transform)
        self.seed_dir = Path(seed_dir)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        path = self.seed_dir / f"{name}.png"
        if not path.is_file():
            raise DataError(f"seed mask missing: {path}")
        image = self.dataset.load_image(index)
        seeds = load_mask(path)
        if seeds.shape != image.shape[:2]:
            raise DataError(f"{path}: seed is {seeds.shape[1]}x{seeds.shape[0]} but the image "
                            f"is {image.shape[1]}x{image.shape[0]}")
        image_t, seeds_t = self.transform(image, seeds)
        if isinstance(seeds_t, np.ndarray):
            seeds_t = mask_to_tensor(seeds_t)
        return {"image": image_t, "labels": torch.from_numpy(self.dataset.label_vector(index)),
                "mask": seeds_t, "name": name, "index": index}


def seed_dataset(seed_stage: str) -> Any:
    """IRNet's training set: the infer split's images with `seed_stage`'s masks."""

    def build(ctx: StageContext, train_cfg: Any) -> SeedDataset:
        base = build_dataset(ctx.cfg.data, ctx.cfg.data.infer_split)
        return SeedDataset(base, ctx.stage_dir(seed_stage) / "masks", train_transform(train_cfg))

    return build


def refiner_train_stage(
    method: Any, name: str, *, labels_stage: str, backbone_stage: str, config_key: str,
    build: Callable[..., nn.Module], step_fn: Callable[[Any], Callable[..., Any]], network: str,
    depends_on: tuple[str, ...], description: str,
    dataset_fn: Callable[[StageContext, Any], Any] | None = None,
) -> Stage:
    """Training stage of a refinement network (IRNet, AffinityNet) on another stage's masks
    (`dataset_fn(ctx, train_cfg)` builds the training set; default `seed_dataset(labels_stage)`).

    The config at `config_key` holds `train` (a `TrainConfig`) and `backbone_weights`: "cam"
    copies `backbone_stage`'s backbone into the network, "pretrained" keeps `model.pretrained`.
    `build(run_cfg, load_pretrained=...)` makes the network, whose `param_groups()` gives (base,
    head) parameters (lr and lr × `head_lr_mult`); `step_fn(cfg)` gives the trainer's step.
    """
    from_cam = select(method.cfg, config_key).backbone_weights == "cam"

    def train(ctx: StageContext) -> dict[str, Any]:
        cfg = select(ctx.cfg, config_key)
        dataset = (dataset_fn or seed_dataset(labels_stage))(ctx, cfg.train)
        model = build(ctx.cfg, load_pretrained=not from_cam)
        if from_cam:
            load_submodule_state(model.backbone, ctx.stage_dir(backbone_stage) / "model.pt")
        base, head = model.param_groups()
        groups = [{"params": base, "lr": cfg.train.lr},
                  {"params": head, "lr": cfg.train.lr * cfg.train.head_lr_mult}]
        meta = {**method.checkpoint_meta(dataset), "network": network}
        return fit_model(ctx, model=model, step_fn=step_fn(cfg), param_groups=groups,
                         dataset=dataset, train_cfg=cfg.train, meta=meta)

    needs = (labels_stage, backbone_stage) if from_cam else (labels_stage,)
    return Stage(name, train, needs=needs, depends_on=depends_on, description=description)


def refiner_walk_stage(
    name: str, *, train_stage: str, cam_stage: str, config_key: str,
    build: Callable[..., nn.Module],
    walk: Callable[[nn.Module, np.ndarray, Path, Any, torch.device],
                   tuple[np.ndarray, np.ndarray, np.ndarray]],
    depends_on: tuple[str, ...], description: str,
) -> Stage:
    """Pseudo-mask stage of a refinement network: for every infer-split image,
    `walk(model, image (H, W, 3) uint8, CAM file path, cfg, device)` → (mask (H, W), probs
    (K, H, W), keys (K,)), written as `masks/<name>.png` and `probs/<name>.npz`."""

    def make_masks(ctx: StageContext) -> dict[str, Any]:
        cfg = select(ctx.cfg, config_key)
        dataset = build_dataset(ctx.cfg.data, ctx.cfg.data.infer_split)
        model = build(ctx.cfg, load_pretrained=False)
        path = ctx.stage_dir(train_stage) / "model.pt"
        load_model_state(model, load_checkpoint(path, map_location="cpu")["model"], str(path))
        model = model.to(ctx.device).eval()
        index = {n: i for i, n in enumerate(dataset.names)}
        cam_dir = ctx.stage_dir(cam_stage) / "cams"
        mask_dir, prob_dir = ctx.out_dir / "masks", ctx.out_dir / "probs"
        cam_dtype = ctx.cfg.pipeline.cam_dtype

        def work(item: str) -> None:
            image = dataset.load_image(index[item])
            with torch.inference_mode():
                mask, probs, keys = walk(model, image, cam_dir / f"{item}.npz", cfg, ctx.device)
            save_cams(prob_dir / f"{item}.npz", probs, keys, dtype=cam_dtype)
            save_mask(mask_dir / f"{item}.png", mask)  # written last: marks the item done

        done = per_image(dataset.names, lambda n: mask_dir / f"{n}.png", work, desc=name)
        return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done}

    return Stage(name, make_masks, needs=(train_stage, cam_stage),
                 depends_on=depends_on + ("pipeline.cam_dtype",), description=description)


def build_irnet(cfg: Any, *, load_pretrained: bool = True) -> IRNet:
    """IRNet on `cfg.model`'s backbone at output stride 16, with `model.pretrained` weights
    unless `load_pretrained` is False (the caller then loads weights itself)."""
    m = cfg.model
    pretrained = m.pretrained if load_pretrained else "none"
    backbone = build_backbone(m.backbone, output_stride=16, pretrained=pretrained,
                              frozen_bn=m.frozen_bn)
    return IRNet(backbone=backbone)


@lru_cache(maxsize=16)
def _path_index(radius: int, size: tuple[int, int]) -> PathIndex:
    return PathIndex.build(radius, size)


def irn_loss_terms(model: nn.Module, batch: dict[str, Any], *, radius: int
                   ) -> dict[str, torch.Tensor]:
    """IRN's training loss on one batch (`AffinityDisplacementLoss` + `train_irn.py`).

    Seeds are reduced to the stride-4 map with PIL-style nearest sampling; the total
    (L_pos + L_neg)/2 + (L_dp_fg + L_dp_bg)/2 is returned as its four halves.

    Args:
        batch: `image` (B, 3, H, W), `mask` (B, H, W) int64 seeds (255 = unsure / padding).
        radius: pair radius (IRN: 10).
    """
    edge, disp = model(batch["image"])
    size = tuple(edge.shape[-2:])
    seeds = downsample_labels(batch["mask"], size)
    index = _path_index(radius, size)
    bg_pos, fg_pos, neg = affinity_labels(seeds, index)
    affinity = affinity_from_boundary(torch.sigmoid(edge), index)
    pos_loss, neg_loss = irn_affinity_loss(affinity, bg_pos, fg_pos, neg)
    dp_fg, dp_bg = irn_displacement_loss(pair_displacement(disp, index),
                                         index.directions.to(disp.device), bg_pos, fg_pos)
    return {"affinity_pos": pos_loss / 2, "affinity_neg": neg_loss / 2,
            "displacement_fg": dp_fg / 2, "displacement_bg": dp_bg / 2}


def pseudo_mask(
    model: IRNet,
    image: np.ndarray,
    cams: np.ndarray,
    keys: np.ndarray,
    *,
    cams_strided: np.ndarray | None = None,
    cfg: IrnConfig,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-walk pseudo-mask of one image (IRN `make_sem_seg_labels`, AMN variant).

    Background channels (key 0) are dropped; the stride-4 CAMs (given, as IRN's `cam`; only
    without them bilinearly reduced from the full-resolution ones) are raised to `cam_power`,
    walked on the flip-averaged boundary map (computed on the image zero-padded to
    `boundary_pad`², as IRN's `EdgeDisplacement`), upsampled ×4, cropped, divided by their single
    global max, and a constant background plane `bg_threshold` is prepended.

    Args:
        image: uint8 (H, W, 3).
        cams: float (K, H, W) in [0, 1] with `keys` (K,) class indices.
        cams_strided: optional float (K, ⌈H/4⌉, ⌈W/4⌉) with the same keys.

    Returns:
        mask uint8 (H, W) class indices; probs float32 (K' + 1, H, W) (channel 0 = the background
        plane, then the walked maps in [0, 1]); their keys int64 (K' + 1,) starting with 0.
    """
    height, width = image.shape[:2]
    size = stride4_size((height, width))
    fg = keys > 0
    keys_fg = keys[fg].astype(np.int64)
    probs_keys = np.concatenate([[BACKGROUND], keys_fg]).astype(np.int64)
    if keys_fg.size == 0:
        probs = np.full((1, height, width), cfg.bg_threshold, dtype=np.float32)
        return np.zeros((height, width), dtype=np.uint8), probs, probs_keys
    if cams_strided is not None:
        low = torch.from_numpy(np.ascontiguousarray(cams_strided[fg])).float().to(device)
    else:
        full = torch.from_numpy(np.ascontiguousarray(cams[fg])).float().to(device)
        low = F.interpolate(full[None], size=size, mode="bilinear", align_corners=False)[0]
    low = low.clamp_min(0).pow(cfg.cam_power)
    boundary = model.boundary(normalize_image(image)[None].to(device), size,
                              pad_to=cfg.boundary_pad)
    walked = random_walk(low, boundary, radius=cfg.radius, beta=cfg.beta,
                         num_steps=cfg.num_steps, tol=cfg.walk_tol)
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear",
                       align_corners=False)[0, :, :height, :width]
    up = up / up.max().clamp_min(1e-5)
    plane = torch.full((1, height, width), cfg.bg_threshold, dtype=up.dtype, device=up.device)
    probs = torch.cat([plane, up], dim=0)
    mask = torch.from_numpy(probs_keys).to(device)[probs.argmax(dim=0)]
    return (mask.cpu().numpy().astype(np.uint8), probs.cpu().numpy().astype(np.float32),
            probs_keys)


def _load_cam_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"CAM file missing: {path}")
    with np.load(path) as data:
        strided = data["cams_strided"].astype(np.float32) if "cams_strided" in data else None
        return data["cams"].astype(np.float32), data["keys"].astype(np.int64), strided


def irn_stages(
    method: Any,
    *,
    cam_stage: str,
    seed_stage: str,
    config_key: str = "method.irn",
    backbone_stage: str = "train_cam",
    names: tuple[str, str, str] = ("train_irn", "make_pseudo_masks", "eval_pseudo_masks"),
) -> list[Stage]:
    """IRN stages after any method's CAM files and seed masks.

    Args:
        method: the `Method` whose pipeline they extend (its run config holds an `IrnConfig` at
            `config_key`).
        cam_stage: stage writing `cams/<name>.npz` (background channels, key 0, are dropped).
        seed_stage: stage writing `masks/<name>.png` seeds (IRN's training labels).
        backbone_stage: CAM training stage whose backbone IRNet copies when
            `backbone_weights` is "cam".
        names: the three stage names.

    Returns:
        [train IRNet, make pseudo-masks (`masks/` palette PNGs, `probs/` CAM-format `.npz` with
        the background plane at key 0), evaluate them].
    """
    train_name, mask_name, eval_name = names
    irn_cfg: IrnConfig = select(method.cfg, config_key)
    if irn_cfg.backbone_weights not in ("cam", "pretrained"):
        raise ValueError(f"{config_key}.backbone_weights must be 'cam' or 'pretrained', got "
                         f"{irn_cfg.backbone_weights!r}")

    def walk(model: IRNet, image: np.ndarray, cam_file: Path, cfg: IrnConfig,
             device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cams, keys, strided = _load_cam_file(cam_file)
        return pseudo_mask(model, image, cams, keys, cams_strided=strided, cfg=cfg, device=device)

    train_keys = ("data.root", "data.infer_split", "model", "pipeline.seed",
                  f"{config_key}.train", f"{config_key}.train_radius",
                  f"{config_key}.backbone_weights")
    walk_keys = ("data.infer_split", f"{config_key}.radius", f"{config_key}.beta",
                 f"{config_key}.num_steps", f"{config_key}.walk_tol",
                 f"{config_key}.cam_power", f"{config_key}.bg_threshold",
                 f"{config_key}.boundary_pad")
    return [
        refiner_train_stage(
            method, train_name, labels_stage=seed_stage, backbone_stage=backbone_stage,
            config_key=config_key, build=build_irnet, network="irnet",
            step_fn=lambda cfg: lambda net, batch: irn_loss_terms(net, batch,
                                                                  radius=cfg.train_radius),
            depends_on=train_keys,
            description="train IRNet (boundaries + displacements) on seed labels"),
        refiner_walk_stage(
            mask_name, train_stage=train_name, cam_stage=cam_stage, config_key=config_key,
            build=build_irnet, walk=walk, depends_on=walk_keys,
            description="random walk of the CAMs inside IRN boundaries → pseudo-masks"),
        method.eval_masks_stage(eval_name, mask_name),
    ]
