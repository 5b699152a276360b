"""The Caffe ResNet of DeepLab-v2: layout, input conversion, loading deeplab-pytorch files, and an
import graph without cycles between the backbone modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.data.transforms import normalize_image
from wsss.models.backbones import BACKBONES
from wsss.models.resnet_caffe import CAFFE_MEAN_BGR, CaffeResNet, load_caffe_weights

SRC = Path(__file__).resolve().parents[2] / "src" / "wsss" / "models"


def _small(**kwargs) -> CaffeResNet:
    return CaffeResNet(blocks=(1, 1, 1, 1), width=4, **kwargs)


def test_stride_in_the_1x1_conv_and_ceil_mode_pool() -> None:
    net = _small(input_space="caffe").eval()
    first = net.layer3.block1
    assert first.reduce.conv.stride == (2, 2) and first.conv3x3.conv.stride == (1, 1)
    assert net.layer5.block1.conv3x3.conv.dilation == (4, 4)  # output stride 8
    # 35 px → 7x7/2 conv: 18 → 3x3/2 pool with ceil mode: 10 (floor mode would give 9).
    assert net.layer1(torch.zeros(1, 3, 35, 35)).shape[-1] == 10
    maps = net(torch.zeros(1, 3, 35, 35))
    assert [m.shape[1] for m in maps] == net.out_channels == [16, 32, 64, 128]
    assert [m.shape[-1] for m in maps] == [10, 5, 5, 5]


def test_imagenet_input_becomes_the_caffe_input() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    caffe = _small().to_caffe_input(normalize_image(image)[None])[0]
    expected = (image[:, :, ::-1] - np.array(CAFFE_MEAN_BGR)).transpose(2, 0, 1)
    np.testing.assert_allclose(caffe.numpy(), expected, atol=1e-4)


def _published(net: CaffeResNet, prefix: str, head: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """A state dict with deeplab-pytorch's key names (`convert.py` output: no
    num_batches_tracked) and random values."""
    g = torch.Generator().manual_seed(1)
    state = {prefix + k: torch.randn(v.shape, generator=g)
             for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    return {**state, **{prefix + k: v for k, v in head.items()}}


@pytest.mark.parametrize("prefix,head", [
    ("", {"fc.weight": torch.zeros(91, 128, 1, 1), "fc.bias": torch.zeros(91)}),  # COCO init
    ("base.", {"aspp.c0.weight": torch.zeros(21, 128, 3, 3)}),  # converted VOC DeepLab-v2
    ("module.base.", {"aspp.c0.bias": torch.zeros(21)}),  # a deeplab-pytorch checkpoint
])
def test_loads_deeplab_pytorch_files(tmp_path: Path, prefix: str, head: dict) -> None:
    published = _published(_small(), prefix, head)
    path = tmp_path / "init.pth"
    torch.save(published, path)
    net = _small()
    load_caffe_weights(net, path)
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, published[prefix + key]), key


def test_mismatched_file_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    published = _published(_small(), "", {})
    del published["layer2.block1.reduce.conv.weight"]
    path = tmp_path / "torchvision_resnet.pth"
    torch.save(published, path)
    with pytest.raises(RuntimeError) as err:
        load_caffe_weights(_small(), path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "layer2.block1.reduce.conv.weight" in message
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_caffe_weights(_small(), tmp_path / "absent.pth")


def test_registered_builder() -> None:
    build = BACKBONES.get("resnet101_caffe")
    with pytest.raises(ValueError, match="resnet101_caffe"):
        build(pretrained="imagenet")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_backbone_modules_do_not_import_each_other_in_a_cycle() -> None:
    uses = {name: _imports(SRC / f"{name}.py")
            for name in ("backbones", "resnet38", "vgg", "resnet_caffe")}
    for name in ("resnet38", "vgg", "resnet_caffe"):
        assert f"wsss.models.{name}" not in uses["backbones"]
        assert "wsss.models.backbones" in uses[name]
    # Any entry point registers every backbone.
    code = ("import wsss.models.resnet38 as r; from wsss.models.backbones import BACKBONES; "
            "print(sorted(BACKBONES.names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(SRC.parents[1])})
    for name in ("resnet38", "vgg16", "resnet101_caffe", "resnet50"):
        assert f"'{name}'" in out.stdout
