"""The sweep's single-thread section and its dtype handling leave results and settings intact."""

from __future__ import annotations

import numpy as np
import torch

from wsss.metrics.confusion import confusion_matrix
from wsss.metrics.sweep import ThresholdSweep, sweep_confusion


def _image(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(2, 9, 11, generator=g).to(dtype)
    gts = torch.randint(0, 3, (9, 11), generator=g)
    gts[0, :3] = 255
    return cams, np.array([1, 2]), gts


def test_every_threshold_matches_a_direct_confusion_matrix_in_each_dtype() -> None:
    thresholds = [0.0, 0.1, 0.25, 0.5, 0.7, 0.99]
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        cams, keys, gts = _image(1, dtype)
        stack = sweep_confusion(cams, keys, gts, thresholds, 3)
        for t, tau in enumerate(thresholds):
            peak, arg = cams.max(0)
            tau_plane = torch.tensor(tau, dtype=dtype)
            pred = torch.where(peak > tau_plane, torch.as_tensor(keys)[arg], 0)
            assert torch.equal(stack[t, :, :3], confusion_matrix(pred, gts, 3)[:, :3]), (dtype, tau)


def test_thread_count_is_restored() -> None:
    threads = torch.get_num_threads()
    sweep = ThresholdSweep(3, [0.2, 0.4])
    cams, keys, gts = _image()
    sweep.update(cams, keys, gts, name="a")
    sweep_confusion(cams.numpy(), keys, gts.numpy(), [0.3], 3)
    assert torch.get_num_threads() == threads
    assert sweep.num_images == 1
