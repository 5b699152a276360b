"""The CRF pool's start method: fork by default where safe, spawn on request, same results."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest
import torch

from wsss.ops import crf


def test_default_start_method_is_fork_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert crf._default_start_method() == "fork"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert crf._default_start_method() == "spawn"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert crf._default_start_method() == "spawn"


def test_spawn_and_fork_pools_match_the_sequential_loop() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (14, 17, 3), dtype=np.uint8) for _ in range(3)]
    probs = [rng.random((3, 14, 17)).astype(np.float32) for _ in range(3)]
    sequential = crf.dense_crf_batch(images, probs, workers=1, num_iter=3)
    for method in ("spawn", None):
        pooled = crf.dense_crf_batch(images, probs, workers=2, start_method=method, num_iter=3)
        for a, b in zip(sequential, pooled, strict=True):
            np.testing.assert_array_equal(a, b)


def test_pool_balances_and_raises_a_child_failure(monkeypatch) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(4)
    # Unequal sizes; three workers (this process + two children) over seven images.
    images = [rng.integers(0, 256, (8 + 3 * i, 11, 3), dtype=np.uint8) for i in range(7)]
    probs = [rng.random((2, 8 + 3 * i, 11)).astype(np.float32) for i in range(7)]
    sequential = crf.dense_crf_batch(images, probs, workers=1, num_iter=2)
    pooled = crf.dense_crf_batch(images, probs, workers=3, num_iter=2)
    for a, b in zip(sequential, pooled, strict=True):
        np.testing.assert_array_equal(a, b)
    # Malformed input is refused before any work starts, naming the input.
    bad = probs[:3] + [probs[3][:, :-1]] + probs[4:]
    with pytest.raises(ValueError, match="input 3: probs must be"):
        crf.dense_crf_batch(images, bad, workers=2, num_iter=2)
    # A failure inside a child (forked, so it inherits the patch) fails the call, never hangs.
    parent = os.getpid()
    real_job = crf._dense_crf_job

    def job_failing_in_children(args):
        if os.getpid() != parent:
            raise MemoryError("simulated")
        time.sleep(0.3)  # leave the child time to claim an image
        return real_job(args)

    monkeypatch.setattr(crf, "_dense_crf_job", job_failing_in_children)
    with pytest.raises(RuntimeError, match="worker failed: MemoryError"):
        crf.dense_crf_batch(images, probs, workers=2, start_method="fork", num_iter=2)
