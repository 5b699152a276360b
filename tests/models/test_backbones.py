"""Backbones: output strides, frozen BatchNorm statistics, weight loading with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss.models.backbones import BACKBONES, FrozenStatsBatchNorm2d, build_backbone
from wsss.models.cam_classifier import CamClassifier


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_output_stride(stride: int) -> None:
    net = build_backbone("resnet18", output_stride=stride, pretrained="none", frozen_bn=False)
    feats = net(torch.randn(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (64 // stride, 96 // stride)
    assert [f.shape[1] for f in feats] == net.out_channels


def test_resnet50_channels_and_registry() -> None:
    assert {"resnet18", "resnet34", "resnet50", "resnet101"} <= set(BACKBONES.names())
    net = build_backbone("resnet50", output_stride=16, pretrained="none", frozen_bn=True)
    assert net.out_channels == [256, 512, 1024, 2048]


def test_narrow_resnet18_is_resnet18_at_half_width() -> None:
    import torchvision

    from wsss.models.backbones import narrow_resnet18

    full, narrow = torchvision.models.resnet18(), narrow_resnet18(32)
    # the same keys (torchvision's names), every channel count halved
    assert list(full.state_dict()) == list(narrow.state_dict())
    for key, value in narrow.state_dict().items():
        ref = full.state_dict()[key]
        assert value.ndim == ref.ndim, key
        if key.endswith("weight") and value.ndim == 4:
            expect = (ref.shape[0] // 2, 3 if key == "conv1.weight" else ref.shape[1] // 2)
            assert tuple(value.shape[:2]) == expect, key
            assert value.shape[2:] == ref.shape[2:], key
    net = build_backbone("resnet18_w32", output_stride=8, pretrained="none", frozen_bn=True)
    assert net.out_channels == [32, 64, 128, 256]
    feats = net(torch.randn(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (8, 12)
    with pytest.raises(Exception, match="resnet18_w32 has no ImageNet weights"):
        build_backbone("resnet18_w32", output_stride=16, pretrained="imagenet", frozen_bn=False)


def test_frozen_bn_keeps_statistics_in_train_mode() -> None:
    net = build_backbone("resnet18", output_stride=16, pretrained="none", frozen_bn=True)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenStatsBatchNorm2d) for m in bns)
    before = [m.running_mean.clone() for m in bns]
    net.train()
    net(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns, strict=True))
    assert all(m.weight.requires_grad for m in bns)


def test_local_state_dict_loads(tmp_path: Path) -> None:
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    net = build_backbone("resnet18", output_stride=32, pretrained=str(path), frozen_bn=False)
    assert torch.equal(net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_mismatched_state_dict_names_the_problem(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError, match="do not match"):
        build_backbone("resnet18", output_stride=16, pretrained=str(path), frozen_bn=False)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("resnet18", output_stride=16, pretrained=str(tmp_path / "missing.pth"),
                       frozen_bn=False)


def test_imagenet_without_network_says_where_to_put_the_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"resnet18-.*\.pth.*place it at"):
        build_backbone("resnet18", output_stride=16, pretrained="imagenet", frozen_bn=False)


def test_cam_classifier_cams_match_logits() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", output_stride=16, pretrained="none", frozen_bn=False)
    model = CamClassifier(backbone=backbone, num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    # GAP commutes with the 1x1 classifier: the mean of the pre-ReLU CAM equals the logit.
    feats = model.features(images)
    raw = torch.nn.functional.conv2d(feats, model.classifier.weight)
    assert torch.allclose(raw.mean(dim=(2, 3)), model(images), atol=1e-5)
    assert (model.cams(images) >= 0).all()


def test_detached_stages_get_no_gradient() -> None:
    backbone = build_backbone("resnet18", output_stride=16, pretrained="none", frozen_bn=False)
    model = CamClassifier(backbone=backbone, num_classes=3, detach_stages=2)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert backbone.layer1[0].conv1.weight.grad is None
    assert backbone.layer2[0].conv1.weight.grad is None
    assert backbone.layer3[0].conv1.weight.grad is not None
