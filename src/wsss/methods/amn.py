"""AMN, "Threshold Matters in WSSS" (arXiv:2203.16045): per-pixel classification with label
conditioning, trained on CAM + CRF seeds, refined by IRN.

Follows `gaviotas/AMN` (`net/resnet50_amn.py`, `step/train_amn.py`, `step/make_amn_cam.py`,
`step/amn_cam_to_ir_label.py`, `step/make_sem_seg_labels.py`); the CAM stages are the CAM
baseline's (`wsss.methods.cam_baseline`). See docs/methods/amn.md for the paper / official code /
wsss table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import TrainConfig
from wsss.data.transforms import scaled_views
from wsss.engine.checkpoint import load_submodule_state
from wsss.io import DataError, load_mask, save_cams
from wsss.losses import pcl_loss
from wsss.methods import METHODS
from wsss.methods.base import Method, fit_model
from wsss.methods.cam_baseline import CamBaseline
from wsss.methods.irn import IrnConfig, irn_stages, seed_dataset
from wsss.models.amn import AMN
from wsss.models.backbones import build_backbone
from wsss.ops.affinity import downsample_labels
from wsss.ops.cam import normalize_cams, strided_size
from wsss.pipeline.stages import Stage, StageContext, per_image


def _amn_train_defaults() -> TrainConfig:
    # amn.md §4: Adam, lr 5e-6 backbone / 1e-4 head + LC (head_lr_mult 20), weight decay 1e-4,
    # constant lr (poly power 0), batch 16, 5 epochs, random rescale 0.5-1.5, flip, crop 512.
    return TrainConfig(epochs=5, batch_size=16, crop_size=512, resize_long=None,
                       scale_range=[0.5, 1.5], flip=True, color_jitter=None, optimizer="adam",
                       lr=5e-6, head_lr_mult=20.0, weight_decay=1e-4, momentum=0.0,
                       poly_power=0.0)


@dataclass
class AmnConfig:
    """AMN recipe (amn.md): CAM stage as IRN, then the AMN network, AMN seeds and IRN."""

    name: str = "amn"
    # Stages 1-4: IRN's CAM network and CAM + CRF seeds (the CAM baseline's fields).
    detach_stages: int = 2
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    cam_flip: bool = True
    cam_eval_threshold: float = 0.15
    seed_fg_threshold: float = 0.30
    seed_bg_threshold: float = 0.05
    seed_crf: bool = True
    # AMN network. lc_layer: stage (1..4) whose output the label conditioning multiplies
    # (paper Table 2; 4 = AMN), null = no LC (the PCL-only ablation).
    lc_layer: int | None = 4
    label_input: str = "label"  # label | ones | noisy_label (supplementary Table A.1)
    lc_noise_std: float = 0.5  # std of the Gaussian noise of noisy_label (not given in the paper)
    dropout: float = 0.1
    aspp_dilations: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    label_smoothing: float = 0.4  # ε, code's ε / (C − 1) off target
    # AMN backbone initialisation: "pretrained" = `model.pretrained` (AMN: ImageNet); "cam" =
    # the trained CAM network's backbone (for from-scratch runs without ImageNet weights).
    backbone_init: str = "pretrained"
    amn_train: TrainConfig = field(default_factory=_amn_train_defaults)
    # AMN CAMs (amn.md §5) and seeds.
    amn_cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    # The official code leaves Dropout(0.1) on at inference (its `train()` override); true
    # reproduces that (stochastic CAMs), false (default) is the usual deterministic inference.
    inference_dropout: bool = False
    amn_cam_eval_threshold: float = 0.25
    amn_seed_fg_threshold: float = 0.45
    amn_seed_bg_threshold: float = 0.15
    irn: IrnConfig = field(default_factory=lambda: IrnConfig(cam_power=1.3))


def amn_cams(
    model: nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    scales: list[float],
    seeds: np.ndarray | None = None,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AMN CAMs of one image (`make_amn_cam.py`, amn.md §5).

    Per scale the logits of the image and its mirror are averaged; every scale is resized
    (bilinear) to the stride-4 size and to (H, W) and the scales are averaged; softmax over all
    C + 1 channels (after averaging); channels [0] + present classes are kept and min-max
    normalised; where the CAM seed says background (0) the raw softmax is kept.

    Args:
        model: `AMN`, in the mode the caller wants (dropout on or off).
        image: uint8 (H, W, 3).
        labels: (C,) multi-hot image-level labels (conditioning input and channel selection).
        scales: image scales, e.g. [1.0, 0.5, 1.5, 2.0].
        seeds: optional uint8 (H, W) CAM seed (0 bg, 255 unsure) for the background rule.

    Returns:
        cams float32 (K + 1, H, W) and cams_strided float32 (K + 1, ⌈H/4⌉, ⌈W/4⌉), both in
        [0, 1] with channel 0 = background; keys int64 (K + 1,) = [0, present classes].
    """
    height, width = image.shape[:2]
    small = strided_size((height, width), 4)
    label_t = torch.as_tensor(labels, dtype=torch.float32, device=device)[None].repeat(2, 1)
    full_sum, small_sum = None, None
    for scale in scales:
        logits = model(scaled_views(image, scale, flip=True).to(device), label_t)
        merged = ((logits[0] + logits[1].flip(-1)) / 2)[None].float()
        full = F.interpolate(merged, size=(height, width), mode="bilinear", align_corners=False)
        low = F.interpolate(merged, size=small, mode="bilinear", align_corners=False)
        full_sum = full if full_sum is None else full_sum + full
        small_sum = low if small_sum is None else small_sum + low
    keys = np.concatenate([[0], np.flatnonzero(labels > 0) + 1]).astype(np.int64)
    keep = torch.as_tensor(keys, device=device)
    outputs = []
    for total in (full_sum, small_sum):
        probs = torch.softmax(total[0] / len(scales), dim=0)[keep]
        cams = normalize_cams(probs, mode="minmax")
        if seeds is not None:
            seed_t = torch.from_numpy(np.ascontiguousarray(seeds)).to(device)
            seed_t = downsample_labels(seed_t, tuple(cams.shape[-2:]))
            cams = torch.where(seed_t[None] == 0, probs, cams)
        outputs.append(cams.clamp(0, 1).cpu().numpy().astype(np.float32))
    return outputs[0], outputs[1], keys


@METHODS.register("amn")
class Amn(Method):
    """AMN: CAM → seeds → AMN → AMN seeds → IRN → pseudo-masks."""

    name = "amn"
    config_cls = AmnConfig
    train_keys = ("method.name", "method.lc_layer", "method.label_input", "method.lc_noise_std",
                  "method.dropout", "method.aspp_dilations", "method.label_smoothing")
    cam_keys = ("method.amn_cam_scales", "method.inference_dropout")
    pseudo_mask_stage = "make_pseudo_masks"

    def build_model(self, num_classes: int) -> nn.Module:
        m, c = self.cfg.model, self.mcfg
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if m.frozen_bn:  # AMN, as IRN: conv1 and bn1 never train
            for p in list(backbone.stem[0].parameters()) + list(backbone.stem[1].parameters()):
                p.requires_grad_(False)
        return AMN(backbone=backbone, num_classes=num_classes, lc_layer=c.lc_layer,
                   label_input=c.label_input, noise_std=c.lc_noise_std, dropout=c.dropout,
                   dilations=tuple(c.aspp_dilations))

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch["image"], batch["labels"])
        seeds = downsample_labels(batch["mask"], tuple(logits.shape[-2:]))
        return {"pcl": pcl_loss(logits, seeds, self.mcfg.label_smoothing)}

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        backbone, new = model.param_groups()
        mult = self.mcfg.amn_train.head_lr_mult
        return [{"params": backbone, "lr": base_lr}, {"params": new, "lr": base_lr * mult}]

    def _set_inference_mode(self, model: nn.Module) -> None:
        model.eval()
        if self.mcfg.inference_dropout:
            model.dropout.train()

    def infer_cams(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """AMN CAMs without the seed rule (no CAM seed available here); see `amn_cams`."""
        device = next(model.parameters()).device
        cams, _, keys = amn_cams(model, image, labels, scales=list(self.mcfg.amn_cam_scales),
                                 device=device)
        return cams, keys

    def make_amn_cam_stage(self, name: str = "make_amn_cam", train_stage: str = "train_amn",
                           seed_stage: str = "make_seeds") -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            dataset = self.dataset(ctx.cfg.data.infer_split)
            model = self.load_trained(ctx.stage_dir(train_stage), dataset.num_classes, ctx.device)
            self._set_inference_mode(model)
            index = {n: i for i, n in enumerate(dataset.names)}
            seed_dir, cam_dir = ctx.stage_dir(seed_stage) / "masks", ctx.out_dir / "cams"

            def work(item: str) -> None:
                i = index[item]
                seed_path = seed_dir / f"{item}.png"
                if not seed_path.is_file():
                    raise DataError(f"seed mask missing: {seed_path}")
                with torch.inference_mode():
                    cams, strided, keys = amn_cams(
                        model, dataset.load_image(i), dataset.label_vector(i),
                        scales=list(self.mcfg.amn_cam_scales), seeds=load_mask(seed_path),
                        device=ctx.device)
                save_cams(cam_dir / f"{item}.npz", cams, keys, cams_strided=strided,
                          dtype=ctx.cfg.pipeline.cam_dtype)

            done = per_image(dataset.names, lambda n: cam_dir / f"{n}.npz", work, desc=name)
            return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done,
                    "inference_dropout": self.mcfg.inference_dropout}

        return Stage(name, run, needs=(train_stage, seed_stage),
                     depends_on=("data.infer_split", "data.root", "pipeline.cam_dtype")
                     + self.cam_keys,
                     description="AMN CAMs: multi-scale + flip softmax, min-max, bg rule (.npz)")

    def train_amn_stage(self, name: str = "train_amn", seed_stage: str = "make_seeds",
                        cam_train_stage: str = "train_cam") -> Stage:
        """Train AMN on the infer split's images and `seed_stage`'s seeds (paired crops)."""
        from_cam = self.mcfg.backbone_init == "cam"
        if self.mcfg.backbone_init not in ("cam", "pretrained"):
            raise ValueError("method.backbone_init must be 'pretrained' or 'cam', got "
                             f"{self.mcfg.backbone_init!r}")

        def run(ctx: StageContext) -> dict[str, Any]:
            t = ctx.cfg.method.amn_train
            dataset = seed_dataset(seed_stage)(ctx, t)
            model = self.build_model(dataset.num_classes)
            if from_cam:
                load_submodule_state(model.backbone, ctx.stage_dir(cam_train_stage) / "model.pt")
            return fit_model(ctx, model=model, step_fn=self.training_step,
                             param_groups=self.param_groups(model, t.lr), dataset=dataset,
                             train_cfg=t, meta=self.checkpoint_meta(dataset))

        keys = ("data.root", "data.infer_split", "data.image_dir", "data.labels_from",
                "data.labels_file", "model", "pipeline.seed", "method.amn_train",
                "method.backbone_init") + self.train_keys
        needs = (seed_stage, cam_train_stage) if from_cam else (seed_stage,)
        return Stage(name, run, needs=needs, depends_on=keys,
                     description="train AMN (PCL + label conditioning) on CAM seeds")

    def stages(self) -> list[Stage]:
        cam = CamBaseline(self.cfg)  # stages 1-4 are the CAM baseline's, on this config
        return [
            *cam.cam_stages(),
            self.train_amn_stage("train_amn", "make_seeds", "train_cam"),
            self.make_amn_cam_stage("make_amn_cam", "train_amn", "make_seeds"),
            self.eval_cam_stage("eval_amn_cam", "make_amn_cam",
                                threshold_key="amn_cam_eval_threshold"),
            self.make_seeds_stage("make_amn_seeds", "make_amn_cam",
                                  fg_key="amn_seed_fg_threshold",
                                  bg_key="amn_seed_bg_threshold"),
            self.eval_masks_stage("eval_amn_seeds", "make_amn_seeds"),
            *irn_stages(self, cam_stage="make_amn_cam", seed_stage="make_amn_seeds",
                        config_key="method.irn", backbone_stage="train_cam"),
        ]
