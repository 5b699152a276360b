"""ResNet-38 (stride 8) shapes, VGG16 shapes, and the MXNet .params converter round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.models.backbones import BACKBONES, FrozenStatsBatchNorm2d, build_backbone
from wsss.models.resnet38 import (
    ResNet38Backbone,
    convert_mxnet_resnet38,
    mxnet_name_to_torch,
    read_mxnet_params,
    write_mxnet_params,
)

TINY = (4, 8, 8, 16, 16, 16, 32)


def test_registered() -> None:
    assert "resnet38" in BACKBONES.names() and "vgg16" in BACKBONES.names()


def test_forward_shapes_at_output_stride_8() -> None:
    net = ResNet38Backbone(widths=TINY).eval()
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 41, 57))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 11, 15), (2, 16, 6, 8), (2, 16, 6, 8),
                                              (2, 32, 6, 8)]
    assert net.out_channels == [8, 16, 16, 32]


@pytest.mark.slow
def test_full_width_registered_backbone() -> None:
    assert "resnet38" in BACKBONES.names() and "vgg16" in BACKBONES.names()
    net = build_backbone("resnet38", output_stride=8, pretrained="none", frozen_bn=True).eval()
    assert net.out_channels == [256, 512, 1024, 4096]
    assert all(not p.requires_grad for m in net.modules()
               if isinstance(m, FrozenStatsBatchNorm2d) for p in m.parameters())
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 17, 17))
    assert [f.shape[1:] for f in feats] == [(256, 5, 5), (512, 3, 3), (1024, 3, 3), (4096, 3, 3)]
    with pytest.raises(ValueError):
        build_backbone("resnet38", output_stride=16, pretrained="none", frozen_bn=False)


def test_vgg16_shapes() -> None:
    net = build_backbone("vgg16", output_stride=8, pretrained="none", frozen_bn=False).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 33, 41))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 9, 11), (512, 5, 6), (512, 5, 6),
                                                  (1024, 5, 6)]


def test_name_mapping() -> None:
    assert mxnet_name_to_torch("arg:conv1a_weight") == "conv1a.weight"
    assert mxnet_name_to_torch("arg:res2a_branch1_weight") == "b2.conv_branch1.weight"
    assert mxnet_name_to_torch("arg:res4b3_branch2b1_weight") == "b4_3.conv_branch2b1.weight"
    assert mxnet_name_to_torch("arg:bn5b2_branch2a_gamma") == "b5_2.bn_branch2a.weight"
    assert mxnet_name_to_torch("aux:bn7a_branch2b2_moving_var") == "b7.bn_branch2b2.running_var"
    assert mxnet_name_to_torch("aux:bn7_moving_mean") == "bn7.running_mean"
    assert mxnet_name_to_torch("arg:bn7_beta") == "bn7.bias"
    assert mxnet_name_to_torch("arg:linear1000_weight") is None


def _mxnet_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Inverse of the mapping for a state dict (how the published file names its arrays)."""
    fields = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
              "running_var": "moving_var"}
    names = {}
    for key in state:
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "conv1a":
            names[key] = "arg:conv1a_weight"
            continue
        if parts[0] == "bn7":
            prefix = "aux" if parts[1].startswith("running") else "arg"
            names[key] = f"{prefix}:bn7_{fields[parts[1]]}"
            continue
        block = parts[0][1:]
        mx_block = f"{block}a" if "_" not in block else f"{block[0]}b{block[2:]}"
        layer, field = parts[1].split("_", 1), parts[2]
        if layer[0] == "conv":
            names[key] = f"arg:res{mx_block}_{layer[1]}_weight"
        else:
            prefix = "aux" if field.startswith("running") else "arg"
            names[key] = f"{prefix}:bn{mx_block}_{layer[1]}_{fields[field]}"
    return names


@pytest.mark.parametrize("version", [0, 1, 2])
def test_converter_round_trip(tmp_path: Path, version: int) -> None:
    torch.manual_seed(0)
    net = ResNet38Backbone(widths=TINY)
    for m in net.modules():  # non-trivial statistics so that every tensor is checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = net.state_dict()
    names = _mxnet_names(state)
    arrays = {names[k]: v.numpy() for k, v in state.items() if k in names}
    arrays["arg:linear1000_weight"] = np.ones((1000, 32), dtype=np.float32)
    path = tmp_path / "tiny.params"
    write_mxnet_params(path, arrays, version=version)
    assert set(read_mxnet_params(path)) == set(arrays)
    converted = convert_mxnet_resnet38(path)
    assert set(converted) == set(state)
    fresh = ResNet38Backbone(widths=TINY)
    fresh.load_state_dict(converted)
    for k, v in state.items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def test_reader_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.params"
    path.write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match="not an MXNet"):
        read_mxnet_params(path)
    write_mxnet_params(path, {"a": np.zeros((2, 2), np.float32)})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="truncated"):
        read_mxnet_params(path)
