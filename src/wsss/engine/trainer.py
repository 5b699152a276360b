"""The one training loop: epochs, poly schedule, AMP, clipping, logging, resumable checkpoints.

Methods supply `step_fn(model, batch) -> dict[str, Tensor]` (the trainer sums the terms and logs
each) and parameter groups. The loop never branches on a method.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from wsss.engine import distributed as dist
from wsss.engine.checkpoint import (
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from wsss.logs import progress

log = logging.getLogger("wsss")

StepFn = Callable[[nn.Module, dict[str, Any]], dict[str, torch.Tensor]]


class TrainLogger(Protocol):
    """What the loop reports to a logger on rank 0 (`wsss.report.tensorboard.TensorBoardLogger`)."""

    def log_step(self, step: int, values: dict[str, float], lrs: list[float],
                 batch: dict[str, Any]) -> None:
        """After every step: 1-based global step, loss terms and `loss`, the learning rate of
        each parameter group during the step, and the (CPU) batch."""

    def log_epoch(self, epoch: int, step: int, means: dict[str, float]) -> None:
        """After every epoch: 1-based epoch, global step and the epoch's mean terms and `lr`."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and term."""


class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch from a generator seeded with (seed, epoch), split by rank.

    The order depends only on (seed, epoch), so a resumed run sees the same batches;
    `start` skips the items already consumed in this epoch.
    """

    def __init__(self, num_items: int, *, shuffle: bool, seed: int, batch_size: int) -> None:
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0
        # Every rank gets the same number of whole batches (drop_last over the total batch).
        self.num_batches = num_items // batch_size
        self.per_rank = self.num_batches * batch_size // dist.world_size()

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def indices(self) -> list[int]:
        """This rank's share of each global batch, batch after batch.

        Global batch k holds the same items whatever the number of ranks, so N ranks with
        batch B/N each follow the trajectory of one process with batch B.
        """
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.num_items, generator=gen).tolist()
        else:
            order = list(range(self.num_items))
        batch = self.per_rank * dist.world_size() // max(self.num_batches, 1)
        mine: list[int] = []
        for k in range(self.num_batches):
            mine.extend(order[k * batch : (k + 1) * batch][dist.rank() :: dist.world_size()])
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


class SeededItems(Dataset):
    """Wraps a dataset so each item's random augmentation is seeded by (seed, epoch, index).

    Augmentations are then identical across resumes and DataLoader worker counts.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item_seed = (self.seed * 1000003 + self.epoch) * 1000003 + index
        random.seed(item_seed)
        np.random.seed(item_seed % 2**32)
        torch.manual_seed(item_seed % 2**63)
        return self.dataset[index]


def poly_lambda(max_steps: int, power: float) -> Callable[[int], float]:
    """lr factor at step k: (1 − k / max_steps) ** power (IRN/PSA poly schedule)."""
    return lambda step: (1.0 - min(step, max_steps) / max_steps) ** power


def build_optimizer(
    groups: Sequence[dict[str, Any]], *, name: str, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (momentum passed by keyword, fixing IRN/PSA's PolyOptimizer slip) or Adam."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, sgd")


@dataclass
class TrainResult:
    epochs: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    # Model selection (`select_epochs`): validation loss per number of completed epochs, and
    # the number of epochs after which the kept weights were taken (None: the last weights).
    val_losses: dict[int, float] = field(default_factory=dict)
    selected_epoch: int | None = None


class Trainer:
    """Trains `model` with `step_fn`, checkpointing to `out_dir/last.pt` and resuming from it.

    Args:
        model: the network (moved to `device`; wrapped in DDP when several ranks run).
        step_fn: (model, batch) → dict of scalar loss terms; their sum is minimised.
        param_groups: optimizer groups with their own `lr` (the schedule scales each).
        dataset: training items (dicts); batches are collated with the default collate.
        batch_size: total batch over all ranks.
        on_epoch_start: called with the 0-based epoch before each epoch (also after a resume),
            e.g. for a method's warm-up phase.
        max_steps: an iteration budget (DeepLab's 30k): the poly schedule spans it, training
            stops after it, and `epochs` becomes the number of epochs it needs.
        checkpoint_every: steps between checkpoints (`last.pt`; 0: none by steps).
        checkpoint_epochs: also checkpoint at the end of every epoch (False for an iteration
            budget, where an epoch may be a single step).
        checkpoint_seconds: also checkpoint after a step when this many seconds have passed
            since the last checkpoint (0: never by time). The final state is always saved.
        logger: a `TrainLogger` called on rank 0 after every step and epoch (None: no calls).
        val_dataset, select_epochs: model selection. After each number of completed epochs in
            `select_epochs` (before the next epoch starts, after `on_epoch_start` for it, as
            1-Stage's `train.py` validates), the mean over batches of the summed `step_fn`
            terms on `val_dataset` (model in eval mode, no gradient) is computed; when training
            ends, the model holds the weights with the lowest such loss (ties: the earliest).
            The best weights so far are kept in `out_dir/best.pt`, so a resume keeps them.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        step_fn: StepFn,
        param_groups: Sequence[dict[str, Any]],
        dataset: Dataset,
        out_dir: str | Path,
        device: torch.device,
        epochs: int,
        batch_size: int,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        poly_power: float = 0.9,
        grad_clip: float | None = None,
        amp: bool = False,
        log_every: int = 20,
        checkpoint_every: int = 0,
        checkpoint_epochs: bool = True,
        checkpoint_seconds: float = 0.0,
        num_workers: int = 0,
        seed: int = 0,
        meta: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        max_steps: int | None = None,
        logger: TrainLogger | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        val_dataset: Dataset | None = None,
        select_epochs: Sequence[int] = (),
    ) -> None:
        world = dist.world_size()
        if batch_size % world:
            raise ValueError(f"train.batch_size {batch_size} is not divisible by {world} ranks")
        if len(dataset) < batch_size:  # type: ignore[arg-type]
            raise ValueError(f"{len(dataset)} training items, fewer than one batch of {batch_size}")
        self.device = device
        self.model = model.to(device)
        self.step_fn = step_fn
        self.out_dir = Path(out_dir)
        self.epochs = epochs
        self.grad_clip = grad_clip
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.checkpoint_epochs = checkpoint_epochs
        self.checkpoint_seconds = checkpoint_seconds
        self._saved_at = time.monotonic()
        self.meta = meta or {}
        self.on_epoch_end = on_epoch_end
        self.on_epoch_start = on_epoch_start
        self.logger = logger if dist.is_main() else None
        self.items = SeededItems(dataset, seed)
        self.sampler = EpochSampler(len(dataset), shuffle=True, seed=seed, batch_size=batch_size)
        self.loader_args = dict(batch_size=batch_size // world, num_workers=num_workers,
                                drop_last=True, collate_fn=collate_fn)
        self.steps_per_epoch = self.sampler.num_batches
        if max_steps is not None:
            self.epochs = -(-max_steps // self.steps_per_epoch)  # ceil
        self.select_epochs = sorted({int(e) for e in select_epochs})
        if self.select_epochs:
            if val_dataset is None:
                raise ValueError("select_epochs needs a validation dataset (the train stage "
                                 "of a method builds one from data.val_split)")
            bad = [e for e in self.select_epochs if not 0 <= e <= self.epochs]
            if bad:
                raise ValueError(f"train.select_epochs {bad} lie outside 0..{self.epochs} "
                                 f"(numbers of completed epochs)")
        # The validation items keep their augmentation fixed per (seed, epoch) too.
        self.val_items = SeededItems(val_dataset, seed + 7919) if val_dataset is not None else None
        self.val_batch = batch_size // world
        self.val_losses: dict[int, float] = {}
        self.best_epoch: int | None = None
        self.max_steps = max_steps or max(self.steps_per_epoch * self.epochs, 1)
        self.optimizer = build_optimizer(param_groups, name=optimizer, momentum=momentum,
                                         weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(self.max_steps, poly_power)
        )
        self.amp = amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if world > 1:
            if device.type == "cuda":
                # BatchNorm that trains its statistics sees the whole batch, not a rank's share.
                # (PyTorch's SyncBatchNorm is CUDA-only: on gloo/CPU statistics stay per rank.)
                dist.convert_sync_batchnorm(self.model).to(device)
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        # Loss sums over this epoch's steps so far; checkpointed, so an epoch resumed midway
        # logs the mean over all its steps, as an uninterrupted one does.
        self.epoch_sums: dict[str, float] = {}

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "epoch_sums": self.epoch_sums,
            "val_losses": self.val_losses,
            "best_epoch": self.best_epoch,
            "rng": rng_state(),
            "meta": self.meta,
        }

    def save(self) -> None:
        if dist.is_main():
            save_checkpoint(self.last_path, self.state())
        dist.barrier()
        self._saved_at = time.monotonic()

    def _checkpoint_due(self) -> bool:
        """A checkpoint is due after this step, by steps or by time (the same answer on every
        rank: rank 0's clock decides)."""
        by_steps = bool(self.checkpoint_every) and self.global_step % self.checkpoint_every == 0
        if by_steps or not self.checkpoint_seconds:
            return by_steps
        late = time.monotonic() - self._saved_at >= self.checkpoint_seconds
        if dist.world_size() > 1:
            late = bool(dist.broadcast_object(late))
        return late

    def resume(self) -> bool:
        """Restore everything from `last.pt` if it exists; True when resumed."""
        if not self.last_path.is_file():
            return False
        state = load_checkpoint(self.last_path, map_location=self.device)
        load_model_state(self.model, state["model"], str(self.last_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.history = state["history"]
        self.epoch_sums = state.get("epoch_sums", {})
        self.val_losses = {int(k): v for k, v in state.get("val_losses", {}).items()}
        self.best_epoch = state.get("best_epoch")
        set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d step %d", self.last_path, self.epoch + 1,
                 self.step_in_epoch)
        return True

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @torch.no_grad()
    def validate(self, epoch: int) -> float:
        """Mean over validation batches of the summed loss terms, model in eval mode.

        Args:
            epoch: number of completed epochs (seeds the validation augmentation).

        Returns:
            the mean over every rank's batches.
        """
        assert self.val_items is not None
        self.val_items.epoch = epoch
        indices = dist.shard(range(len(self.val_items)))  # type: ignore[arg-type]
        loader = DataLoader(self.val_items, batch_size=self.val_batch,
                            num_workers=self.loader_args["num_workers"], sampler=indices)
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        try:
            for batch in loader:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    terms = self.step_fn(self.model, self._to_device(batch))
                total[0] += float(sum(v.detach().float() for v in terms.values()))
                total[1] += 1
        finally:
            self.model.train()
        total = dist.all_reduce_sum(total)
        if total[1] == 0:
            raise ValueError("the validation dataset of train.select_epochs is empty")
        return float(total[0] / total[1])

    def _select(self, epoch: int) -> None:
        """Validate after `epoch` completed epochs; keep the weights if they are the best."""
        if epoch not in self.select_epochs or epoch in self.val_losses:
            return
        loss = self.validate(epoch)
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite validation loss {loss} after epoch {epoch}")
        best = self.val_losses.get(self.best_epoch) if self.best_epoch is not None else None
        self.val_losses[epoch] = loss
        log.info("validation after epoch %d: loss %.4g", epoch, loss)
        if best is None or loss < best:
            self.best_epoch = epoch
            if dist.is_main():
                save_checkpoint(self.best_path, {"model": self.model.state_dict(),
                                                 "epoch": epoch, "loss": loss})
        self.save()

    def _restore_best(self) -> None:
        if self.best_epoch is None:
            return
        state = load_checkpoint(self.best_path, map_location=self.device)
        load_model_state(self.model, state["model"], str(self.best_path))
        log.info("kept the weights after epoch %d (validation loss %.4g)", self.best_epoch,
                 self.val_losses[self.best_epoch])

    def _loader(self) -> DataLoader:
        self.items.epoch = self.epoch
        self.sampler.set_epoch(self.epoch, start=self.step_in_epoch * self.loader_args["batch_size"])
        return DataLoader(self.items, sampler=self.sampler, **self.loader_args)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()}

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step; returns the detached loss terms (and `loss`, their sum)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            terms = self.step_fn(self.net, self._to_device(batch))
        # Logged values are means over ranks (each rank's batch share is the same size).
        stacked = torch.stack([v.detach().float() for v in terms.values()])
        stacked = dist.all_reduce_sum(stacked.clone()) / dist.world_size()
        values = {}
        for name, number in zip(terms, stacked.tolist(), strict=True):
            if not math.isfinite(number):
                saved = (f"the last good checkpoint is {self.last_path}"
                         if self.last_path.is_file() else
                         "no checkpoint was saved before it (a rerun starts the stage afresh)")
                raise TrainingError(
                    f"non-finite loss term '{name}' = {number} at epoch {self.epoch + 1}, "
                    f"step {self.global_step + 1}; {saved}"
                )
            values[name] = number
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        values["loss"] = sum(values.values())
        return values

    def fit(self) -> TrainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.model.train()
        while self.epoch < self.epochs:
            if self.on_epoch_start is not None:
                self.on_epoch_start(self.epoch)
            if self.step_in_epoch == 0:
                self.epoch_sums = {}
                self._select(self.epoch)
            bar = progress(self._loader(), total=self.steps_per_epoch,
                           initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                           enabled=dist.is_main())
            due = False
            for batch in bar:
                lrs = [group["lr"] for group in self.optimizer.param_groups]
                values = self.train_step(batch)
                self.step_in_epoch += 1
                self.global_step += 1
                for k, v in values.items():
                    self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                if self.global_step % max(self.log_every, 1) == 0:
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self.logger is not None:
                    self.logger.log_step(self.global_step, values, lrs, batch)
                due = self._checkpoint_due()
                if self.global_step >= self.max_steps:
                    break
                if due and self.step_in_epoch < self.steps_per_epoch:
                    self.save()
                    due = False
            means = {k: v / max(self.step_in_epoch, 1) for k, v in self.epoch_sums.items()}
            means["lr"] = self.optimizer.param_groups[0]["lr"]
            self.history.append({"epoch": self.epoch + 1, **means})
            log.info("epoch %d/%d  %s", self.epoch + 1, self.epochs,
                     "  ".join(f"{k}={v:.4g}" for k, v in means.items()))
            if self.logger is not None:
                self.logger.log_epoch(self.epoch + 1, self.global_step, means)
            if self.on_epoch_end is not None:
                self.on_epoch_end(self.epoch, means)
            self.epoch += 1
            self.step_in_epoch = 0
            last = self.epoch >= self.epochs or self.global_step >= self.max_steps
            if self.checkpoint_epochs or due or last:
                self.save()
        if self.epochs in self.select_epochs and self.epochs not in self.val_losses:
            if self.on_epoch_start is not None:
                self.on_epoch_start(self.epochs)  # as if a next epoch began (official order)
            self._select(self.epochs)
        self._restore_best()
        return TrainResult(epochs=self.epochs, steps=self.global_step, history=self.history,
                           val_losses=dict(self.val_losses), selected_epoch=self.best_epoch)
