"""The CAM baseline's inference copy: folded BatchNorms, channels-last, same CAMs, invalidation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import load_config
from wsss.methods import build_method
from wsss.methods.cam_baseline import inference_model, multiscale_cams, per_view_streams
from wsss.models.fused import FusedBlock
from wsss.ops.winograd import WinogradConv2d


def _method_and_model(frozen_bn: bool):
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=resnet18", "model.pretrained=none",
                             f"model.frozen_bn={str(frozen_bn).lower()}",
                             "method.name=cam_baseline"])
    method = build_method(cfg)
    model = method.build_model(num_classes=3)
    for m in model.modules():  # non-trivial statistics, so that folding has work to do
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return method, model.eval()


def test_folded_copy_gives_the_same_cams() -> None:
    for frozen in (False, True):
        method, model = _method_and_model(frozen)
        fast, channels_last = inference_model(model)
        assert channels_last and fast is not model
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
        image = np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)
        with torch.inference_mode():
            plain = multiscale_cams(model.cams, image, scales=list(method.mcfg.cam_scales), flip=True,
                                    stride=model.backbone.output_stride, device=torch.device("cpu"))
            fused = multiscale_cams(fast.cams, image, scales=list(method.mcfg.cam_scales), flip=True,
                                    stride=model.backbone.output_stride, device=torch.device("cpu"),
                                    channels_last=True)
            cams, keys = method.infer_cams(model, image, np.array([1, 0, 1], dtype=np.float32))
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4 * float(plain.max()))
        expected = plain[[0, 2]] / (plain[[0, 2]].amax((1, 2), keepdim=True) + 1e-5)
        np.testing.assert_allclose(cams, expected.numpy(), atol=1e-4)
        assert keys.tolist() == [1, 3]


def test_winograd_copy_gives_the_same_cams() -> None:
    # ResNet-18 at output stride 16: the stride-1 3x3 convolutions with >= 256 input channels
    # (3 in layer3, all 4 of layer4, whose first one keeps stride 1) become Winograd ones.
    method, model = _method_and_model(False)
    fast, _ = inference_model(model, winograd=True)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 7
    assert sum(isinstance(m, FusedBlock) for m in fast.modules()) == 8
    direct, _ = inference_model(model, winograd=False)
    assert not any(isinstance(m, WinogradConv2d) for m in direct.modules())
    image = np.random.default_rng(2).integers(0, 255, (53, 70, 3), dtype=np.uint8)
    kwargs = dict(scales=[1.0, 0.5, 1.5], flip=True, stride=model.backbone.output_stride,
                  device=torch.device("cpu"))
    with torch.inference_mode():
        plain = multiscale_cams(model.cams, image, **kwargs)
        winograd = multiscale_cams(fast.cams, image, channels_last=True, **kwargs)
    torch.testing.assert_close(winograd, plain, rtol=0, atol=1e-4 * float(plain.max()))
    # Both variants stay cached side by side (a benchmark alternates them).
    assert inference_model(model, winograd=True)[0] is fast
    assert inference_model(model, winograd=False)[0] is direct


def test_view_streams_give_the_same_cams_and_restore_the_thread_count(monkeypatch) -> None:
    import threading

    from wsss.methods import cam_baseline

    method, model = _method_and_model(False)
    fast, _ = inference_model(model, winograd=True)
    image = np.random.default_rng(3).integers(0, 255, (41, 57, 3), dtype=np.uint8)
    # Only the 2.0 scale (82x114 views) is large enough to be streamed here.
    monkeypatch.setattr(cam_baseline, "STREAM_MIN_PIXELS", 82 * 114)
    ran = []

    def cam_fn(views):
        ran.append((tuple(views.shape), threading.current_thread().name.startswith("wsss-view")))
        return fast.cams(views)

    kwargs = dict(scales=[1.0, 0.5, 2.0], flip=True, stride=model.backbone.output_stride,
                  device=torch.device("cpu"), channels_last=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # streams need more than one intra-op thread
    try:
        with torch.inference_mode():
            batched = multiscale_cams(cam_fn, image, **kwargs)
            assert not any(streamed for _, streamed in ran)
            ran.clear()
            streamed = multiscale_cams(cam_fn, image, view_streams=True, **kwargs)
            assert torch.get_num_threads() == 2
        assert sorted(ran) == sorted([((2, 3, 41, 57), False), ((2, 3, 20, 28), False),
                                      ((1, 3, 82, 114), True), ((1, 3, 82, 114), True)])
        torch.testing.assert_close(streamed, batched, rtol=0, atol=1e-5 * float(batched.max()))
    finally:
        torch.set_num_threads(threads)


def test_view_streams_carry_the_grad_mode_and_raise_a_stream_error() -> None:
    seen = []

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), x.shape[0]))
        return x * 2

    batches = [torch.ones(2, 3, 4, 5), torch.ones(2, 3, 2, 3)]
    with torch.no_grad():
        out = per_view_streams(cam_fn, batches)
    assert [o.shape for o in out] == [b.shape for b in batches]
    assert seen == [(False, False, 1)] * 4
    with torch.inference_mode():
        per_view_streams(cam_fn, batches)
    assert seen[4:] == [(False, True, 1)] * 4

    def failing(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("view failed")

    with pytest.raises(RuntimeError, match="view failed"):
        per_view_streams(failing, batches)


def test_copy_is_cached_and_rebuilt_after_a_weight_change() -> None:
    _, model = _method_and_model(False)
    first, _ = inference_model(model)
    assert inference_model(model)[0] is first
    with torch.no_grad():
        model.classifier.weight.mul_(2.0)
    second, _ = inference_model(model)
    assert second is not first
    torch.testing.assert_close(second.classifier.weight, model.classifier.weight)


def test_training_mode_model_is_used_as_is() -> None:
    _, model = _method_and_model(False)
    model.train()
    assert inference_model(model) == (model, False)


@pytest.mark.slow
def test_compiled_copy_gives_the_same_cams_for_any_image_size() -> None:
    # `pipeline.compile`: torch.compile with dynamic shapes (one compile, ~20 s on a CPU).
    method, model = _method_and_model(False)
    method.cfg.pipeline.compile = True
    labels = np.array([1, 1, 0], dtype=np.float32)
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        for size in ((45, 61), (52, 40)):
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            compiled, _ = method.infer_cams(model, image, labels)
            method.cfg.pipeline.compile = False
            eager, _ = method.infer_cams(model, image, labels)
            method.cfg.pipeline.compile = True
            np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert inference_model(model)[0] is not inference_model(model, compile=True)[0]
