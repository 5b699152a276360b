"""1-Stage (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels",
arXiv:2005.08104): one segmentation network trained once from image labels.

DeepLabv3+ head with a Stochastic Gate and Global Cue Injection, a constant background logit,
nGWP class scores with the focal mask penalty, and self-supervision from PAMR-refined pseudo
ground truth after a classification-only warm-up. Follows `visinf/1-stage-wseg`
(`models/stage_net.py`, `models/mods/{aspp,gci,sg}.py`, `infer_val.py`,
`utils/inference_tools.py`); the code's details win over the paper (single_stage.md §8).
docs/methods/one_stage.md has the paper / official code / wsss table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.io import save_cams, save_mask
from wsss.methods import METHODS
from wsss.methods.base import Method
from wsss.models.backbones import FrozenStatsBatchNorm2d, build_backbone
from wsss.ops.multiscale import finalize_probs, merge_views
from wsss.ops.ngwp import balanced_seg_loss, focal_mask_penalty, ngwp_scores, pseudo_gt_masks
from wsss.ops.pamr import pamr
from wsss.pipeline.stages import Stage, StageContext, per_image

__all__ = [
    "ASPP",
    "GlobalCueInjection",
    "OneStage",
    "OneStageConfig",
    "OneStageNet",
    "StochasticGate",
    "adin",
    "stochastic_gate",
]


@dataclass
class OneStageConfig:
    """1-Stage defaults (paper §4 and the official `configs/voc_resnet38.yaml`)."""

    name: str = "one_stage"
    # Stochastic Gate: "stochastic" (paper), "deterministic" (r ≡ ψ, Table 1c) or "none" (deep
    # features only). ψ = 0.3 is the final model; Table 1 ablates 0.5.
    gate: str = "stochastic"
    psi: float = 0.3
    gci: bool = True  # Global Cue Injection into the shallow features
    aspp_dilations: list[int] = field(default_factory=lambda: [12, 24, 36])
    head_channels: int = 256  # ASPP / decoder / GCI width (paper 256; the CPU preset uses less)
    focal: bool = True  # add the focal mask penalty to the nGWP scores
    focal_p: float = 3.0
    focal_lambda: float = 0.01
    pamr: bool = True  # refine the masks with PAMR before taking the pseudo ground truth
    pamr_iter: int = 10
    pamr_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    pamr_kernel: str = "code"  # code: −|ΔI| / (0.1·σ); paper: −|ΔI| / σ²
    fg_cutoff: float = 0.6  # pseudo GT: fraction of each class's maximum
    bg_cutoff: float = 0.7
    cutoff_floor: float = 0.2  # code only: thresholds never go below 0.2
    seg_weight: float = 1.0  # `MASK_LOSS_BCE`
    pretrain_epochs: int = 5  # classification only for these first epochs
    freeze_pretrained: bool = True  # freeze the first layers when loading pretrained weights
    bias_lr_mult: float = 2.0  # code: biases train at 2× their group's lr, without weight decay
    test_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    test_flip: bool = True
    # Every test view is zero-padded (centred) to this (height, width) grid before the network,
    # so nGWP, the focal penalty, the class scores and the FP cut see the padded grid (official
    # `TEST.PAD_SIZE`: 1024 × 1024 for ResNet-38, 768 × 768 for the appendix-F backbones, set
    # in the VOC presets). None: each view runs at its own size (cheaper; synthetic preset).
    test_pad_size: list[int] | None = None
    bg_power: float = 3.0  # test-time background power (`BG_POW`)
    fp_cut: float = 0.1  # classes kept at test time: max over views of sigmoid(score) > fp_cut
    # Official `USE_GT_LABELS`: its test output keeps the image labels' classes. `masks/` always
    # does (the pseudo-mask protocol); when false, `masks_predicted/` (classes above fp_cut,
    # the official ResNet-38 test output) is written as well.
    use_gt_labels: bool = False
    crf: bool = True  # also write dense-CRF masks (CRF_PRESETS["psa"])
    cam_eval_threshold: float = 0.0  # eval_cam on the clean score maps: 0 = plain argmax


# Network --------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int = 1, *, dilation: int = 1, bias: bool = False
          ) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                     bias=bias)
    nn.init.kaiming_normal_(conv.weight)
    return conv


def _bn(channels: int, *, frozen_stats: bool = False, affine: bool = True) -> nn.BatchNorm2d:
    bn = (FrozenStatsBatchNorm2d if frozen_stats else nn.BatchNorm2d)(channels, affine=affine)
    if affine:
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
    return bn


class ASPP(nn.Module):
    """DeepLabv3 ASPP (`visinf/1-stage-wseg: models/mods/aspp.py`, output-stride-8 rates).

    Branches 1x1 and 3x3 at each dilation plus image pooling, each conv → BN → ReLU, concatenated
    and fused by 1x1 conv → BN → ReLU → Dropout(0.5). As in the code, the BNs keep their initial
    statistics (mean 0, variance 1) forever, so they act as learnable per-channel affines.
    """

    def __init__(self, in_channels: int, *, out_channels: int = 256,
                 dilations: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()

        def branch(kernel: int, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(_conv(in_channels, out_channels, kernel, dilation=dilation),
                                 _bn(out_channels, frozen_stats=True), nn.ReLU())

        self.branches = nn.ModuleList([branch(1)] + [branch(3, d) for d in dilations])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv(in_channels, out_channels),
                                  _bn(out_channels, frozen_stats=True), nn.ReLU())
        self.fuse = nn.Sequential(_conv(out_channels * (len(dilations) + 2), out_channels),
                                  _bn(out_channels, frozen_stats=True), nn.ReLU(),
                                  nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, h, w) → (B, out_channels, h, w)."""
        outs = [b(x) for b in self.branches]
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear",
                               align_corners=True)
        return self.fuse(torch.cat(outs + [pooled], dim=1))


class GlobalCueInjection(nn.Module):
    """Shallow features x^(s) with global cues from the deep ones (`models/mods/gci.py`).

    γ, β = split(global max pool(ReLU(BN(conv1x1(deep))))); x̂ = BN_noaffine(conv1x1(shallow));
    x^(s) = ReLU(BN(conv1x1(ReLU(x̂·(γ + 1) + β)))). With `inject=False` (Table 1c "w/o GCI")
    the AdIN step is skipped: x^(s) = ReLU(BN(conv1x1(ReLU(x̂)))).
    """

    def __init__(self, shallow_channels: int, channels: int = 256, *, inject: bool = True
                 ) -> None:
        super().__init__()
        self.inject = inject
        if inject:
            self.fc_deep = nn.Sequential(_conv(channels, 2 * channels), _bn(2 * channels),
                                         nn.ReLU())
        self.fc_skip = nn.Sequential(_conv(shallow_channels, channels),
                                     _bn(channels, affine=False))
        self.fc_cls = nn.Sequential(_conv(channels, channels), _bn(channels), nn.ReLU())

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        """shallow (B, S, h, w), deep (B, W, h, w) → (B, W, h, w), W = `channels`."""
        x = self.fc_skip(shallow)
        if self.inject:
            x = adin(x, self.fc_deep(deep).flatten(2).amax(-1))
        return self.fc_cls(F.relu(x))


def adin(x: Tensor, cues: Tensor) -> Tensor:
    """GCI's adaptive instance step (`models/mods/gci.py GCI._adin_conv`): x·(γ + 1) + β.

    Args:
        x: (B, C, h, w) normalised shallow features.
        cues: (B, 2C) global cues, γ = the first C, β = the last C.

    Returns:
        (B, C, h, w).
    """
    channels = x.shape[1]
    if cues.shape[1] != 2 * channels:
        raise ValueError(f"cues must have 2 × {channels} channels, got {cues.shape[1]}")
    gamma, beta = cues[:, :channels, None, None], cues[:, channels:, None, None]
    return x * (gamma + 1.0) + beta


def stochastic_gate(deep: Tensor, shallow: Tensor, *, psi: float, training: bool,
                    generator: torch.Generator | None = None) -> Tensor:
    """Stochastic Gate (paper eq. 9-10, `models/mods/sg.py`).

    Training: r ~ Bernoulli(ψ) per element, x = (1 − r)·(x^(d) − ψ·x^(s)) / (1 − ψ) + r·x^(s),
    so E[x] = x^(d). Inference: x = (1 − ψ)·x^(d) + ψ·x^(s).

    Args:
        deep, shallow: (B, C, h, w) features of equal shape.
        psi: mixing rate ψ in [0, 1).

    Returns:
        (B, C, h, w).
    """
    if not 0.0 <= psi < 1.0:
        raise ValueError(f"psi must lie in [0, 1), got {psi}")
    if not training:
        return (1.0 - psi) * deep + psi * shallow
    r = torch.bernoulli(torch.full_like(deep, psi), generator=generator)
    return (1.0 - r) * (deep - psi * shallow) / (1.0 - psi) + r * shallow


class StochasticGate(nn.Module):
    """`stochastic_gate` with ψ fixed; `deterministic` uses the inference mix in training too."""

    def __init__(self, psi: float, *, deterministic: bool = False) -> None:
        super().__init__()
        self.psi = psi
        self.deterministic = deterministic

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        return stochastic_gate(deep, shallow, psi=self.psi,
                               training=self.training and not self.deterministic)


class OneStageNet(nn.Module):
    """Backbone + DeepLabv3+ head with the Stochastic Gate (`SoftMaxAE`).

    Uses the backbone's first map (stride 4, `conv3`) as the skip input and its last map
    (stride 8 or 16, `conv6`) as the deep input.

    Args:
        backbone: returns four maps and exposes `out_channels`.
        num_classes: C foreground classes; the output has C+1 channels, background first.
        gate: "stochastic", "deterministic" or "none".
        channels: width of ASPP, decoder and GCI (256 in the paper).
        focal_p, focal_lambda: focal mask penalty; `focal=False` leaves it out.
    """

    def __init__(self, *, backbone: nn.Module, num_classes: int, gate: str = "stochastic",
                 psi: float = 0.3, gci: bool = True, aspp_dilations: Sequence[int] = (12, 24, 36),
                 channels: int = 256, focal: bool = True, focal_p: float = 3.0,
                 focal_lambda: float = 0.01) -> None:
        super().__init__()
        if gate not in ("stochastic", "deterministic", "none"):
            raise ValueError(f"gate must be stochastic, deterministic or none, got {gate!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.focal, self.focal_p, self.focal_lambda = focal, focal_p, focal_lambda
        shallow, deep = backbone.out_channels[0], backbone.out_channels[-1]
        width = channels
        self.aspp = ASPP(deep, out_channels=width, dilations=aspp_dilations)
        self.fc8_skip = nn.Sequential(_conv(shallow, 48), _bn(48), nn.ReLU())
        self.fc8_x = nn.Sequential(_conv(width + 48, width, 3), _bn(width), nn.ReLU())
        self.gate_mode = gate
        if gate != "none":
            self.shallow = GlobalCueInjection(shallow, width, inject=gci)
            self.gate = StochasticGate(psi, deterministic=gate == "deterministic")
        self.last_conv = nn.Sequential(
            _conv(width, width, 3), _bn(width), nn.ReLU(), nn.Dropout(0.5),
            _conv(width, width, 3), _bn(width), nn.ReLU(), nn.Dropout(0.1),
            _conv(width, num_classes, 1, bias=True),
        )

    def new_modules(self) -> list[nn.Module]:
        """Randomly initialised parts (the "new" learning-rate groups)."""
        mods: list[nn.Module] = [self.aspp, self.fc8_skip, self.fc8_x, self.last_conv]
        if self.gate_mode != "none":
            mods.append(self.shallow)
        return mods

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) normalised →

        `logits` (B, C+1, h, w) mask logits x with the constant background logit 1 at channel
        0, `masks` (B, C+1, h, w) = softmax(x) over channels, `cls` (B, C) class scores
        (nGWP + focal penalty, background dropped); (h, w) = stride-4 size of the input.
        """
        feats = self.backbone(images)
        conv3, conv6 = feats[0], feats[-1]
        skip = self.fc8_skip(conv3)
        x = F.interpolate(self.aspp(conv6), size=skip.shape[-2:], mode="bilinear",
                          align_corners=True)
        deep = self.fc8_x(torch.cat([x, skip], dim=1))
        if self.gate_mode != "none":
            deep = self.gate(deep, self.shallow(conv3, deep))
        y = self.last_conv(deep)
        logits = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)
        masks = F.softmax(logits, dim=1)
        scores = ngwp_scores(logits, masks)
        if self.focal:
            scores = scores + focal_mask_penalty(masks, p=self.focal_p, lam=self.focal_lambda)
        return {"logits": logits, "masks": masks, "cls": scores[:, 1:]}


# Method ---------------------------------------------------------------------------------------

# Parameters frozen when a backbone starts from pretrained weights (single_stage.md §2 and the
# official backbones' `_fix_params`).
_FROZEN_PREFIXES = {
    "resnet38": ("conv1a.", "b2.", "b2_1.", "b2_2."),
    "resnet50": ("stem.0.", "stem.1."),
    "resnet101": ("stem.0.", "stem.1."),
    "vgg16": ("conv1_1.", "conv1_2."),
}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@METHODS.register("one_stage")
class OneStage(Method):
    """Stages: data → train → make_masks → eval_masks (+ eval_crf), eval_masks_predicted
    (+ eval_crf_predicted) unless `use_gt_labels` → eval_cam (threshold sweep over the clean
    score maps)."""

    name = "one_stage"
    config_cls = OneStageConfig
    pseudo_mask_stage = "make_masks"  # masks/ (image labels): what the final segnet trains on
    train_keys = ("method.name", "method.gate", "method.psi", "method.gci",
                  "method.aspp_dilations", "method.head_channels", "method.focal", "method.focal_p",
                  "method.focal_lambda", "method.pamr", "method.pamr_iter",
                  "method.pamr_dilations", "method.pamr_kernel", "method.fg_cutoff",
                  "method.bg_cutoff", "method.cutoff_floor", "method.seg_weight",
                  "method.pretrain_epochs", "method.freeze_pretrained", "method.bias_lr_mult")
    cam_keys = ("method.test_scales", "method.test_flip", "method.test_pad_size",
                "method.bg_power", "method.fp_cut", "method.use_gt_labels", "method.crf")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        # Set by the trainer at each epoch start; None (no trainer) means "after the warm-up".
        self.epoch: int | None = None

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def build_model(self, num_classes: int) -> nn.Module:
        m, c = self.cfg.model, self.mcfg
        backbone = build_backbone(m.backbone, output_stride=m.output_stride,
                                  pretrained=m.pretrained, frozen_bn=m.frozen_bn)
        if m.frozen_bn:  # all backbone BNs: running statistics and frozen affine parameters
            for module in backbone.modules():
                if isinstance(module, nn.BatchNorm2d) and module.affine:
                    module.weight.requires_grad_(False)
                    module.bias.requires_grad_(False)
        if c.freeze_pretrained and m.pretrained not in ("", "none"):
            prefixes = _FROZEN_PREFIXES.get(m.backbone, ())
            for name, p in backbone.named_parameters():
                if name.startswith(prefixes):
                    p.requires_grad_(False)
        return OneStageNet(backbone=backbone, num_classes=num_classes, gate=c.gate, psi=c.psi,
                           gci=c.gci, aspp_dilations=tuple(c.aspp_dilations),
                           channels=c.head_channels, focal=c.focal,
                           focal_p=c.focal_p, focal_lambda=c.focal_lambda)

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """Backbone weights lr, biases lr·bias_lr_mult; new weights lr·head_lr_mult, biases
        lr·head_lr_mult·bias_lr_mult; biases (and BN β) without weight decay."""
        net = _unwrap(model)
        new_ids = {id(p) for mod in net.new_modules() for p in mod.parameters()}
        head = self.cfg.train.head_lr_mult
        bias = self.mcfg.bias_lr_mult
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            groups.setdefault((id(p) in new_ids, name.endswith(".bias")), []).append(p)
        out = []
        for (is_new, is_bias), params in sorted(groups.items()):
            lr = base_lr * (head if is_new else 1.0) * (bias if is_bias else 1.0)
            group: dict[str, Any] = {"params": params, "lr": lr}
            if is_bias:
                group["weight_decay"] = 0.0
            out.append(group)
        return out

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        images, labels = batch["image"], batch["labels"].float()
        out = model(images)
        terms = {"cls": F.multilabel_soft_margin_loss(out["cls"], labels)}
        if self.epoch is not None and self.epoch < self.mcfg.pretrain_epochs:
            terms["seg"] = out["logits"].sum() * 0.0  # keeps every parameter in the graph (DDP)
            return terms
        pgt = self.pseudo_gt(images, out["masks"].detach(), labels)
        terms["seg"] = self.mcfg.seg_weight * balanced_seg_loss(out["logits"], pgt, labels).mean()
        return terms

    @torch.no_grad()
    def pseudo_gt(self, images: Tensor, masks: Tensor, labels: Tensor) -> Tensor:
        """Training crops (B, 3, H, W) normalised, masks (B, C+1, h, w) → pseudo GT
        (B, C+1, H, W) in {0, 1} (PAMR at the mask size, then resized and cleaned)."""
        c = self.mcfg
        refined = masks.float()
        if c.pamr:
            mean = images.new_tensor(IMAGENET_MEAN)[None, :, None, None]
            std = images.new_tensor(IMAGENET_STD)[None, :, None, None]
            raw = F.interpolate((images.float() * std + mean), size=masks.shape[-2:],
                                mode="bilinear", align_corners=True)
            refined = pamr(raw, refined, dilations=tuple(c.pamr_dilations),
                           num_iter=c.pamr_iter, kernel=c.pamr_kernel)
        refined = F.interpolate(refined, size=images.shape[-2:], mode="bilinear",
                                align_corners=True)
        keep = torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1)
        refined = refined * keep[:, :, None, None]
        return pseudo_gt_masks(refined, fg_cutoff=c.fg_cutoff, bg_cutoff=c.bg_cutoff,
                               floor=c.cutoff_floor)

    def predict(self, model: nn.Module, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """Multi-scale + flip view average (C+1, H, W) and class confidences (C,)."""
        device = next(model.parameters()).device
        c = self.mcfg
        return merge_views(model, image, scales=list(c.test_scales), flip=c.test_flip,
                           pad_size=c.test_pad_size, device=device)

    def infer_cams(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Clean score maps: background^bg_power and the image's labelled classes
        (keys 0 and the labelled class indices)."""
        probs, _ = self.predict(model, image)
        present = torch.as_tensor(np.asarray(labels) > 0, device=probs.device)
        probs = finalize_probs(probs, present, bg_power=self.mcfg.bg_power)
        keys = np.concatenate([[0], np.flatnonzero(present.cpu().numpy()) + 1]).astype(np.int64)
        cams = probs[torch.as_tensor(keys, device=probs.device)].clamp(0.0, 1.0)
        return cams.cpu().numpy().astype(np.float32), keys

    # Stages -----------------------------------------------------------------------------------
    def make_masks_stage(self, name: str = "make_masks", train_stage: str = "train") -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            from wsss.ops.crf import CRF_PRESETS, dense_crf

            c = self.mcfg
            dataset = self.dataset(ctx.cfg.data.infer_split)
            model = self.load_trained(ctx.stage_dir(train_stage), dataset.num_classes, ctx.device)
            index = {n: i for i, n in enumerate(dataset.names)}
            out = ctx.out_dir

            def work(item: str) -> None:
                i = index[item]
                image = dataset.load_image(i)
                gt = torch.as_tensor(dataset.label_vector(i) > 0)
                with torch.inference_mode():
                    merged, scores = self.predict(model, image)
                merged, scores = merged.cpu(), scores.cpu()
                # The pseudo-masks keep the image labels' classes (every method conditions on
                # the known labels of the split it labels); `_predicted` keeps the classes the
                # network finds (the FP cut: unlabelled images, the val protocol).
                variants = {"": finalize_probs(merged, gt, bg_power=c.bg_power)}
                if not c.use_gt_labels:
                    variants["_predicted"] = finalize_probs(merged, scores > c.fp_cut,
                                                            bg_power=c.bg_power)
                for suffix, probs in variants.items():
                    save_mask(out / f"masks{suffix}" / f"{item}.png",
                              probs.argmax(0).numpy().astype(np.uint8))
                    if c.crf:
                        post = dense_crf(image, probs.numpy(), **CRF_PRESETS["psa"])
                        save_mask(out / f"crf{suffix}" / f"{item}.png",
                                  post.argmax(0).astype(np.uint8))
                keys = np.concatenate([[0], np.flatnonzero(gt.numpy()) + 1]).astype(np.int64)
                clean = variants[""][torch.as_tensor(keys)].clamp(0.0, 1.0)
                save_cams(out / "cams" / f"{item}.npz", clean.numpy(), keys,  # written last
                          dtype=ctx.cfg.pipeline.cam_dtype)

            done = per_image(dataset.names, lambda n: out / "cams" / f"{n}.npz", work, desc=name)
            return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done}

        return Stage(name, run, needs=(train_stage,),
                     depends_on=("data.infer_split", "data.root", "pipeline.cam_dtype")
                     + self.cam_keys,
                     description="multi-scale + flip masks (image labels / predicted, ±CRF)")

    def stages(self) -> list[Stage]:
        stages = [
            self.data_stage(),
            # The trainer calls `on_epoch_start`, which switches the segmentation loss on.
            self.train_stage("train", description="train the segmentation network "
                             "(classification-only warm-up, then + self-supervised segmentation)"),
            self.make_masks_stage("make_masks", "train"),
            self.eval_masks_stage("eval_masks", "make_masks"),
        ]
        if self.mcfg.crf:
            stages.append(self.eval_masks_stage("eval_crf", "make_masks", subdir="crf"))
        if not self.mcfg.use_gt_labels:
            stages.append(self.eval_masks_stage("eval_masks_predicted", "make_masks",
                                                subdir="masks_predicted"))
            if self.mcfg.crf:
                stages.append(self.eval_masks_stage("eval_crf_predicted", "make_masks",
                                                    subdir="crf_predicted"))
        stages.append(self.eval_cam_stage("eval_cam", "make_masks"))
        return stages
