"""AuxSegNet (Xu et al., "Leveraging Auxiliary Tasks with Affinity Learning for Weakly Supervised
Semantic Segmentation", ICCV 2021, arXiv:2107.11787): one network for classification, saliency
and segmentation with task-specific non-local affinities fused into a cross-task affinity, trained
on image labels + off-the-shelf saliency over rounds of pseudo-label updates.

Follows `xulianuwa/AuxSegNet` (`network/AuxSegNet.py`, `step/train_AuxAff.py`, `step/gen_pgt.py`,
`infer_AuxAff.py`, `tool/imutils.py`); the math is in `wsss.ops.cross_task_affinity`, the
saliency input in `wsss.data.saliency`. Round 0's labels fuse the CAMs of a classifier trained by
the CAM baseline's stages with the saliency maps. See docs/methods/auxsegnet.md for the paper /
official code / wsss table.

Stages: data → train_cam → make_cam → eval_cam → labels_round0 → eval_labels_round0, then per
round s = 0..R−1: train_round{s} → [predict_round{s} → eval_round{s}] → labels_round{s+1} →
eval_labels_round{s+1}. The final segmentation network (segnet stages) trains on
labels_round{R}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.config import ConfigError, TrainConfig
from wsss.data import build_dataset
from wsss.data.saliency import (
    RESIZE_MODES,
    SCALE_PER,
    SaliencyAugment,
    SaliencyDataset,
    check_saliency_folder,
    load_saliency,
    resolve_saliency_dir,
    save_saliency,
)
from wsss.data.transforms import normalize_image
from wsss.engine import distributed as dist
from wsss.engine.checkpoint import load_checkpoint, load_model_state
from wsss.io import DataError, load_cams, save_mask
from wsss.methods import METHODS
from wsss.methods.base import Method, fit_model
from wsss.methods.cam_baseline import CamBaseline
from wsss.models.backbones import build_backbone
from wsss.models.cam_classifier import CamClassifier
from wsss.ops.cam import normalize_cams
from wsss.ops.cross_task_affinity import (
    auxsegnet_losses,
    embedded_gaussian_affinity,
    fuse_affinities,
    fuse_cam_saliency,
    propagate,
    saliency_crf,
)
from wsss.pipeline.stages import Stage, StageContext, per_image

__all__ = ["AuxSegNet", "AuxSegNetConfig", "AuxSegNetNet", "NonLocalAffinity"]

AFFINITY_MODES = ("cross", "task", "none")


def _round_train_defaults() -> TrainConfig:
    # auxsegnet.md §4: SGD (`PolyOptimizer_cls`), lr 7e-4 backbone / 7e-3 heads, poly 0.9, batch
    # 4, 15 epochs per round, scale U(0.7, 1.3), flip, crop 321, no jitter. The optimiser passes
    # its weight decay (1e-5) into SGD's momentum slot and sets no weight decay: effective
    # momentum 1e-5 (≈ 0 here) and no weight decay.
    return TrainConfig(epochs=15, batch_size=4, crop_size=321, resize_long=None,
                       scale_range=[0.7, 1.3], flip=True, color_jitter=None, optimizer="sgd",
                       lr=7e-4, head_lr_mult=10.0, weight_decay=0.0, momentum=0.0,
                       poly_power=0.9)


@dataclass
class AuxSegNetConfig:
    """AuxSegNet defaults (official code, auxsegnet.md; paper arXiv:2107.11787 §3-§4)."""

    name: str = "auxsegnet"
    # Off-the-shelf saliency maps (DSS in the paper), `<name>.png`; relative to data.root.
    saliency_dir: str = "SaliencyMaps"
    # Round-0 CAMs: a CAM classifier trained by the CAM baseline's stages on `train` (the
    # official repo starts from PSA ResNet-38 classifier CAMs made outside its code).
    detach_stages: int = 0
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    cam_flip: bool = True
    cam_eval_threshold: float = 0.15  # eval_cam only
    # Components (supplementary Table 3): multi_task = saliency + classification branches next
    # to segmentation (false: the single-task baseline); affinity = "cross" (task affinities
    # fused into the cross-task affinity that refines both tasks), "task" (each task refined by
    # its own affinity) or "none" (no non-local blocks, no refined outputs); num_rounds =
    # training rounds (1: no iterative learning; paper 4).
    multi_task: bool = True
    affinity: str = "cross"
    num_rounds: int = 4
    # The official fusion weights A_seg and A_sal element-wise, so rows of A_ct do not sum to
    # exactly one; true renormalises them (the paper's "affinity" reading).
    normalize_cross_affinity: bool = False
    # Network heads (`network/AuxSegNet.py`): 128-channel trunks, dilations 6 / 12 / 18.
    head_channels: int = 128
    head_dilations: list[int] = field(default_factory=lambda: [6, 12, 18])
    cls_dropout: float = 0.5
    freeze_first_conv: bool = True  # conv1a (ResNet-38) / conv1 + bn1 (ResNet), with weights
    # Initial weights: round 0 from the trained CAM network's backbone and classifier ("cam":
    # the official `--init_weights` are loaded non-strictly, and the ResNet-38 classification
    # weights the README links fill the backbone and fc8) or from `model.pretrained` alone
    # ("pretrained"); round s > 0 from round s − 1 ("previous", auxsegnet.md §1) or afresh like
    # round 0 ("initial", what `train_AuxAff.py` does when run alone).
    round0_init: str = "cam"
    round_init: str = "previous"
    round_train: TrainConfig = field(default_factory=_round_train_defaults)
    # Losses (`train_AuxAff.py`): L = cls + sal (initial + refined) + seg (initial + refined).
    cls_loss_weight: float = 1.0
    sal_loss_weight: float = 1.0
    seg_loss_weight: float = 1.0
    saliency_label_threshold: float = 0.5  # saliency labels binarised after augmentation
    # Label of crop padding: 0 (background, the official `exutils.py crop`) or 255 (ignored).
    pad_label: int = 0
    # Round training rescale: one factor per batch (official `get_data_from_chunk`) or per
    # image; resized like `cv2.resize` of the float image (official) or with PIL.
    scale_per: str = "batch"
    resize: str = "cv2"
    # Label update (`gen_pgt.py`, `fusion_cam`).
    cam_threshold: float = 0.2
    saliency_threshold: float = 0.06
    saliency_crf: bool = True  # CRF-smooth the fused saliency (`crf_for_sal`)
    saliency_crf_tau: float = 1.05
    # Test (`infer_AuxAff.py`): single scale, no flip, optional CRF (preset "auxsegnet").
    test_crf: bool = False
    predict_every_round: bool = True  # predict + score val after every round (else the last)


# Network ---------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int, *, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                     bias=bias)
    nn.init.xavier_uniform_(conv.weight)  # official: Xavier-uniform weights, default biases
    return conv


class NonLocalAffinity(nn.Module):
    """The used part of the official `NLBlockND` (embedded Gaussian): θ, φ 1×1 convolutions
    with bias and the row-softmax affinity (`embedded_gaussian_affinity`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, h, w) → (B, h·w, h·w), rows summing to one."""
        return embedded_gaussian_affinity(self.theta(x), self.phi(x))


class AuxSegNetNet(nn.Module):
    """Shared backbone with classification, saliency and segmentation heads (`SegNet`).

    Args:
        backbone: returns four maps; the last (D channels, stride s) feeds every head.
        num_classes: C foreground classes; segmentation has C + 1 outputs, background first.
        channels: width of the saliency / segmentation trunks (official 128).
        dilations: dilations of conv1, conv2, conv3 of each trunk (official 6, 12, 18).
        multi_task: build the classification and saliency heads (false: segmentation only).
        affinity: "cross", "task" or "none" (see `AuxSegNetConfig`).
        cls_dropout: Dropout2d before the classifier's global average pooling.
        normalize_cross_affinity: renormalise the rows of A_ct (see `fuse_affinities`).

    Module names follow the official network (fc8, seg_conv*, sal_conv*, seg_att, ...), so
    `param_groups` can apply its name rule.
    """

    def __init__(self, *, backbone: nn.Module, num_classes: int, channels: int = 128,
                 dilations: tuple[int, int, int] = (6, 12, 18), multi_task: bool = True,
                 affinity: str = "cross", cls_dropout: float = 0.5,
                 normalize_cross_affinity: bool = False) -> None:
        super().__init__()
        if affinity not in AFFINITY_MODES:
            raise ValueError(f"affinity must be one of {AFFINITY_MODES}, got {affinity!r}")
        if affinity == "cross" and not multi_task:
            raise ValueError("the cross-task affinity needs the saliency task (multi_task)")
        if len(dilations) != 3:
            raise ValueError(f"dilations must list 3 values, got {list(dilations)}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.multi_task = multi_task
        self.affinity_mode = affinity
        self.normalize_cross_affinity = normalize_cross_affinity
        d1, d2, d3 = dilations
        width = backbone.out_channels[-1]
        tasks = {"seg": num_classes + 1}
        if multi_task:
            tasks["sal"] = 1
            self.dropout7 = nn.Dropout2d(cls_dropout)
            self.fc8 = _conv(width, num_classes, 1, bias=False)
        for task, outputs in tasks.items():
            self.add_module(f"{task}_conv1", _conv(width, channels, 3, dilation=d1))
            self.add_module(f"{task}_conv2", _conv(channels, channels, 3, dilation=d2))
            self.add_module(f"{task}_conv3", _conv(channels, channels, 3, dilation=d3))
            self.add_module(f"{task}_conv4", _conv(channels, outputs, 1, bias=False))
            if affinity != "none":
                self.add_module(f"{task}_att", NonLocalAffinity(channels))
                self.add_module(f"{task}_g", nn.Conv2d(channels, channels, 1))
                self.add_module(f"{task}_W", nn.Conv2d(channels, channels, 1))
        if affinity == "cross":
            self.cross_att = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.ReLU(),
                                           nn.Conv2d(2, 2, 1))
        self.tasks = tuple(tasks)

    def _branch(self, task: str, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Trunk → (non-local refinement) → initial logits; returns (logits, task affinity)."""
        feats = F.relu(getattr(self, f"{task}_conv1")(x))
        feats = F.relu(getattr(self, f"{task}_conv2")(feats))
        affinity = None
        if self.affinity_mode != "none":
            affinity = getattr(self, f"{task}_att")(feats)
            g = getattr(self, f"{task}_g")(feats)
            feats = feats + getattr(self, f"{task}_W")(propagate(affinity, g))
        feats = F.relu(getattr(self, f"{task}_conv3")(feats))
        return getattr(self, f"{task}_conv4")(feats), affinity

    def cams(self, x: Tensor) -> Tensor:
        """Backbone features (B, D, h, w) → raw CAMs conv(x, fc8) (B, C, h, w), no ReLU."""
        return F.conv2d(x, self.fc8.weight)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) normalised → dict (h, w = backbone stride size):

        `seg_init` (B, C+1, h, w) logits; with multi_task `cls` (B, C) logits, `cams`
        (B, C, h, w) raw CAMs and `sal_init` (B, 1, h, w) logit; with an affinity
        `seg_refined`, `sal_refined` (A · initial logits) and `affinity` (B, h·w, h·w) — the
        cross-task affinity, or the segmentation affinity when affinity = "task".
        """
        x = self.backbone(images)[-1]
        out: dict[str, Tensor] = {}
        if self.multi_task:
            out["cls"] = self.fc8(self.dropout7(x).mean(dim=(2, 3), keepdim=True)).flatten(1)
            out["cams"] = self.cams(x)
        logits, affinities = {}, {}
        for task in self.tasks:
            logits[task], affinities[task] = self._branch(task, x)
            out[f"{task}_init"] = logits[task]
        if self.affinity_mode == "cross":
            stacked = torch.stack([affinities["seg"], affinities["sal"]], dim=1)  # (B, 2, N, N)
            fused = fuse_affinities(stacked, self.cross_att(stacked),
                                    normalize=self.normalize_cross_affinity)
            refiners = {task: fused for task in self.tasks}
            out["affinity"] = fused
        elif self.affinity_mode == "task":
            refiners = affinities
            out["affinity"] = affinities["seg"]
        else:
            refiners = {}
        for task, affinity in refiners.items():
            out[f"{task}_refined"] = propagate(affinity, logits[task])
        return out


# Per-image inference (label update, CAMs, test) ---------------------------------------------------


def _forward_image(model: nn.Module, image: np.ndarray) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    return model(normalize_image(image)[None].to(device))


def _refined(out: dict[str, Tensor], task: str) -> Tensor:
    return out.get(f"{task}_refined", out[f"{task}_init"])


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


def refined_cams(out: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
    """The label update's CAMs (`gen_pgt.py`): ReLU, divide by each map's max + 1e-5,
    propagate with the (cross-task) affinity at the feature stride, upsample (bilinear).

    Without the classification head (single-task ablation) the foreground channels of the
    refined segmentation softmax stand in for the CAMs.

    The maps are not clamped (`gen_pgt.py:55-60`): with the official cross-task affinity, whose
    rows need not sum to one, values may exceed 1, and clamping would tie the classes there
    and change the argmax of `fuse_cam_saliency`.

    Returns:
        (B, C, *size), non-negative (at most 1 when the affinity's rows sum to one).
    """
    if "cams" in out:
        cams = normalize_cams(out["cams"].float(), mode="max", eps=1e-5)
        if "affinity" in out:
            cams = propagate(out["affinity"].float(), cams)
    else:
        cams = torch.softmax(_refined(out, "seg").float(), dim=1)[:, 1:]
    return _upsample(cams, size)


# Method ----------------------------------------------------------------------------------------


def _first_conv_params(backbone: nn.Module) -> list[nn.Parameter]:
    """conv1a of ResNet-38, conv1 + bn1 of a torchvision ResNet (what the official code and IRN
    keep frozen), nothing for other backbones."""
    if hasattr(backbone, "conv1a"):
        return list(backbone.conv1a.parameters())
    if hasattr(backbone, "stem"):
        return list(backbone.stem[0].parameters()) + list(backbone.stem[1].parameters())
    return []


class _InitialCams(CamBaseline):
    """The CAM baseline's classifier for round 0, with first-layer freezing that also works for
    ResNet-38 (the CAM baseline itself assumes a torchvision ResNet stem)."""

    def build_model(self, num_classes: int) -> nn.Module:
        m = self.cfg.model
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if m.frozen_bn:
            for p in _first_conv_params(backbone):
                p.requires_grad_(False)
        return CamClassifier(backbone=backbone, num_classes=num_classes,
                             detach_stages=self.mcfg.detach_stages)


@METHODS.register("auxsegnet")
class AuxSegNet(Method):
    """AuxSegNet: CAM baseline stages for round 0, then rounds of training and label updates."""

    name = "auxsegnet"
    config_cls = AuxSegNetConfig
    train_keys = ("method.name", "method.multi_task", "method.affinity",
                  "method.normalize_cross_affinity", "method.head_channels",
                  "method.head_dilations", "method.cls_dropout", "method.freeze_first_conv",
                  "method.round0_init", "method.round_init", "method.round_train",
                  "method.cls_loss_weight", "method.sal_loss_weight", "method.seg_loss_weight",
                  "method.saliency_label_threshold", "method.pad_label", "method.scale_per",
                  "method.resize")
    label_keys = ("method.cam_threshold", "method.saliency_threshold", "method.saliency_crf",
                  "method.saliency_crf_tau", "method.saliency_dir")
    cam_keys = ()

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        c = self.mcfg
        if c.affinity not in AFFINITY_MODES:
            raise ConfigError(f"config key 'method.affinity' must be one of {AFFINITY_MODES}, "
                              f"got {c.affinity!r}")
        if c.affinity == "cross" and not c.multi_task:
            raise ConfigError("config key 'method.affinity': 'cross' needs method.multi_task="
                              "true (the saliency task); use 'task' or 'none'")
        if c.num_rounds < 1:
            raise ConfigError(f"config key 'method.num_rounds' must be >= 1, got {c.num_rounds}")
        if c.round0_init not in ("pretrained", "cam"):
            raise ConfigError("config key 'method.round0_init' must be 'pretrained' or 'cam', "
                              f"got {c.round0_init!r}")
        if c.round_init not in ("previous", "initial"):
            raise ConfigError("config key 'method.round_init' must be 'previous' or 'initial', "
                              f"got {c.round_init!r}")
        if c.scale_per not in SCALE_PER:
            raise ConfigError(f"config key 'method.scale_per' must be one of {SCALE_PER}, got "
                              f"{c.scale_per!r}")
        if c.resize not in RESIZE_MODES:
            raise ConfigError(f"config key 'method.resize' must be one of {RESIZE_MODES}, got "
                              f"{c.resize!r}")
        if c.pad_label not in (0, 255):
            raise ConfigError(f"config key 'method.pad_label' must be 0 or 255, got {c.pad_label}")
        if len(c.head_dilations) != 3:
            raise ConfigError("config key 'method.head_dilations' must list 3 dilations, got "
                              f"{list(c.head_dilations)}")

    @property
    def pseudo_mask_stage(self) -> str:  # type: ignore[override]
        """The final labels: those made by the last round's network."""
        return f"labels_round{self.mcfg.num_rounds}"

    # Hooks --------------------------------------------------------------------------------------
    def build_model(self, num_classes: int) -> nn.Module:
        m, c = self.cfg.model, self.mcfg
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if c.freeze_first_conv and m.pretrained not in ("", "none"):
            for p in _first_conv_params(backbone):
                p.requires_grad_(False)
        return AuxSegNetNet(backbone=backbone, num_classes=num_classes,
                            channels=c.head_channels, dilations=tuple(c.head_dilations),
                            multi_task=c.multi_task, affinity=c.affinity,
                            cls_dropout=c.cls_dropout,
                            normalize_cross_affinity=c.normalize_cross_affinity)

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """Official `get_10x_lr_params`: parameters named with "seg", "sal" or "fc8" at
        lr × head_lr_mult; the backbone **and the cross-task fusion convs** (`cross_att`) at lr."""
        net = model.module if hasattr(model, "module") else model
        mult = self.mcfg.round_train.head_lr_mult
        fast, slow = [], []
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            is_head = not name.startswith("backbone.") and any(
                key in name for key in ("seg", "sal", "fc8"))
            (fast if is_head else slow).append(p)
        return [{"params": slow, "lr": base_lr}, {"params": fast, "lr": base_lr * mult}]

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        c = self.mcfg
        out = model(batch["image"])
        if c.multi_task and "saliency" not in batch:
            raise KeyError("auxsegnet needs a 'saliency' (B, H, W) entry in each batch "
                           "(wsss.data.saliency.SaliencyDataset)")
        saliency = batch.get("saliency")
        if saliency is None:
            saliency = torch.zeros(batch["mask"].shape, device=batch["mask"].device)
        terms = auxsegnet_losses(out, labels=batch["labels"].float(), masks=batch["mask"],
                                 saliency=saliency,
                                 saliency_label_threshold=c.saliency_label_threshold)
        weights = {"cls": c.cls_loss_weight, "sal": c.sal_loss_weight, "seg": c.seg_loss_weight}
        return {k: weights[k.split("_")[0]] * v for k, v in terms.items()}

    def infer_cams(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Affinity-refined CAMs of the image's classes at full resolution (`refined_cams`)."""
        out = _forward_image(model, image)
        cams = refined_cams(out, image.shape[:2])[0]
        present = np.flatnonzero(np.asarray(labels) > 0)
        cams = cams[torch.as_tensor(present, device=cams.device)]
        return cams.cpu().numpy().astype(np.float32), present.astype(np.int64) + 1

    def update_labels(self, model: nn.Module, image: np.ndarray, saliency: np.ndarray,
                      labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image's label update (`gen_pgt.py`).

        New saliency = CRF((sigmoid(refined saliency) + original saliency) / 2) (without the
        saliency branch: CRF(original)); new labels = `fuse_cam_saliency(refined_cams, new
        saliency)`.

        Args:
            image: uint8 (H, W, 3).
            saliency: the original (off-the-shelf) map, float32 (H, W) in [0, 1].
            labels: (C,) multi-hot.

        Returns:
            mask uint8 (H, W) in {0..C, 255}, new saliency float32 (H, W) in [0, 1].
        """
        c = self.mcfg
        size = image.shape[:2]
        out = _forward_image(model, image)
        cams = refined_cams(out, size)
        fused = saliency
        if "sal_init" in out:
            predicted = torch.sigmoid(_upsample(_refined(out, "sal"), size))[0, 0]
            fused = (predicted.cpu().numpy() + saliency) / 2.0
        if c.saliency_crf:
            fused = saliency_crf(image, fused, tau=c.saliency_crf_tau)
        fused = np.clip(fused, 0.0, 1.0).astype(np.float32)
        label_t = torch.as_tensor(labels, dtype=torch.float32, device=cams.device)[None]
        sal_t = torch.from_numpy(fused).to(cams.device)[None]
        mask = fuse_cam_saliency(cams, sal_t, label_t, cam_threshold=c.cam_threshold,
                                 saliency_threshold=c.saliency_threshold)[0]
        return mask.cpu().numpy().astype(np.uint8), fused

    def predict(self, model: nn.Module, image: np.ndarray) -> np.ndarray:
        """Test probabilities (`infer_AuxAff.py`): softmax of the refined segmentation logits
        upsampled to the image, single scale, no flip → float32 (C+1, H, W)."""
        out = _forward_image(model, image)
        probs = torch.softmax(_upsample(_refined(out, "seg"), image.shape[:2]), dim=1)[0]
        return probs.cpu().numpy().astype(np.float32)

    # Stages -------------------------------------------------------------------------------------
    def saliency_folder(self, cfg: Any) -> Any:
        return resolve_saliency_dir(cfg.data.root, cfg.method.saliency_dir)

    def data_stage(self) -> Stage:
        """The shared data stage, then the saliency maps of the infer split checked up front."""
        base = super().data_stage()

        def run(ctx: StageContext) -> dict[str, Any]:
            summary = base.run(ctx) or {}
            # Every round reads the original maps (round-0 labels, each label update).
            dataset = self.dataset(ctx.cfg.data.infer_split)
            folder = self.saliency_folder(ctx.cfg)
            checked = check_saliency_folder(folder, dataset) if dist.is_main() else 0
            return {**summary, "saliency_dir": str(folder),
                    "saliency_maps": dist.broadcast_object(checked)}

        return Stage(base.name, run, needs=base.needs,
                     depends_on=base.depends_on + ("method.saliency_dir",),
                     description=base.description + "; check the saliency maps")

    def _infer_dataset(self, ctx: StageContext) -> Any:
        return build_dataset(ctx.cfg.data, ctx.cfg.data.infer_split)

    def initial_labels_stage(self, name: str = "labels_round0", cam_stage: str = "make_cam"
                             ) -> Stage:
        """Round-0 labels: `fuse_cam_saliency` of the CAM baseline's CAMs and the original
        saliency (thresholds 0.2 / 0.06, no CRF, auxsegnet.md §5.2)."""

        def run(ctx: StageContext) -> dict[str, Any]:
            c = ctx.cfg.method
            dataset = self._infer_dataset(ctx)
            folder = self.saliency_folder(ctx.cfg)
            cam_dir, mask_dir = ctx.stage_dir(cam_stage) / "cams", ctx.out_dir / "masks"
            index = {n: i for i, n in enumerate(dataset.names)}

            def work(item: str) -> None:
                i = index[item]
                path = cam_dir / f"{item}.npz"
                if not path.is_file():
                    raise DataError(f"CAM file missing: {path}")
                cams, keys = load_cams(path)
                height, width = cams.shape[1:]
                full = np.zeros((dataset.num_classes, height, width), dtype=np.float32)
                fg = keys > 0
                full[keys[fg] - 1] = cams[fg]
                sal = load_saliency(folder / f"{item}.png", (height, width))
                mask = fuse_cam_saliency(torch.from_numpy(full)[None],
                                         torch.from_numpy(sal)[None],
                                         torch.from_numpy(dataset.label_vector(i))[None],
                                         cam_threshold=c.cam_threshold,
                                         saliency_threshold=c.saliency_threshold)[0]
                save_mask(mask_dir / f"{item}.png", mask.numpy().astype(np.uint8))

            done = per_image(dataset.names, lambda n: mask_dir / f"{n}.png", work, desc=name)
            return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done}

        return Stage(name, run, needs=(cam_stage,),
                     depends_on=("data.infer_split", "data.root", "method.cam_threshold",
                                 "method.saliency_threshold", "method.saliency_dir"),
                     description="round-0 labels: CAMs fused with the saliency maps")

    def round_dataset(self, ctx: StageContext, round_index: int) -> SaliencyDataset:
        """The infer split's images with round `round_index`'s labels and saliency, augmented."""
        t = ctx.cfg.method.round_train
        labels_dir = ctx.stage_dir(f"labels_round{round_index}")
        saliency_dir = (self.saliency_folder(ctx.cfg) if round_index == 0
                        else labels_dir / "saliency")
        augment = SaliencyAugment(
            crop_size=t.crop_size, scale_range=t.scale_range, resize_long=t.resize_long,
            flip=t.flip, color_jitter=t.color_jitter, mask_fill=ctx.cfg.method.pad_label,
            resize=ctx.cfg.method.resize)
        return SaliencyDataset(self._infer_dataset(ctx), saliency_dir,
                               mask_dir=labels_dir / "masks", transform=augment,
                               scale_per=ctx.cfg.method.scale_per)

    def _init_stage(self, round_index: int) -> str | None:
        """The stage whose model.pt initialises round `round_index` (None: model.pretrained)."""
        c = self.mcfg
        if round_index > 0 and c.round_init == "previous":
            return f"train_round{round_index - 1}"
        return "train_cam" if c.round0_init == "cam" else None

    def train_round_stage(self, round_index: int) -> Stage:
        name = f"train_round{round_index}"
        init_stage = self._init_stage(round_index)

        def run(ctx: StageContext) -> dict[str, Any]:
            t = ctx.cfg.method.round_train
            dataset = self.round_dataset(ctx, round_index)
            model = self.build_model(dataset.num_classes)
            if init_stage is not None:
                self._load_init(model, ctx.stage_dir(init_stage) / "model.pt",
                                from_cam=init_stage == "train_cam")
            summary = fit_model(ctx, model=model, step_fn=self.training_step,
                                param_groups=self.param_groups(model, t.lr), dataset=dataset,
                                train_cfg=t, meta=self.checkpoint_meta(dataset))
            return {"round": round_index, "init": init_stage or "model.pretrained", **summary}

        needs = (f"labels_round{round_index}",) + ((init_stage,) if init_stage else ())
        keys = ("data.root", "data.infer_split", "data.image_dir", "data.labels_from",
                "data.labels_file", "model", "pipeline.seed") + self.train_keys
        if round_index == 0:
            keys += ("method.saliency_dir",)
        return Stage(name, run, needs=needs, depends_on=keys,
                     description=f"train AuxSegNet, round {round_index}")

    @staticmethod
    def _load_init(model: nn.Module, path: Any, *, from_cam: bool) -> None:
        state = load_checkpoint(path, map_location="cpu")["model"]
        if from_cam:  # CamClassifier: backbone.* and the classifier (= fc8, same shape)
            mapped = {k: v for k, v in state.items() if k.startswith("backbone.")}
            if hasattr(model, "fc8") and "classifier.weight" in state:
                mapped["fc8.weight"] = state["classifier.weight"]
            own = model.state_dict()
            wrong = [k for k in mapped if k not in own or own[k].shape != mapped[k].shape]
            if wrong:
                raise DataError(f"{path}: CAM network weights do not fit AuxSegNet ({wrong[:5]}); "
                                "method.round0_init=cam needs the same model.backbone")
            model.load_state_dict(mapped, strict=False)
        else:
            load_model_state(model, state, str(path))

    def labels_round_stage(self, round_index: int) -> Stage:
        """Labels for round `round_index` (≥ 1) from train_round{round_index − 1}'s network."""
        name, source = f"labels_round{round_index}", f"train_round{round_index - 1}"

        def run(ctx: StageContext) -> dict[str, Any]:
            dataset = self._infer_dataset(ctx)
            model = self.load_trained(ctx.stage_dir(source), dataset.num_classes, ctx.device)
            folder = self.saliency_folder(ctx.cfg)
            mask_dir, sal_dir = ctx.out_dir / "masks", ctx.out_dir / "saliency"
            index = {n: i for i, n in enumerate(dataset.names)}

            def work(item: str) -> None:
                i = index[item]
                image = dataset.load_image(i)
                original = load_saliency(folder / f"{item}.png", image.shape[:2])
                with torch.inference_mode():
                    mask, saliency = self.update_labels(model, image, original,
                                                        dataset.label_vector(i))
                save_saliency(sal_dir / f"{item}.png", saliency)
                save_mask(mask_dir / f"{item}.png", mask)  # written last: marks the item done

            done = per_image(dataset.names, lambda n: mask_dir / f"{n}.png", work, desc=name)
            return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done,
                    "round": round_index}

        return Stage(name, run, needs=(source,),
                     depends_on=("data.infer_split", "data.root") + self.label_keys,
                     description=f"label update from round {round_index - 1}: refined CAMs + "
                                 "CRF-smoothed fused saliency")

    def predict_round_stage(self, round_index: int) -> Stage:
        name, source = f"predict_round{round_index}", f"train_round{round_index}"

        def run(ctx: StageContext) -> dict[str, Any]:
            from wsss.ops.crf import CRF_PRESETS, dense_crf

            dataset = build_dataset(ctx.cfg.data, ctx.cfg.data.val_split)
            model = self.load_trained(ctx.stage_dir(source), dataset.num_classes, ctx.device)
            index = {n: i for i, n in enumerate(dataset.names)}
            use_crf = ctx.cfg.method.test_crf
            out_dir = ctx.out_dir

            def work(item: str) -> None:
                image = dataset.load_image(index[item])
                with torch.inference_mode():
                    probs = self.predict(model, image)
                if use_crf:
                    post = dense_crf(image, probs, **CRF_PRESETS["auxsegnet"])
                    save_mask(out_dir / "crf" / f"{item}.png", post.argmax(0).astype(np.uint8))
                save_mask(out_dir / "masks" / f"{item}.png", probs.argmax(0).astype(np.uint8))

            done = per_image(dataset.names, lambda n: out_dir / "masks" / f"{n}.png", work,
                             desc=name)
            return {"split": ctx.cfg.data.val_split, "images": len(dataset), "computed": done}

        return Stage(name, run, needs=(source,),
                     depends_on=("data.val_split", "data.root", "method.test_crf"),
                     description=f"segment {self.cfg.data.val_split} with round {round_index}'s "
                                 "network (refined logits, single scale)")

    def stages(self) -> list[Stage]:
        c = self.mcfg
        cam = _InitialCams(self.cfg)
        stages = [
            self.data_stage(),
            cam.train_stage("train_cam"),
            cam.make_cam_stage("make_cam", "train_cam"),
            cam.eval_cam_stage("eval_cam", "make_cam"),
            self.initial_labels_stage("labels_round0", "make_cam"),
            self.eval_masks_stage("eval_labels_round0", "labels_round0"),
        ]
        for s in range(c.num_rounds):
            stages.append(self.train_round_stage(s))
            if c.predict_every_round or s == c.num_rounds - 1:
                stages.append(self.predict_round_stage(s))
                stages.append(self.eval_masks_stage(f"eval_round{s}", f"predict_round{s}",
                                                    split_key="val_split"))
                if c.test_crf:
                    stages.append(self.eval_masks_stage(f"eval_round{s}_crf",
                                                        f"predict_round{s}",
                                                        split_key="val_split", subdir="crf"))
            stages.append(self.labels_round_stage(s + 1))
            stages.append(self.eval_masks_stage(f"eval_labels_round{s + 1}",
                                                f"labels_round{s + 1}"))
        return stages

