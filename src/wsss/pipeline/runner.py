"""Plan and run a method's stages: skip unchanged ones, resume killed ones, rerun changed ones."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from wsss.config import RunConfig, dump_config, select, to_dict
from wsss.engine import distributed as dist
from wsss.io import remove_temporaries, write_text
from wsss.logs import attach_run_log
from wsss.pipeline.artifacts import (
    PipelineError,
    RunInterrupted,
    fingerprint,
    read_in_progress,
    read_manifest,
    run_lock,
    write_in_progress,
    write_manifest,
    write_plan,
)
from wsss.pipeline.stages import Stage, StageContext, select_stages

log = logging.getLogger("wsss")


@dataclass
class StageOutcome:
    name: str
    status: str  # ran | skipped | resumed
    seconds: float
    peak_rss_mb: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    outcomes: list[StageOutcome]

    def summary(self, stage: str) -> dict[str, Any]:
        manifest = read_manifest(self.run_dir / stage)
        return (manifest or {}).get("summary", {})


def resolve_device(name: str) -> torch.device:
    """`auto` → this rank's CUDA device when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"pipeline.device={name} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank())
    return device


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch with `seed + rank`; optionally force deterministic kernels.

    `deterministic` sets CUBLAS_WORKSPACE_CONFIG (unless set), deterministic algorithms and the
    cuDNN flags. Ops without a deterministic CUDA kernel (the backward of bilinear
    interpolation, which every segmentation loss at label size uses) warn instead of raising,
    so a deterministic run still trains; those ops stay non-deterministic on CUDA.
    """
    seed = seed + dist.rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _stage_seed(seed: int, stage: str) -> int:
    """A seed for one stage from the run seed and the stage name (stable across processes)."""
    return (seed * 1000003 + zlib.crc32(stage.encode())) % 2**31


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config_subset(cfg: RunConfig, keys: Iterable[str]) -> dict[str, Any]:
    out = {}
    for key in keys:
        value = select(cfg, key)
        out[key] = to_dict(value) if hasattr(value, "__dataclass_fields__") else value
    return out


def run_pipeline(
    cfg: RunConfig,
    *,
    start: str | None = None,
    until: str | None = None,
    only: Iterable[str] = (),
    force: Iterable[str] = (),
    wait: bool = False,
) -> RunResult:
    """Run the pipeline of `cfg.method` into `<pipeline.workdir>/<pipeline.name>/`.

    A stage is skipped when its manifest's fingerprint (config subset, upstream completions,
    package version) matches; `--from S` and `--force S` rerun S, and a stage that reruns makes
    every stage after it rerun. A stage killed midway resumes into its own partial outputs when
    its fingerprint is unchanged, and starts from an empty folder otherwise. A stage that scores
    against ground truth is skipped, with a line saying so, when its split has no masks.

    The run directory is locked for the duration (`wait`: queue behind another run instead of
    failing), must hold a run of the same method and data root, and records in `plan.json`
    which stages' outputs are current.

    Raises:
        PipelineError: the run directory is busy or holds another run; a selected stage's
            inputs have not been made.
        RunInterrupted: Ctrl-C; the message names the stage and how to resume.
    """
    from wsss.methods import build_method

    device = resolve_device(cfg.pipeline.device)
    dist.init_from_env(device)
    seed_everything(cfg.pipeline.seed, deterministic=cfg.pipeline.deterministic)
    method = build_method(cfg)
    all_stages: list[Stage] = method.stages()
    if cfg.pipeline.stages:
        unknown = sorted(set(cfg.pipeline.stages) - {s.name for s in all_stages})
        if unknown:
            raise ValueError(f"pipeline.stages: unknown stages {unknown}; this method has "
                             f"{', '.join(s.name for s in all_stages)}")
        all_stages = [s for s in all_stages if s.name in cfg.pipeline.stages]
    chosen = {s.name for s in select_stages(all_stages, start=start, until=until, only=only)}
    forced = set(force) | ({start} if start else set())
    run_dir = Path(cfg.pipeline.workdir) / cfg.pipeline.name
    with contextlib.ExitStack() as stack:
        problem = None
        if dist.is_main():
            try:
                stack.enter_context(run_lock(run_dir, wait=wait))
                # an existing run: its log also records a refusal
                if (run_dir / "config.yaml").is_file():
                    attach_run_log(run_dir)
                check_run_identity(run_dir, cfg)
            except PipelineError as exc:
                problem = str(exc)
        problem = dist.broadcast_object(problem)
        if problem:
            raise PipelineError(problem)
        return _run_stages(cfg, method, all_stages, chosen, forced, run_dir, device)


def _identity(data: dict[str, Any]) -> tuple[Any, Any]:
    method = (data.get("method") or {}).get("name")
    root = (data.get("data") or {}).get("root")
    return method, os.path.abspath(os.path.expanduser(str(root))) if root else root


def check_run_identity(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse a config whose method or data root differs from the run already in `run_dir`.

    Raises:
        PipelineError: naming both runs and the flags that start a new run directory.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # an unreadable config.yaml describes nothing; this run's replaces it
    if not isinstance(old, dict):
        return
    (old_method, old_root), (new_method, new_root) = _identity(old), _identity(to_dict(cfg))
    changes = []
    if old_method and old_method != new_method:
        changes.append(f"method {new_method}")
    if old_root and old_root != new_root:
        changes.append(f"data.root {new_root}")
    if changes:
        raise PipelineError(
            f"{run_dir} holds a {old_method} run on {old_root}; this config asks for "
            f"{' and '.join(changes)}. Start a new run directory with --set "
            f"pipeline.name=NAME (or --workdir DIR), or delete {run_dir} to reuse it"
        )


def _missing_ground_truth(cfg: RunConfig, stage: Stage, cache: dict[str, str | None]
                          ) -> str | None:
    """Why `stage` has nothing to score against (its split has no masks), else None."""
    if not stage.ground_truth:
        return None
    split = select(cfg, stage.ground_truth)
    if split not in cache:
        from wsss.data import build_dataset

        dataset = build_dataset(cfg.data, split)
        where = ("data.mask_dir is null" if cfg.data.mask_dir is None
                 else f"no folder {dataset.root / cfg.data.mask_dir}")
        cache[split] = None if dataset.has_masks else (
            f"split '{split}' has no ground-truth masks ({where}; image-level labels from "
            f"{dataset.label_source}), nothing to score")
    return cache[split]


def _check_inputs(run_dir: Path, stage: Stage, by_name: dict[str, Stage], verified: set[Path]
                  ) -> None:
    """Load the trained networks (`model.pt`) of `stage`'s upstream stages before its old
    outputs are cleared, so a corrupt checkpoint is refused while the old outputs still exist."""
    from wsss.engine.checkpoint import load_checkpoint

    todo, seen = list(stage.needs), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += list(by_name[name].needs) if name in by_name else []
        path = run_dir / name / "model.pt"
        if path.is_file() and path not in verified:
            load_checkpoint(path, map_location="cpu")
            verified.add(path)


def _run_stages(cfg: RunConfig, method: Any, all_stages: list[Stage], chosen: set[str],
                forced: set[str], run_dir: Path, device: torch.device) -> RunResult:
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        attach_run_log(run_dir)  # <run>/log.txt gets every log line from here on
        remove_temporaries(run_dir)
        write_text(run_dir / "config.yaml", dump_config(cfg))
    dist.barrier()

    by_name = {s.name: s for s in all_stages}
    completions: dict[str, str] = {}
    manifests: dict[str, dict[str, Any]] = {}
    outcomes: list[StageOutcome] = []
    current: list[str] = []  # stages whose outputs follow from this config and current inputs
    gt_by_split: dict[str, str | None] = {}
    no_ground_truth: dict[str, str] = {}  # stage -> why it was skipped
    verified: set[Path] = set()
    for stage in all_stages:
        stage_dir = run_dir / stage.name
        upstream = {}
        for need in stage.needs:
            if need not in completions and stage.name not in chosen:
                break
            if need not in completions:
                why = ("it was skipped: " + no_ground_truth[need]) if need in no_ground_truth \
                    else f"which has not completed in {run_dir}"
                raise PipelineError(
                    f"stage {stage.name} needs {need}, {why}; run {need} first (e.g. "
                    f"--until {stage.name} instead of --only/--from)"
                )
            upstream[need] = completions[need]
        if len(upstream) < len(stage.needs):
            continue  # not selected and its inputs are not there: nothing to record
        fp = fingerprint({
            "stage": stage.name,
            "config": _config_subset(cfg, stage.depends_on),
            "upstream": upstream,
        })
        manifest = read_manifest(stage_dir)
        up_to_date = manifest is not None and manifest.get("fingerprint") == fp
        if stage.name not in chosen or (up_to_date and stage.name not in forced):
            if manifest is not None:
                completions[stage.name] = manifest["completion"]
                manifests[stage.name] = manifest
                if up_to_date and all(n in current for n in stage.needs):
                    current.append(stage.name)
                if stage.name in chosen:
                    log.info("stage %-14s up to date, skipped", stage.name)
                    outcomes.append(StageOutcome(stage.name, "skipped", 0.0, 0.0,
                                                 manifest.get("summary", {})))
            continue
        why = _missing_ground_truth(cfg, stage, gt_by_split)
        if why:
            no_ground_truth[stage.name] = why
            log.info("stage %-14s skipped: %s", stage.name, why)
            outcomes.append(StageOutcome(stage.name, "no-gt", 0.0, 0.0))
            continue

        resume = (not up_to_date and stage.name not in forced
                  and read_in_progress(stage_dir) == fp)
        if dist.is_main():
            if not resume and stage_dir.exists():
                _check_inputs(run_dir, stage, by_name, verified)
                shutil.rmtree(stage_dir)
            if resume:  # temporaries of writes a kill interrupted (checkpoints, per-image files)
                for folder in [stage_dir, *(p for p in stage_dir.rglob("*") if p.is_dir())]:
                    remove_temporaries(folder)
            stage_dir.mkdir(parents=True, exist_ok=True)
            (stage_dir / "manifest.json").unlink(missing_ok=True)
            write_in_progress(stage_dir, fp)
        dist.barrier()
        log.info("stage %-14s %s", stage.name, "resuming" if resume else "running")
        _reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        # Each stage draws from RNGs seeded by (seed, stage name), not from what the stages
        # before it drew in this process: a resumed run skips those stages, and a stage that
        # starts from scratch there must still build the same initial weights.
        seed_everything(_stage_seed(cfg.pipeline.seed, stage.name),
                        deterministic=cfg.pipeline.deterministic)
        context = StageContext(cfg=cfg, run_dir=run_dir, out_dir=stage_dir, device=device,
                               method=method, upstream=dict(manifests))
        try:
            summary = stage.run(context) or {}
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"interrupted during stage {stage.name}; rerun the same command to resume "
                f"(finished stages are skipped, {stage.name} goes on from its last saved "
                "item or checkpoint)"
            ) from None
        seconds = time.perf_counter() - began
        peak = _peak_rss_mb()
        resources = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1)}
        if device.type == "cuda":
            resources["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        body = {
            "stage": stage.name,
            "fingerprint": fp,
            "completion": uuid.uuid4().hex,
            "config": _config_subset(cfg, stage.depends_on),
            "upstream": upstream,
            "summary": summary,
            "resources": resources,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # Every rank must agree on the completion id, so rank 0's is broadcast through the file.
        if dist.is_main():
            write_manifest(stage_dir, body)
            (stage_dir / ".inprogress.json").unlink(missing_ok=True)
        dist.barrier()
        manifest = read_manifest(stage_dir) or body
        completions[stage.name] = manifest["completion"]
        manifests[stage.name] = manifest
        current.append(stage.name)
        outcomes.append(StageOutcome(stage.name, "resumed" if resume else "ran", seconds, peak,
                                     summary))
    if dist.is_main():
        write_text(run_dir / "stages.json",
                   json.dumps([o.__dict__ for o in outcomes], indent=2, default=str) + "\n")
        write_plan(run_dir, [s.name for s in all_stages], current)
    return RunResult(run_dir=run_dir, outcomes=outcomes)


def format_resources(outcomes: list[StageOutcome]) -> str:
    """A table of per-stage status, wall time and peak resident memory."""
    width = max([len("stage")] + [len(o.name) for o in outcomes]) + 2  # long names stay apart
    lines = [f"{'stage':<{width}}{'status':<10}{'seconds':>10}{'peak RSS MB':>14}"]
    for o in outcomes:
        lines.append(f"{o.name:<{width}}{o.status:<10}{o.seconds:>10.1f}{o.peak_rss_mb:>14.0f}")
    return "\n".join(lines)
