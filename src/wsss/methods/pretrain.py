"""Backbone pretraining on the procedural corpus (`wsss pretrain`): the role ImageNet plays.

Stages: pretrain (multi-label classifier on `wsss.data.pretrain_corpus`, drawn on the fly) →
eval_pretrain (held-out corpus scenes: exact-match accuracy, mAP) → export (the backbone in
torchvision's key names, float16, with its sha256 and the recipe). `wsss pretrain --install`
then copies the export into `wsss/weights/`, where `model.pretrained: synthetic` finds it.
See docs/pretraining.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.config import ConfigError, to_dict
from wsss.data.pretrain_corpus import NUM_FACTORS, PretrainCorpus, factor_names
from wsss.engine.checkpoint import save_checkpoint
from wsss.io import write_text
from wsss.methods import METHODS
from wsss.methods.base import fit_model
from wsss.methods.cam_baseline import CamBaseline
from wsss.metrics.classification import multilabel_scores
from wsss.pipeline.stages import Stage, StageContext

CORPUS_KEYS = ("method.num_categories", "method.image_size", "method.items_per_epoch")
# Backbones whose state dict the export writes in torchvision's key names.
EXPORTABLE = ("resnet18_w32", "resnet18", "resnet34", "resnet50", "resnet101")


@dataclass
class PretrainConfig:
    """The corpus and its held-out evaluation (the network and recipe are `model` / `train`)."""

    name: str = "pretrain"
    num_categories: int = 128  # 8 silhouettes x 4 textures x 2 colour families x 2 parts
    image_size: int = 96
    items_per_epoch: int = 16000  # scenes drawn per epoch (new ones every epoch)
    val_items: int = 1000  # held-out scenes, drawn from `val_seed`
    val_seed: int = 20261207
    detach_stages: int = 0  # everything trains: this is where the early layers learn
    # CAMs of corpus categories (`infer_cams`, e.g. to look at what the backbone localises)
    cam_scales: list[float] = field(default_factory=lambda: [1.0])
    cam_flip: bool = True


def backbone_state_torchvision(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A `CamClassifier`'s ResNet backbone as a torchvision ResNet state dict (no `fc.`).

    `ResNetBackbone` keeps torchvision's modules under `stem.0` (conv1) and `stem.1` (bn1);
    the layers keep their names.
    """
    rename = {"stem.0.": "conv1.", "stem.1.": "bn1."}
    out = {}
    for key, value in model.backbone.state_dict().items():
        for old, new in rename.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


@METHODS.register("pretrain")
class Pretrain(CamBaseline):
    """A CAM classifier (GAP + 1x1) trained on the corpus; its backbone is the product."""

    name = "pretrain"
    config_cls = PretrainConfig
    pseudo_mask_stage = ""  # no pseudo-masks: a segmentation network cannot follow

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if cfg.model.backbone not in EXPORTABLE:  # checked before any stage runs
            raise ConfigError(f"model.backbone={cfg.model.backbone}: wsss pretrain exports "
                              f"torchvision ResNets ({', '.join(EXPORTABLE)})")

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]
                      ) -> dict[str, torch.Tensor]:
        """Categories: softmax cross-entropy against the label set as a distribution (each
        present category 1 / #present), as in large-scale multi-label pretraining (Mahajan et
        al., ECCV 2018): a per-class sigmoid loss gives each of 1-3 positives 1/128 of the
        gradient and stalled at the label prior's entropy for the first 250 steps. Factors (the
        outputs after the categories): sigmoid cross-entropy on which silhouettes, textures,
        colour families and parts are present, the coarse level of the label hierarchy; with
        categories alone the first 1,000 steps learned colour only (shape 23 %, texture 28 %
        top-1 factor accuracy, chance 12.5 / 25 %)."""
        logits = model(batch["image"])
        categories = batch["labels"]
        target = categories / categories.sum(1, keepdim=True).clamp(min=1)
        cls = -(target * torch.log_softmax(logits[:, :categories.shape[1]], dim=1)).sum(1).mean()
        if "factors" not in batch:  # a batch without factor labels trains the categories only
            return {"cls": cls}
        factors = F.binary_cross_entropy_with_logits(logits[:, categories.shape[1]:],
                                                     batch["factors"])
        return {"cls": cls, "factors": factors}

    def corpus(self, *, train: bool) -> PretrainCorpus:
        m = self.mcfg
        if train:
            return PretrainCorpus(num_items=m.items_per_epoch, num_categories=m.num_categories,
                                  image_size=m.image_size)
        return PretrainCorpus(num_items=m.val_items, num_categories=m.num_categories,
                              image_size=m.image_size, seed=m.val_seed)

    def stages(self) -> list[Stage]:
        return [self.corpus_stage(), self.pretrain_stage(), self.eval_pretrain_stage(),
                self.export_stage()]

    def corpus_stage(self) -> Stage:
        """The corpus is drawn on the fly; this stage records its categories and a sample grid
        of held-out scenes (`samples.png`), so a run shows what the backbone learned from."""
        def run(ctx: StageContext) -> dict[str, Any]:
            from PIL import Image

            from wsss.data.pretrain_corpus import render_scene

            m = self.mcfg
            corpus = self.corpus(train=False)
            write_text(ctx.out_dir / "categories.json",
                       json.dumps(corpus.class_names, indent=1) + "\n")
            rng = np.random.default_rng(m.val_seed)
            tiles = [render_scene(rng, m.num_categories, m.image_size)[0] for _ in range(32)]
            rows = [np.concatenate(tiles[r * 8:(r + 1) * 8], axis=1) for r in range(4)]
            Image.fromarray(np.concatenate(rows, axis=0)).save(ctx.out_dir / "samples.png")
            return {"categories": m.num_categories, "image_size": m.image_size,
                    "items_per_epoch": m.items_per_epoch}

        return Stage("data", run, depends_on=CORPUS_KEYS,
                     description="record the corpus categories and a sample grid")

    def pretrain_stage(self) -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            corpus = self.corpus(train=True)
            model = self.build_model(corpus.num_categories + NUM_FACTORS)
            meta = {"method": self.name, "class_names": corpus.class_names + factor_names(),
                    "num_classes": corpus.num_categories + NUM_FACTORS,
                    "model": to_dict(ctx.cfg.model),
                    "method_config": to_dict(self.mcfg)}
            return fit_model(ctx, model=model, step_fn=self.training_step,
                             param_groups=self.param_groups(model, ctx.cfg.train.lr),
                             dataset=corpus, train_cfg=ctx.cfg.train, meta=meta)

        return Stage("pretrain", run, needs=("data",),
                     depends_on=("model", "train", "pipeline.seed", "method.detach_stages",
                                 *CORPUS_KEYS),
                     description="train the backbone on the procedural corpus")

    def eval_pretrain_stage(self) -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            corpus = self.corpus(train=False)
            model = self.load_trained(ctx.stage_dir("pretrain"),
                                      corpus.num_categories + NUM_FACTORS, ctx.device)
            logits, labels = [], []
            with torch.inference_mode():
                for start in range(0, len(corpus), 100):
                    items = [corpus[i] for i in range(start, min(start + 100, len(corpus)))]
                    images = torch.stack([it["image"] for it in items]).to(ctx.device)
                    logits.append(model(images)[:, :corpus.num_categories].float().cpu())
                    labels.append(torch.stack([it["labels"] for it in items]))
            scores = multilabel_scores(torch.cat(logits), torch.cat(labels), decision="top_k")
            write_text(ctx.out_dir / "metrics.json", json.dumps(scores, indent=2) + "\n")
            return {"split": "held-out corpus", "images": len(corpus),
                    **{k: round(v, 4) for k, v in scores.items()}}

        return Stage("eval_pretrain", run, needs=("pretrain",),
                     depends_on=("method.val_items", "method.val_seed"),
                     description="score the classifier on held-out corpus scenes")

    def export_stage(self) -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            from wsss.weights import sha256_of

            name = ctx.cfg.model.backbone
            model = self.load_trained(ctx.stage_dir("pretrain"),
                                      self.mcfg.num_categories + NUM_FACTORS, torch.device("cpu"))
            state = {k: (v.half() if v.is_floating_point() else v)
                     for k, v in backbone_state_torchvision(model).items()}
            meta = {"backbone": name, "format": "torchvision state dict, float16",
                    "corpus": to_dict(self.mcfg), "model": to_dict(ctx.cfg.model),
                    "train": to_dict(ctx.cfg.train), "seed": ctx.cfg.pipeline.seed,
                    "scores": ctx.upstream.get("eval_pretrain", {}).get("summary", {})}
            path = ctx.out_dir / f"{name}_synthetic.pth"
            save_checkpoint(path, {"state_dict": state, "meta": meta})
            return {"file": str(path), "sha256": sha256_of(path),
                    "megabytes": round(path.stat().st_size / 2**20, 2)}

        return Stage("export", run, needs=("pretrain", "eval_pretrain"), depends_on=("model",),
                     description="write the backbone (float16) with its sha256 and recipe")
