"""Two gloo processes on the CPU: same training trajectory, same files, same confusion matrices."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from ..conftest import SMOKE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, overrides: list[str], kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from wsss.config import load_config
    from wsss.engine import distributed as dist
    from wsss.pipeline.runner import run_pipeline

    try:
        run_pipeline(load_config(SMOKE, overrides), **kwargs)
    finally:
        dist.shutdown()


def _run(world: int, overrides: list[str], **kwargs) -> None:
    if world == 1:
        _worker(0, 1, 0, overrides, kwargs)
        os.environ.pop("RANK", None)
        os.environ.pop("WORLD_SIZE", None)
        return
    mp.spawn(_worker, args=(world, _free_port(), overrides, kwargs), nprocs=world, join=True)


@pytest.fixture()
def overrides(smoke_overrides: list[str]) -> list[str]:
    # Frozen-statistics BatchNorm (as the paper recipes): PyTorch's SyncBatchNorm is CUDA-only,
    # so trainable statistics would be per rank on CPU. Two epochs of 3 steps of 8 images.
    return smoke_overrides + ["train.epochs=2", "model.frozen_bn=true"]


def test_two_processes_follow_one_process(overrides: list[str], tmp_path: Path) -> None:
    _run(1, overrides + ["pipeline.name=one"], until="train_cam")
    _run(2, overrides + ["pipeline.name=two"], until="train_cam")
    runs = Path(overrides[1].split("=", 1)[1])
    one = json.loads((runs / "one/train_cam/history.json").read_text())
    two = json.loads((runs / "two/train_cam/history.json").read_text())
    assert len(one) == len(two) == 2
    # Same global batches and gradients averaged over ranks: the epoch-mean loss
    # agrees to float32 reduction-order noise.
    for a, b in zip(one, two, strict=True):
        assert b["cls"] == pytest.approx(a["cls"], rel=1e-4, abs=1e-5)


def test_sharded_make_cam_and_eval_match_one_process(overrides: list[str]) -> None:
    _run(1, overrides + ["pipeline.name=one", "train.epochs=1"], until="eval_cam")
    runs = Path(overrides[1].split("=", 1)[1])
    shutil.copytree(runs / "one", runs / "two")
    _run(2, overrides + ["pipeline.name=two", "train.epochs=1"], force=["make_cam"],
         until="eval_cam")
    manifest = json.loads((runs / "two/make_cam/manifest.json").read_text())
    assert manifest["summary"]["computed"] == manifest["summary"]["images"] // 2  # rank 0's half
    files_one = sorted(p.name for p in (runs / "one/make_cam/cams").iterdir())
    files_two = sorted(p.name for p in (runs / "two/make_cam/cams").iterdir())
    assert files_one == files_two and files_one
    for name in files_one:
        assert (runs / "one/make_cam/cams" / name).read_bytes() == \
               (runs / "two/make_cam/cams" / name).read_bytes()
    eval_one = json.loads((runs / "one/eval_cam/metrics.json").read_text())
    eval_two = json.loads((runs / "two/eval_cam/metrics.json").read_text())
    assert eval_two["fixed"] == eval_one["fixed"]
    assert np.array_equal(eval_two["sweep"]["miou"], eval_one["sweep"]["miou"])
    assert eval_two["sweep"]["per_image_best_thresholds"] == \
        eval_one["sweep"]["per_image_best_thresholds"]


def _dying_worker(rank: int, world: int, port: int, overrides: list[str], kwargs: dict) -> None:
    """Rank 1 dies in its fourth training step (epoch 2); rank 0 would wait in a collective."""
    if rank == 1:
        from wsss.engine.trainer import Trainer

        real = Trainer.train_step
        calls = {"n": 0}

        def dying(self, batch):
            calls["n"] += 1
            if calls["n"] == 4:
                os._exit(3)  # a killed process: no exception, no clean-up
            return real(self, batch)

        Trainer.train_step = dying  # type: ignore[method-assign]
    _worker(rank, world, port, overrides, kwargs)


def test_dead_rank_ends_the_job_and_rerun_resumes(overrides: list[str]) -> None:
    args = overrides + ["pipeline.name=dies"]
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_dying_worker, args=(2, _free_port(), args, {"until": "train_cam"}), nprocs=2,
                 join=True)
    runs = Path(overrides[1].split("=", 1)[1])
    assert (runs / "dies/train_cam/last.pt").is_file()  # epoch 1 was checkpointed
    assert not (runs / "dies/train_cam/manifest.json").exists()
    _run(2, args, until="train_cam")
    history = json.loads((runs / "dies/train_cam/history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
