"""The method contract and the stages every CAM-based method shares.

A method names its config dataclass, builds its network, supplies `training_step` and
`param_groups`, turns one image into CAMs (`infer_cams`) and lists its pipeline stages. The
stage builders here (data, train, make_cam, eval_cam, make_seeds, eval_masks) are reused by
every method, which adds or replaces stages of its own.
"""

from __future__ import annotations

import abc
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from wsss.config import RunConfig, to_dict
from wsss.data import build_dataset
from wsss.data.transforms import build_train_transform
from wsss.engine import distributed as dist
from wsss.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from wsss.engine.trainer import Trainer
from wsss.evaluation import evaluate_cams, evaluate_masks, write_result
from wsss.io import load_cams, load_image, save_cams, save_mask, write_text
from wsss.ops.cam import seeds_from_cams
from wsss.pipeline.stages import Stage, StageContext, per_image
from wsss.report.tensorboard import log_eval, train_logger

log = logging.getLogger("wsss")

DATA_KEYS = ("data",)
TRAIN_KEYS = ("data.dataset", "data.root", "data.train_split", "data.image_dir",
              "data.labels_from", "data.labels_file", "model", "train", "pipeline.seed")


class Method(abc.ABC):
    """Base class: subclasses set `name`, `config_cls` and implement the hooks."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    # Method config keys that change the trained network / the CAMs it infers (fingerprints).
    train_keys: ClassVar[tuple[str, ...]] = ("method.name",)
    cam_keys: ClassVar[tuple[str, ...]] = ()
    # The stage whose `masks/` the final segmentation network trains on (segnet.pseudo_mask_stage
    # overrides it).
    pseudo_mask_stage: ClassVar[str] = ""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.mcfg = cfg.method

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every method's `stages()` ends with the segnet stages when `segnet.enabled`, without
        each method having to list them (a stage already listed is not added twice)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("stages")
        if own is None or getattr(own, "_with_segnet", False):
            return

        @functools.wraps(own)
        def stages(self: Method) -> list[Stage]:
            listed = own(self)
            names = {s.name for s in listed}
            return listed + [s for s in self.segnet_stages() if s.name not in names]

        stages._with_segnet = True  # type: ignore[attr-defined]
        cls.stages = stages  # type: ignore[method-assign]

    @classmethod
    def config_class(cls) -> type:
        return cls.config_cls

    # Hooks -------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, num_classes: int) -> nn.Module:
        ...

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        ...

    @abc.abstractmethod
    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        ...

    @abc.abstractmethod
    def infer_cams(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """image uint8 (H, W, 3), labels (C,) → cams float32 (K, H, W) in [0, 1], keys (K,)."""
        ...

    def cam_file_arrays(self, model: nn.Module, image: np.ndarray, labels: np.ndarray
                        ) -> dict[str, np.ndarray]:
        """What `make_cam` stores for one image: `cams` and `keys` from `infer_cams`. A method
        whose CAMs feed IRN's random walk adds `cams_strided` (K, ⌈H/4⌉, ⌈W/4⌉) (CAM baseline)."""
        cams, keys = self.infer_cams(model, image, labels)
        return {"cams": cams, "keys": keys}

    @abc.abstractmethod
    def stages(self) -> list[Stage]:
        ...

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based, also after a resume); methods with
        phases (1-Stage's classification warm-up) read the epoch here."""

    # Shared helpers ------------------------------------------------------------------------
    def dataset(self, split: str, *, train: bool = False) -> Any:
        transform = train_transform(self.cfg.train) if train else None
        return build_dataset(self.cfg.data, split, transform=transform)

    def checkpoint_meta(self, dataset: Any) -> dict[str, Any]:
        """What a checkpoint carries so that it works without the training config."""
        return {
            "method": self.name,
            "class_names": list(dataset.class_names),
            "num_classes": dataset.num_classes,
            "model": to_dict(self.cfg.model),
            "method_config": to_dict(self.mcfg),
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }

    def load_trained(self, stage_dir: Path, num_classes: int, device: torch.device) -> nn.Module:
        model = self.build_model(num_classes)
        state = load_checkpoint(stage_dir / "model.pt", map_location="cpu")
        load_model_state(model, state["model"], str(stage_dir / "model.pt"))
        return model.to(device).eval()

    # Shared stages -------------------------------------------------------------------------
    def segnet_stages(self) -> list[Stage]:
        """train_segnet → predict_val → eval_val when `segnet.enabled`, else none (appended to
        every method's `stages()`, see `__init_subclass__`)."""
        if not self.cfg.segnet.enabled:
            return []
        from wsss.methods.segnet import segnet_stages

        return segnet_stages(self)

    def data_stage(self) -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            from wsss.data.prepare import prepare_data

            # Rank 0 generates and validates; the others wait for its summary.
            generate = ctx.cfg.pipeline.generate_data is not False
            summary = prepare_data(ctx.cfg.data, generate=generate) if dist.is_main() else None
            return dist.broadcast_object(summary)

        return Stage("data", run, depends_on=DATA_KEYS,
                     description="generate (synthetic) and validate every split")

    def train_stage(self, name: str = "train_cam", needs: tuple[str, ...] = ("data",),
                    depends_on: tuple[str, ...] = (), *,
                    description: str = "train the network on image-level labels") -> Stage:
        """Train `build_model` with `training_step` through the `Trainer`, on the training split
        with the `train` config's augmentation. Methods with a second network (IRN, AffinityNet,
        AuxSegNet rounds) build their own stages around `fit_model`."""
        def run(ctx: StageContext) -> dict[str, Any]:
            t = ctx.cfg.train
            dataset = self.dataset(ctx.cfg.data.train_split, train=True)
            # Model selection validates with the training augmentation (1-Stage `train.py`).
            val = self.dataset(ctx.cfg.data.val_split, train=True) if t.select_epochs else None
            model = self.build_model(dataset.num_classes)
            return fit_model(ctx, model=model, step_fn=self.training_step,
                             param_groups=self.param_groups(model, t.lr), dataset=dataset,
                             train_cfg=t, meta=self.checkpoint_meta(dataset),
                             on_epoch_start=self.on_epoch_start, val_dataset=val)

        if self.cfg.train.select_epochs:
            depends_on = depends_on + ("data.val_split",)
        return Stage(name, run, needs=needs, depends_on=TRAIN_KEYS + self.train_keys + depends_on,
                     description=description)

    def make_cam_stage(
        self,
        name: str = "make_cam",
        train_stage: str = "train_cam",
        infer: Callable[[nn.Module, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
        | None = None,
    ) -> Stage:
        def arrays(model: nn.Module, image: np.ndarray, labels: np.ndarray
                   ) -> dict[str, np.ndarray]:
            if infer is None:
                return self.cam_file_arrays(model, image, labels)
            cams, keys = infer(model, image, labels)
            return {"cams": cams, "keys": keys}

        def run(ctx: StageContext) -> dict[str, Any]:
            dataset = self.dataset(ctx.cfg.data.infer_split)
            model = self.load_trained(ctx.stage_dir(train_stage), dataset.num_classes, ctx.device)
            index = {n: i for i, n in enumerate(dataset.names)}
            cam_dir = ctx.out_dir / "cams"

            def work(item: str) -> None:
                i = index[item]
                with torch.inference_mode():
                    out = arrays(model, dataset.load_image(i), dataset.label_vector(i))
                save_cams(cam_dir / f"{item}.npz", dtype=ctx.cfg.pipeline.cam_dtype, **out)

            done = per_image(dataset.names, lambda n: cam_dir / f"{n}.npz", work, desc=name)
            return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done}

        return Stage(name, run, needs=(train_stage,),
                     depends_on=("data.infer_split", "data.root", "pipeline.cam_dtype")
                     + self.cam_keys,
                     description="multi-scale + flip CAMs per image (.npz)")

    def eval_classifier_stage(self, name: str = "eval_cls", train_stage: str = "train_cam"
                              ) -> Stage:
        """Image-level scores of the trained classifier on the validation split (whole images,
        logit > 0 = present): exact-match accuracy, mAP and per-class AP. Needs no masks."""
        def run(ctx: StageContext) -> dict[str, Any]:
            # Whole images one by one on rank 0 (a few seconds for VOC val on a GPU); the other
            # ranks take its summary.
            summary = _score_classifier(self, ctx, train_stage) if dist.is_main() else None
            return dist.broadcast_object(summary)

        return Stage(name, run, needs=(train_stage,), depends_on=("data.val_split",),
                     description="classifier accuracy and mAP on the validation split")

    def eval_cam_stage(self, name: str = "eval_cam", cam_stage: str = "make_cam",
                       threshold_key: str = "cam_eval_threshold") -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            dataset = self.dataset(ctx.cfg.data.eval_split)
            e = ctx.cfg.eval
            thresholds = np.round(np.arange(e.sweep_start, e.sweep_stop, e.sweep_step), 6)
            threshold = getattr(self.mcfg, threshold_key)
            result = evaluate_cams(ctx.stage_dir(cam_stage) / "cams", dataset,
                                   threshold=threshold, thresholds=thresholds, absent=e.absent)
            result["split"] = ctx.cfg.data.eval_split
            if dist.is_main():
                write_result(ctx.out_dir, result)
                log_eval(ctx, result, dataset, cam_dir=ctx.stage_dir(cam_stage) / "cams")
                if e.plots:
                    _plot_cam_eval(result, ctx.out_dir, label=cam_stage)
            return _headline(result)

        return Stage(name, run, needs=(cam_stage,),
                     depends_on=("data.eval_split", f"method.{threshold_key}", "eval"),
                     description="CAM mIoU at the fixed threshold and over a threshold sweep",
                     ground_truth="data.eval_split")

    def make_seeds_stage(self, name: str = "make_seeds", cam_stage: str = "make_cam",
                         fg_key: str = "seed_fg_threshold", bg_key: str = "seed_bg_threshold"
                         ) -> Stage:
        def run(ctx: StageContext) -> dict[str, Any]:
            params = dict(fg_threshold=getattr(self.mcfg, fg_key),
                          bg_threshold=getattr(self.mcfg, bg_key), crf=self.mcfg.seed_crf)
            return cams_to_masks(ctx, self.dataset(ctx.cfg.data.infer_split), cam_stage,
                                 _seed_one, params, desc=name)

        return Stage(name, run, needs=(cam_stage,),
                     depends_on=("data.infer_split", f"method.{fg_key}", f"method.{bg_key}",
                                 "method.seed_crf"),
                     description="confident seeds (fg / bg thresholds + dense CRF), 255 = unsure")

    def eval_masks_stage(self, name: str, mask_stage: str, split_key: str = "eval_split",
                         subdir: str = "masks") -> Stage:
        """Score the PNG masks in `<mask_stage>/<subdir>/` against the ground truth."""

        def run(ctx: StageContext) -> dict[str, Any]:
            split = getattr(ctx.cfg.data, split_key)
            dataset = self.dataset(split)
            result = evaluate_masks(ctx.stage_dir(mask_stage) / subdir, dataset,
                                    absent=ctx.cfg.eval.absent, contour=ctx.cfg.eval.contour,
                                    desc=name)
            result["split"] = split
            if dist.is_main():
                write_result(ctx.out_dir, result)
                log_eval(ctx, result, dataset, mask_dir=ctx.stage_dir(mask_stage) / subdir)
                if ctx.cfg.eval.plots:
                    from wsss.metrics.plots import plot_per_class_iou

                    plot_per_class_iou(result["iou"], ctx.out_dir / "per_class_iou.png",
                                       title=f"{mask_stage} ({split})")
            return _headline(result)

        return Stage(name, run, needs=(mask_stage,), depends_on=(f"data.{split_key}", "eval"),
                     description=f"score {mask_stage} masks against ground truth",
                     ground_truth=f"data.{split_key}")


def _score_classifier(method: Method, ctx: StageContext, train_stage: str) -> dict[str, Any]:
    """The `eval_cls` work: logits of every validation image, scores, `metrics.json`."""
    from wsss.metrics.classification import average_precision, multilabel_scores

    split = ctx.cfg.data.val_split
    dataset = method.dataset(split)
    model = method.load_trained(ctx.stage_dir(train_stage), dataset.num_classes, ctx.device)
    logits, labels = [], []
    with torch.inference_mode():
        for i in range(len(dataset)):
            item = dataset[i]
            logits.append(model(item["image"][None].to(ctx.device)).float().cpu()[0])
            labels.append(item["labels"])
    logits_all, labels_all = torch.stack(logits), torch.stack(labels)
    scores = multilabel_scores(logits_all, labels_all)
    present = labels_all > 0
    per_class = {name: average_precision(logits_all[:, c], present[:, c])
                 if present[:, c].any() else None
                 for c, name in enumerate(list(dataset.class_names)[1:])}
    # What a classifier that learned nothing scores: the multi-label soft-margin loss of the
    # constant class frequencies (of this split), against the last training epoch's loss.
    freq = present.float().mean(0).clamp(1e-6, 1 - 1e-6)
    prior = float(-(freq * freq.log() + (1 - freq) * (1 - freq).log()).mean())
    history_path = ctx.stage_dir(train_stage) / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    losses = {"prior_loss": round(prior, 4)}
    if history and "cls" in history[-1]:
        losses["train_loss"] = round(float(history[-1]["cls"]), 4)
    write_text(ctx.out_dir / "metrics.json", json.dumps(
        {"split": split, "images": len(dataset), **scores, **losses, "ap": per_class},
        indent=2) + "\n")
    return {"split": split, "images": len(dataset),
            **{k: round(v, 4) for k, v in scores.items()}, **losses}


def train_transform(t: Any) -> Any:
    """The paired training augmentation of a `TrainConfig` (IRN order, or 1-Stage's with
    `resized_crop_scale`; see `build_train_transform`)."""
    return build_train_transform(
        crop_size=t.crop_size,
        resize_long=tuple(t.resize_long) if t.resize_long else None,
        resize_long_rounding=getattr(t, "resize_long_rounding", "irn"),
        scale_range=tuple(t.scale_range) if t.scale_range else None,
        flip=t.flip,
        color_jitter=tuple(t.color_jitter) if t.color_jitter else None,
        # getattr: callers may pass train-config-like objects without the resized-crop fields.
        resized_crop_scale=_optional_pair(getattr(t, "resized_crop_scale", None)),
        resized_crop_ratio=_optional_pair(getattr(t, "resized_crop_ratio", None))
        or (3.0 / 4.0, 4.0 / 3.0),
    )


def _optional_pair(values: Any) -> tuple[float, float] | None:
    return (float(values[0]), float(values[1])) if values else None


def fit_model(ctx: StageContext, *, model: nn.Module, step_fn: Callable[..., Any],
              param_groups: list[dict[str, Any]], dataset: Any, train_cfg: Any,
              meta: dict[str, Any], on_epoch_start: Callable[[int], None] | None = None,
              val_dataset: Any = None) -> dict[str, Any]:
    """Train `model` with the `Trainer` on `train_cfg`, save `model.pt` and `history.json`.

    With `train_cfg.select_epochs` (and a `val_dataset`), model.pt holds the weights with the
    lowest validation loss among those epochs (`Trainer`'s model selection).

    Returns:
        the stage summary: epochs, steps, the last epoch's mean loss (and the selection).
    """
    t = train_cfg
    logger = train_logger(ctx)
    trainer = Trainer(
        model=model, step_fn=step_fn, param_groups=param_groups, dataset=dataset,
        out_dir=ctx.out_dir, device=ctx.device, epochs=t.epochs,
        batch_size=t.batch_size, optimizer=t.optimizer, momentum=t.momentum,
        weight_decay=t.weight_decay, poly_power=t.poly_power, grad_clip=t.grad_clip,
        amp=t.amp, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
        checkpoint_seconds=ctx.cfg.pipeline.checkpoint_seconds,
        num_workers=ctx.cfg.data.num_workers, seed=ctx.cfg.pipeline.seed, meta=meta,
        on_epoch_start=on_epoch_start,
        logger=logger,
        # A dataset that augments whole batches (AuxSegNet's one scale per batch) collates them.
        collate_fn=getattr(dataset, "collate_fn", None),
        val_dataset=val_dataset, select_epochs=getattr(t, "select_epochs", None) or (),
    )
    return {"epochs": trainer.epochs, **finish_training(ctx, trainer, model, meta, logger)}


def finish_training(ctx: StageContext, trainer: Trainer, model: nn.Module, meta: dict[str, Any],
                    logger: Any) -> dict[str, Any]:
    """Run `trainer`, then (rank 0) save `model.pt` with `meta` and `history.json`.

    Returns:
        steps and the last epoch's mean loss.
    """
    result = trainer.fit()
    if logger is not None:
        logger.close()
    if dist.is_main():
        save_checkpoint(ctx.out_dir / "model.pt", {"model": model.state_dict(), "meta": meta})
        write_text(ctx.out_dir / "history.json", json.dumps(result.history, indent=2))
    dist.barrier()
    last = result.history[-1] if result.history else {}
    summary = {"steps": result.steps, "final_loss": last.get("loss")}
    if result.val_losses:
        summary["selected_epoch"] = result.selected_epoch
        summary["val_losses"] = {str(k): v for k, v in sorted(result.val_losses.items())}
    return summary


def cams_to_masks(ctx: StageContext, dataset: Any, cam_stage: str,
                  work: Callable[[tuple[str, str, str, dict[str, Any]]], None],
                  params: dict[str, Any], *, desc: str) -> dict[str, Any]:
    """Write `<stage>/masks/<name>.png` for every image from `<cam_stage>/cams/<name>.npz` with
    `work((image path, cam path, mask path, params))`, a picklable module-level function that
    runs in a process pool when `pipeline.workers` > 1 (CRF-bound seed and label stages).

    Returns:
        the stage summary: split, image count, images computed by this rank, and `params`.
    """
    cam_dir, mask_dir = ctx.stage_dir(cam_stage) / "cams", ctx.out_dir / "masks"
    index = {n: i for i, n in enumerate(dataset.names)}

    def args(item: str) -> tuple[str, str, str, dict[str, Any]]:
        return (str(dataset.image_path(index[item])), str(cam_dir / f"{item}.npz"),
                str(mask_dir / f"{item}.png"), params)

    done = per_image(dataset.names, lambda n: mask_dir / f"{n}.png", lambda n: work(args(n)),
                     desc=desc, workers=ctx.cfg.pipeline.workers, pool_work=work,
                     pool_args=args)
    return {"split": ctx.cfg.data.infer_split, "images": len(dataset), "computed": done,
            **params}


def _seed_one(args: tuple[str, str, str, dict[str, Any]]) -> None:
    """Seeds for one image (a module-level function so a process pool can run it)."""
    image_path, cam_path, out_path, params = args
    cams, keys = load_cams(cam_path)
    if keys.size and keys.min() == 0:
        cams, keys = cams[keys > 0], keys[keys > 0]
    image = load_image(image_path)
    seeds = seeds_from_cams(image, cams, keys, **params)
    save_mask(out_path, seeds)


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that go into a manifest and the final table."""
    if "fixed" in result:
        f, s = result["fixed"], result["sweep"]
        return {"split": result.get("split"), "miou": f["miou"], "threshold": f["threshold"],
                "precision": _mean(f["precision"]), "recall": _mean(f["recall"]),
                "oracle_miou": s["best_miou"], "oracle_threshold": s["best_threshold"]}
    out = {"split": result.get("split"), "miou": result["miou"],
           "precision": _mean(result["precision"]), "recall": _mean(result["recall"]),
           "coverage": result.get("coverage")}
    if "contour" in result:
        out["contour_f"] = result["contour"]["fscore"]
    return out


def _mean(per_class: dict[str, float | None]) -> float | None:
    """Mean over classes with a defined value (None for none)."""
    values = [v for v in per_class.values() if v is not None]
    return float(np.mean(values)) if values else None


def _plot_cam_eval(result: dict[str, Any], out_dir: Path, *, label: str) -> None:
    from wsss.metrics.plots import plot_threshold_curves, plot_threshold_histogram

    sweep = result["sweep"]
    plot_threshold_curves({label: (sweep["thresholds"], sweep["miou"])},
                          out_dir / "miou_vs_threshold.png",
                          marks={"fixed": result["fixed"]["threshold"]},
                          title=f"mIoU(τ), {result.get('split')}")
    best = list(sweep["per_image_best_thresholds"].values())
    if best:
        plot_threshold_histogram(best, out_dir / "best_threshold_hist.png",
                                 title="per-image optimal threshold")
