"""The CRF pool's start method: fork by default where safe, spawn on request, same results."""

from __future__ import annotations

import multiprocessing

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
