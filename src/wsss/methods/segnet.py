"""The final segmentation stages every method can append (`segnet.enabled`).

`train_segnet` trains a DeepLab (`wsss.models.segnet`) on the pseudo-masks a method wrote to
`<run>/<pseudo_mask_stage>/masks/` for `data.infer_split` (255 = ignored); `predict_val` writes
multi-scale + flip predictions for `data.val_split`, without (`masks/`) and with (`masks_crf/`)
the dense CRF; `eval_val` scores both with the per-class table of the papers. Recipes and their
sources: docs/methods/segnet.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import RunConfig, SegnetConfig, to_dict
from wsss.data import build_dataset
from wsss.data.labels import IGNORE_INDEX
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, pil_resize
from wsss.engine import distributed as dist
from wsss.engine.trainer import Trainer
from wsss.evaluation import evaluate_masks, write_result
from wsss.methods.base import finish_training
from wsss.io import DataError, save_mask, write_text
from wsss.models.segnet import SegNet, build_segnet
from wsss.pipeline.stages import Stage, StageContext, per_image
from wsss.report.tensorboard import train_logger
from wsss.predict import Predictor, crf_params

__all__ = ["balanced_cross_entropy", "build_segnet_from_config", "resize_masks_nearest",
           "segmentation_loss", "segnet_checkpoint_meta", "segnet_param_groups", "segnet_stages",
           "segnet_training_step"]

TRAIN_KEYS = (
    "data.root", "data.infer_split", "data.image_dir", "pipeline.seed",
    "segnet.pseudo_mask_stage", "segnet.arch", "segnet.backbone", "segnet.output_stride",
    "segnet.pretrained", "segnet.frozen_bn", "segnet.frozen_bn_affine", "segnet.iterations",
    "segnet.batch_size", "segnet.lr", "segnet.head_lr_mult", "segnet.head_bias_lr_mult",
    "segnet.head_bias_weight_decay", "segnet.poly_power", "segnet.weight_decay",
    "segnet.momentum", "segnet.crop_size", "segnet.scale_range", "segnet.flip",
    "segnet.balanced_ce", "segnet.msc_train_scales", "segnet.amp",
)
PREDICT_KEYS = ("data.val_split", "segnet.test_scales", "segnet.test_flip", "segnet.test_merge",
                "segnet.crf", "segnet.crf_preset")
TEST_MERGES = ("mean", "max")


# --------------------------------------------------------------------------------------------
# Losses and the training step
# --------------------------------------------------------------------------------------------


def balanced_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, *,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean of the background-pixel and foreground-pixel cross-entropies.

    AMN's `balanced_cross_entropy` (`gaviotas/AMN: step/train_amn.py`): the mean CE over pixels
    labelled 0 and the mean CE over pixels labelled 1..C are averaged, so background and
    foreground weigh the same whatever their areas. Deviation: a group without pixels is left
    out (AMN divides by zero there).

    Args:
        logits: (B, C + 1, H, W). masks: (B, H, W) int64, `ignore_index` = ignored.

    Returns:
        scalar; 0 (with gradient) when no pixel is labelled.
    """
    per_pixel = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="none")
    background = masks == 0
    foreground = (masks != ignore_index) & ~background
    parts = [per_pixel[group].mean() for group in (background, foreground) if group.any()]
    if not parts:
        return per_pixel.sum() * 0.0
    return torch.stack(parts).mean()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, *, balanced: bool = False,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel cross-entropy over labelled pixels (or `balanced_cross_entropy`).

    Args:
        logits: (B, C + 1, H, W). masks: (B, H, W) int64, `ignore_index` = ignored.

    Returns:
        scalar; 0 (with gradient) when no pixel is labelled (a crop of pure padding), where
        `F.cross_entropy`'s mean would be NaN.
    """
    if balanced:
        return balanced_cross_entropy(logits, masks, ignore_index=ignore_index)
    per_pixel = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="none")
    return per_pixel.sum() / (masks != ignore_index).sum().clamp(min=1)


def resize_masks_nearest(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Labels resized with PIL's nearest neighbour, one image at a time (deeplab-pytorch
    `main.py resize_labels`, which its docstring prefers to torch's and OpenCV's nearest).

    Args:
        masks: int64 (B, H, W) in 0..255.
        size: target (h, w).

    Returns:
        int64 (B, h, w) on the masks' device.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    cpu = masks.detach().cpu().numpy().astype(np.uint8)
    out = np.stack([pil_resize(m, size, order=0) for m in cpu])
    return torch.from_numpy(out.astype(np.int64)).to(masks.device)


def segnet_training_step(model: nn.Module, batch: dict[str, Any], *, balanced: bool = False,
                         msc_scales: list[float] | None = None) -> dict[str, torch.Tensor]:
    """One step's loss terms (for `wsss.engine.trainer.Trainer`).

    Without `msc_scales`: `{"seg": loss}` on the logits upsampled to the crop. With them
    (DeepLab-v2 MSC, deeplab-pytorch `main.py:226-233`): one cross-entropy per logit map —
    the crop, each rescaled crop, their pixel-wise max — against the labels resized (nearest)
    to that map, as `seg_s1`, `seg_s<scale>`, `seg_max` (the trainer sums them).
    """
    if not msc_scales:
        return {"seg": segmentation_loss(model(batch["image"]), batch["mask"],
                                         balanced=balanced)}
    outputs = model(batch["image"], msc_scales=list(msc_scales))
    names = ["seg_s1"] + [f"seg_s{s:g}" for s in msc_scales] + ["seg_max"]
    masks = batch["mask"]
    return {name: segmentation_loss(logits, resize_masks_nearest(masks, logits.shape[-2:]),
                                    balanced=balanced)
            for name, logits in zip(names, outputs)}


# --------------------------------------------------------------------------------------------
# Building and describing the network
# --------------------------------------------------------------------------------------------


def build_segnet_from_config(cfg: SegnetConfig, num_classes: int) -> SegNet:
    """The network `cfg` describes, for `num_classes` foreground classes."""
    if cfg.test_merge not in TEST_MERGES:
        raise ValueError(f"config key 'segnet.test_merge' must be one of {TEST_MERGES}, got "
                         f"{cfg.test_merge!r}")
    return build_segnet(arch=cfg.arch, backbone=cfg.backbone, num_classes=num_classes,
                        output_stride=cfg.output_stride, pretrained=cfg.pretrained,
                        frozen_bn=cfg.frozen_bn, frozen_bn_affine=cfg.frozen_bn_affine)


def segnet_param_groups(model: SegNet, cfg: SegnetConfig) -> list[dict[str, Any]]:
    """Optimizer groups (deeplab-pytorch `main.py:158-177`): the backbone's trainable
    parameters at `lr`, the head's weights at `lr × head_lr_mult`, the head's conv biases at
    `lr × head_bias_lr_mult` with `head_bias_weight_decay` (null: the common weight decay)."""
    backbone, _ = model.param_groups()
    weights, biases = model.head_weights_and_biases()
    groups: list[dict[str, Any]] = [{"params": backbone, "lr": cfg.lr},
                                    {"params": weights, "lr": cfg.lr * cfg.head_lr_mult}]
    if biases:
        bias_group: dict[str, Any] = {"params": biases, "lr": cfg.lr * cfg.head_bias_lr_mult}
        if cfg.head_bias_weight_decay is not None:
            bias_group["weight_decay"] = cfg.head_bias_weight_decay
        groups.append(bias_group)
    return [g for g in groups if g["params"]]


def segnet_checkpoint_meta(cfg: RunConfig, method_name: str, source_stage: str,
                           class_names: list[str]) -> dict[str, Any]:
    """What `model.pt` carries so that `wsss.load` works without the training config."""
    s = cfg.segnet
    return {
        "kind": "segnet",
        "method": method_name,
        "pseudo_mask_stage": source_stage,
        "class_names": list(class_names),
        "num_classes": len(class_names) - 1,
        "segnet": {"arch": s.arch, "backbone": s.backbone, "output_stride": s.output_stride,
                   "frozen_bn": s.frozen_bn},
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "test": {"scales": list(s.test_scales), "flip": s.test_flip, "merge": s.test_merge,
                 "crf": s.crf, "crf_preset": s.crf_preset, "crf_params": crf_params(s.crf_preset)},
        "config": to_dict(s),
    }


def pseudo_mask_source(method: Any) -> tuple[str, str]:
    """(stage, folder) of the pseudo-masks the network trains on: `segnet.pseudo_mask_stage`,
    else the method's `pseudo_mask_stage`; "stage" reads `<stage>/masks`, "stage/folder" reads
    `<stage>/<folder>` (e.g. 1-Stage's "make_masks/masks_predicted")."""
    name = method.cfg.segnet.pseudo_mask_stage or getattr(method, "pseudo_mask_stage", "")
    if not name:
        raise ValueError(f"segnet.enabled: method {method.name} names no pseudo-mask stage; set "
                         f"segnet.pseudo_mask_stage or the class attribute `pseudo_mask_stage`")
    stage, _, folder = name.partition("/")
    return stage, folder or "masks"


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def segnet_stages(method: Any) -> list[Stage]:
    """train_segnet → predict_val → eval_val for `method` (a `wsss.methods.base.Method`)."""
    return [train_segnet_stage(method), predict_val_stage(), eval_val_stage()]


def train_segnet_stage(method: Any, name: str = "train_segnet") -> Stage:
    source, folder = pseudo_mask_source(method)

    def run(ctx: StageContext) -> dict[str, Any]:
        s = ctx.cfg.segnet
        mask_dir = (ctx.stage_dir(source) / folder).resolve()
        if not mask_dir.is_dir():
            raise DataError(f"pseudo-masks not found: {mask_dir} (segnet.pseudo_mask_stage "
                            f"must name a stage, or stage/folder, that writes masks)")
        data = dataclasses.replace(ctx.cfg.data, mask_dir=str(mask_dir), labels_from="masks",
                                   labels_file=None)
        transform = build_train_transform(
            crop_size=s.crop_size, scale_range=tuple(s.scale_range) if s.scale_range else None,
            flip=s.flip,
        )
        dataset = build_dataset(data, ctx.cfg.data.infer_split, transform=transform)
        model = build_segnet_from_config(s, dataset.num_classes)
        groups = segnet_param_groups(model, s)
        meta = segnet_checkpoint_meta(ctx.cfg, method.name, f"{source}/{folder}",
                                      dataset.class_names)
        logger = train_logger(ctx)
        trainer = Trainer(
            model=model, step_fn=functools.partial(segnet_training_step, balanced=s.balanced_ce,
                                                   msc_scales=list(s.msc_train_scales)),
            param_groups=groups, dataset=dataset, out_dir=ctx.out_dir, device=ctx.device,
            epochs=1, max_steps=s.iterations, batch_size=s.batch_size, optimizer="sgd",
            momentum=s.momentum, weight_decay=s.weight_decay, poly_power=s.poly_power, amp=s.amp,
            log_every=ctx.cfg.train.log_every, checkpoint_every=s.checkpoint_every,
            # An iteration budget: an epoch of a small set may be one step, so no checkpoint
            # per epoch (a 90 MB write and fsync each step); steps, time and the end decide.
            checkpoint_epochs=False, checkpoint_seconds=ctx.cfg.pipeline.checkpoint_seconds,
            num_workers=ctx.cfg.data.num_workers, seed=ctx.cfg.pipeline.seed, meta=meta,
            logger=logger,
        )
        return {"pseudo_masks": f"{source}/{folder}", "images": len(dataset),
                **finish_training(ctx, trainer, model, meta, logger)}

    return Stage(name, run, needs=(source,), depends_on=TRAIN_KEYS,
                 description=f"train {method.cfg.segnet.arch} on {source}/{folder} pseudo-masks")


def predict_val_stage(name: str = "predict_val", train_stage: str = "train_segnet") -> Stage:
    def run(ctx: StageContext) -> dict[str, Any]:
        s = ctx.cfg.segnet
        split = ctx.cfg.data.val_split
        dataset = build_dataset(ctx.cfg.data, split)
        predictor = Predictor.from_checkpoint(
            ctx.stage_dir(train_stage) / "model.pt", device=ctx.device, scales=s.test_scales,
            flip=s.test_flip, crf=s.crf, crf_params=crf_params(s.crf_preset), max_side=None,
            merge=s.test_merge,
        )
        index = {n: i for i, n in enumerate(dataset.names)}
        plain_dir, crf_dir = ctx.out_dir / "masks", ctx.out_dir / "masks_crf"
        last_dir = crf_dir if s.crf else plain_dir  # written last: its file marks a done item

        def work(item: str) -> None:
            image = dataset.load_image(index[item])
            probs = predictor.predict_probs(image)
            save_mask(plain_dir / f"{item}.png", predictor.mask_from_probs(image, probs, crf=False))
            if s.crf:
                save_mask(crf_dir / f"{item}.png",
                          predictor.mask_from_probs(image, probs, crf=True))

        done = per_image(dataset.names, lambda n: last_dir / f"{n}.png", work, desc=name)
        return {"split": split, "images": len(dataset), "computed": done,
                "scales": list(s.test_scales), "flip": s.test_flip, "merge": s.test_merge,
                "crf": s.crf_preset if s.crf else None}

    return Stage(name, run, needs=(train_stage,), depends_on=PREDICT_KEYS,
                 description="multi-scale + flip segmentation of val, with and without CRF")


def eval_val_stage(name: str = "eval_val", predict_stage: str = "predict_val") -> Stage:
    def run(ctx: StageContext) -> dict[str, Any]:
        from wsss.methods.base import _headline

        split = ctx.cfg.data.val_split
        dataset = build_dataset(ctx.cfg.data, split)
        e = ctx.cfg.eval
        results: dict[str, dict[str, Any]] = {}
        for key, folder in (("no_crf", "masks"), ("crf", "masks_crf")):
            pred_dir = ctx.stage_dir(predict_stage) / folder
            if key == "crf" and not pred_dir.is_dir():
                continue
            results[key] = evaluate_masks(pred_dir, dataset, absent=e.absent,
                                          contour=e.contour, desc=f"{name} {folder}")
            results[key]["split"] = split
        if dist.is_main():
            write_result(ctx.out_dir, results["no_crf"])
            if "crf" in results:
                write_result(ctx.out_dir, results["crf"], name="metrics_crf.json")
            write_text(ctx.out_dir / "per_class.md",
                       per_class_table(results, dataset.class_names) + "\n")
        summary = _headline(results["no_crf"])
        crf = results.get("crf")
        summary["miou_crf"] = crf["miou"] if crf else None
        if crf and "contour" in crf:
            summary["contour_f_crf"] = crf["contour"]["fscore"]
        return summary

    return Stage(name, run, needs=(predict_stage,), depends_on=("data.val_split", "eval"),
                 description="per-class IoU on val, with and without CRF",
                 ground_truth="data.val_split")


def per_class_table(results: dict[str, dict[str, Any]], class_names: list[str]) -> str:
    """Markdown table, one row per class (background first) and a final mean row, one column
    per result (`no_crf`, `crf`), IoU in percent."""
    keys = [k for k in ("no_crf", "crf") if k in results]
    titles = {"no_crf": "IoU", "crf": "IoU + CRF"}
    lines = ["| class | " + " | ".join(titles[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]

    def pct(value: Any) -> str:
        return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"

    for cls in class_names:
        lines.append(f"| {cls} | " + " | ".join(pct(results[k]["iou"].get(cls)) for k in keys)
                     + " |")
    lines.append("| **mean** | " + " | ".join(f"**{pct(results[k]['miou'])}**" for k in keys)
                 + " |")
    return "\n".join(lines)
