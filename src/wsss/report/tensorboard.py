"""TensorBoard event files under `<run>/tensorboard/<stage>`: training scalars and input images
(a `Trainer` logger), and each eval stage's metrics, threshold sweep and example panels.

Only rank 0 writes. `torch.utils.tensorboard` is imported when a writer opens, so importing this
module stays cheap. Switches: `pipeline.tensorboard`, `pipeline.tensorboard_every`,
`pipeline.tensorboard_image_every`, `pipeline.tensorboard_images`.

Event files are a side product: a write that fails (a full disk, a lost mount) stops the stage's
TensorBoard logging with one warning line, and the stage goes on; a full disk then stops the run
at its next real write, again with one line.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.engine import distributed as dist
from wsss.io import load_cams, load_mask
from wsss.report.render import cam_heatmap, colorize_mask, denormalize, hstack, upscale

TENSORBOARD_DIR = "tensorboard"


log = logging.getLogger("wsss")
_default_excepthook = threading.excepthook


def _quiet_writer_threads(args: Any) -> None:
    """Leave failures of TensorBoard's background writer thread unprinted: the writer raises
    the same error in the main thread at its next call, where it becomes one warning line."""
    if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
        return
    _default_excepthook(args)


def _writer(log_dir: str | Path, *, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    if threading.excepthook is _default_excepthook:
        threading.excepthook = _quiet_writer_threads
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _warn_failed(log_dir: Path, exc: OSError) -> None:
    reason = exc.strerror or str(exc)
    log.warning("TensorBoard logging to %s stopped: %s%s", log_dir, reason,
                f" ({exc.filename})" if exc.filename else "")


def _close_quietly(writer: Any) -> None:
    try:
        writer.close()
    except OSError:
        pass


class TensorBoardLogger:
    """A `wsss.engine.trainer.TrainLogger` that writes TensorBoard scalars and images.

    Tags: `loss/<term>` and `loss/total` every `scalar_every` steps (and at step 1),
    `lr/group<i>` (the learning rate of each parameter group during the step), `epoch/<term>`
    and `epoch/lr` (epoch means, x = global step), `train/input` (a grid of de-normalised input
    images) and `train/mask` (the batch's target masks, when it has them) every `image_every`
    steps and at step 1.

    The writer opens at the first write with `purge_step` at that step, so after a resume
    TensorBoard drops the points a killed run wrote beyond its last checkpoint.

    Args:
        log_dir: folder of the event files, e.g. `<run>/tensorboard/train_cam`.
        scalar_every: steps between scalar points; 0 writes only epoch means.
        image_every: steps between image grids; 0 writes none.
        max_images: images per grid.
        mean, std: the normalisation of the batch images (ImageNet by default).
    """

    def __init__(self, log_dir: str | Path, *, scalar_every: int = 10, image_every: int = 100,
                 max_images: int = 8, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.log_dir = Path(log_dir)
        self.scalar_every = scalar_every
        self.image_every = image_every
        self.max_images = max_images
        self.mean = mean
        self.std = std
        self._writer: Any = None
        self._failed = False

    def _fail(self, exc: OSError) -> None:
        self._failed = True
        _warn_failed(self.log_dir, exc)
        if self._writer is not None:
            _close_quietly(self._writer)
            self._writer = None

    def _open(self, step: int) -> Any:
        if self._writer is None:
            self._writer = _writer(self.log_dir, purge_step=step)
        return self._writer

    @staticmethod
    def _due(step: int, every: int) -> bool:
        return every > 0 and (step == 1 or step % every == 0)

    def log_step(self, step: int, values: dict[str, float], lrs: list[float],
                 batch: dict[str, Any]) -> None:
        if self._failed:
            return
        try:
            self._log_step(step, values, lrs, batch)
        except OSError as exc:
            self._fail(exc)

    def _log_step(self, step: int, values: dict[str, float], lrs: list[float],
                  batch: dict[str, Any]) -> None:
        writer = self._open(step)
        if self._due(step, self.scalar_every):
            for name, value in values.items():
                writer.add_scalar("loss/total" if name == "loss" else f"loss/{name}", value, step)
            for i, lr in enumerate(lrs):
                writer.add_scalar(f"lr/group{i}", lr, step)
        if self._due(step, self.image_every) and "image" in batch:
            images = batch["image"][: self.max_images].detach().float().cpu().numpy()
            writer.add_images("train/input", denormalize(images, self.mean, self.std), step)
            if "mask" in batch:
                masks = batch["mask"][: self.max_images].cpu().numpy()
                colours = np.stack([colorize_mask(m) for m in masks])
                writer.add_images("train/mask", colours, step, dataformats="NHWC")

    def log_epoch(self, epoch: int, step: int, means: dict[str, float]) -> None:
        if self._failed:
            return
        try:
            writer = self._open(step)
            for name, value in means.items():
                writer.add_scalar(f"epoch/{'total' if name == 'loss' else name}", value, step)
            writer.flush()
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                self._fail(exc)
            self._writer = None


def stage_log_dir(ctx: Any) -> Path:
    """`<run>/tensorboard/<stage>` of a `StageContext`."""
    return ctx.run_dir / TENSORBOARD_DIR / ctx.out_dir.name


def train_logger(ctx: Any) -> TensorBoardLogger | None:
    """The training logger of a stage, or None when `pipeline.tensorboard` is off or not rank 0.

    A stage that starts afresh (no `last.pt` to resume from) first removes the event files of
    earlier runs of the stage.
    """
    p = ctx.cfg.pipeline
    if not p.tensorboard or not dist.is_main():
        return None
    if not (ctx.out_dir / "last.pt").is_file() and stage_log_dir(ctx).is_dir():
        shutil.rmtree(stage_log_dir(ctx))
    return TensorBoardLogger(stage_log_dir(ctx), scalar_every=p.tensorboard_every,
                             image_every=p.tensorboard_image_every,
                             max_images=p.tensorboard_images)


def _spread(count: int, num: int) -> list[int]:
    """`num` indices spread evenly over 0..count-1 (all when count <= num)."""
    if count <= 0 or num <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, count - 1, min(num, count)).round()})


def log_eval(ctx: Any, result: dict[str, Any], dataset: Any, *,
             cam_dir: Path | None = None, mask_dir: Path | None = None) -> None:
    """Write an eval stage's scores and example panels to `<run>/tensorboard/<stage>` (rank 0,
    when `pipeline.tensorboard`).

    Scalars (x = 0): `metrics/*` (mIoU; for CAMs the fixed-τ and oracle mIoU and τ, for masks
    precision, recall, coverage, contour F) and `iou/<class>`; for CAMs the sweep as
    `sweep/miou` over x = round(100 τ) and a histogram of per-image optimal τ. Images
    (`pipeline.tensorboard_images` of them, evenly spaced over the split): input | CAM heat map
    or mask | ground truth.

    Args:
        result: the stage's `evaluate_cams` / `evaluate_masks` result.
        dataset: the evaluated split (images and ground truth).
        cam_dir, mask_dir: where the scored CAM files / masks are (one of them).
    """
    p = ctx.cfg.pipeline
    if not p.tensorboard or not dist.is_main():
        return
    if stage_log_dir(ctx).is_dir():  # the events of an earlier run of this stage
        shutil.rmtree(stage_log_dir(ctx))
    try:
        _log_eval(ctx, result, dataset, cam_dir=cam_dir, mask_dir=mask_dir)
    except OSError as exc:
        _warn_failed(stage_log_dir(ctx), exc)


def _log_eval(ctx: Any, result: dict[str, Any], dataset: Any, *,
              cam_dir: Path | None, mask_dir: Path | None) -> None:
    p = ctx.cfg.pipeline
    writer = _writer(stage_log_dir(ctx))
    try:
        if "fixed" in result:
            fixed, sweep = result["fixed"], result["sweep"]
            scalars = {"miou_fixed": fixed["miou"], "threshold_fixed": fixed["threshold"],
                       "miou_oracle": sweep["best_miou"],
                       "threshold_oracle": sweep["best_threshold"]}
            per_class = fixed["iou"]
            for tau, value in zip(sweep["thresholds"], sweep["miou"]):
                if value is not None:
                    writer.add_scalar("sweep/miou", value, int(round(100 * tau)))
            best = [v for v in sweep["per_image_best_thresholds"].values() if v is not None]
            if best:
                writer.add_histogram("sweep/per_image_best_threshold", np.asarray(best), 0,
                                     bins=np.linspace(0.0, 1.0, 21))
        else:
            scalars = {"miou": result["miou"], "coverage": result.get("coverage")}
            for key in ("precision", "recall"):
                values = [v for v in result[key].values() if v is not None]
                scalars[key] = float(np.mean(values)) if values else None
            if "contour" in result:
                scalars["contour_f"] = result["contour"]["fscore"]
            per_class = result["iou"]
        for name, value in scalars.items():
            if value is not None:
                writer.add_scalar(f"metrics/{name}", value, 0)
        for name, value in per_class.items():
            if value is not None:
                writer.add_scalar(f"iou/{name}", value, 0)
        for index in _spread(len(dataset), p.tensorboard_images):
            name = dataset.names[index]
            image = dataset.load_image(index)
            if cam_dir is not None:
                path = Path(cam_dir) / f"{name}.npz"
                if not path.is_file():
                    continue
                middle = cam_heatmap(image, *load_cams(path))
                tag = f"cam/{name}"
            else:
                path = Path(mask_dir) / f"{name}.png"  # type: ignore[arg-type]
                if not path.is_file():
                    continue
                middle = colorize_mask(load_mask(path))
                tag = f"mask/{name}"
            gt = dataset.load_mask(index)
            panels = [image, middle] + ([colorize_mask(gt)] if gt is not None else [])
            writer.add_image(tag, upscale(hstack(panels), 128), 0, dataformats="HWC")
    except BaseException:
        _close_quietly(writer)
        raise
    writer.close()
