"""The Caffe (MSRA) ResNet-101 of DeepLab-v2 (arXiv:1606.00915), with loading of its published
weights as `kazuto1011/deeplab-pytorch` converts them.

Layout of `kazuto1011/deeplab-pytorch: libs/models/resnet.py` and `deeplabv2.py`, which differs
from torchvision's ResNet in three places: the stride of a downsampling block sits in its first
1x1 convolution (`reduce`), not in the 3x3 one; the stem's 3x3 max-pool rounds up (ceil mode);
BatchNorm eps is 1e-5 everywhere. Modules keep deeplab-pytorch's names (`layer1.conv1.conv`,
`layer2.block1.reduce.bn`, ...), so its converted state dicts load key for key.

The Caffe weights expect BGR pixels in 0..255 minus the BGR mean (104.008, 116.669, 122.675)
(`configs/voc12.yaml`). The rest of wsss feeds RGB images normalised with the ImageNet mean and
std, so the backbone undoes that normalisation first (`input_space="imagenet"`, exact up to
float rounding); `input_space="caffe"` takes the Caffe input as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.models.backbones import BACKBONES, freeze_batchnorm_stats

__all__ = ["CAFFE_MEAN_BGR", "CaffeResNet", "caffe_state_dict", "load_caffe_weights"]

# deeplab-pytorch `configs/voc12.yaml` IMAGE.MEAN (B, G, R), the MSRA Caffe training mean.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
# Key prefixes of the files deeplab-pytorch writes: the COCO init (`deeplabv1_resnet101-coco.pth`,
# no prefix, with a 91-class `fc`), the converted VOC model (`base.` + `aspp.`) and a checkpoint
# of its `nn.DataParallel(MSC)` training (`module.base.`).
_PREFIXES = ("module.base.", "base.", "module.")
# Heads of those files that are not part of the backbone: the COCO init's classifier, the ASPP.
_HEAD_PREFIXES = ("fc.", "aspp.")


class _ConvBn(nn.Sequential):
    """conv (no bias) → BN (eps 1e-5) [→ ReLU] (`_ConvBnReLU`)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1,
                 dilation: int = 1, relu: bool = True) -> None:
        super().__init__()
        padding = dilation if kernel == 3 else kernel // 2
        self.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, padding, dilation,
                                          bias=False))
        # deeplab-pytorch momentum 1 − 0.999 (Caffe's moving-average fraction 0.999).
        self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=1 - 0.999))
        if relu:
            self.add_module("relu", nn.ReLU())


class _Bottleneck(nn.Module):
    """1x1 (stride) → 3x3 (dilation) → 1x1, plus a projection shortcut in the first block."""

    def __init__(self, cin: int, cout: int, *, stride: int, dilation: int,
                 downsample: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.reduce = _ConvBn(cin, mid, 1, stride=stride)
        self.conv3x3 = _ConvBn(mid, mid, 3, dilation=dilation)
        self.increase = _ConvBn(mid, cout, 1, relu=False)
        self.shortcut = (_ConvBn(cin, cout, 1, stride=stride, relu=False) if downsample
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class _Layer(nn.Sequential):
    def __init__(self, blocks: int, cin: int, cout: int, *, stride: int, dilation: int) -> None:
        super().__init__()
        for i in range(blocks):
            self.add_module(f"block{i + 1}", _Bottleneck(
                cin if i == 0 else cout, cout, stride=stride if i == 0 else 1,
                dilation=dilation, downsample=i == 0))


class _Stem(nn.Sequential):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.add_module("conv1", _ConvBn(3, width, 7, stride=2))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class CaffeResNet(nn.Module):
    """Caffe ResNet (bottleneck) cut into four stages, returning four maps like every backbone.

    Output stride 8 is DeepLab-v2's: layer4 (conv4_x) and layer5 (conv5_x) keep stride 1 with
    dilations 2 and 4; 16 keeps layer4's stride and dilates layer5 by 2; 32 is the ImageNet
    network.

    Args:
        blocks: bottleneck blocks of the four stages ((3, 4, 23, 3) for ResNet-101).
        output_stride: 8, 16 or 32.
        input_space: "imagenet" (RGB normalised with the ImageNet mean / std, what wsss feeds)
            or "caffe" (BGR, 0..255 minus `CAFFE_MEAN_BGR`).
        width: stem channels (64); the stages output 4, 8, 16 and 32 times as many (smaller
            values make networks for tests).
    """

    def __init__(self, *, blocks: Sequence[int] = (3, 4, 23, 3), output_stride: int = 8,
                 input_space: str = "imagenet", width: int = 64) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if input_space not in ("imagenet", "caffe"):
            raise ValueError(f"input_space must be 'imagenet' or 'caffe', got {input_space!r}")
        s4, d4 = (1, 2) if output_stride == 8 else (2, 1)
        s5, d5 = {8: (1, 4), 16: (1, 2), 32: (2, 1)}[output_stride]
        w = width
        self.layer1 = _Stem(w)
        self.layer2 = _Layer(blocks[0], w, 4 * w, stride=1, dilation=1)
        self.layer3 = _Layer(blocks[1], 4 * w, 8 * w, stride=2, dilation=1)
        self.layer4 = _Layer(blocks[2], 8 * w, 16 * w, stride=s4, dilation=d4)
        self.layer5 = _Layer(blocks[3], 16 * w, 32 * w, stride=s5, dilation=d5)
        self.out_channels: list[int] = [4 * w, 8 * w, 16 * w, 32 * w]
        self.output_stride = output_stride
        self.input_space = input_space
        # x_caffe[c] = 255·(std·x + mean)[rgb] − mean_bgr[c] with rgb = 2 − c (BGR order); kept
        # out of the state dict so that deeplab-pytorch's files load key for key.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("_in_scale", (255.0 * std).flip(0).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_in_shift", (255.0 * mean.flip(0) - torch.tensor(CAFFE_MEAN_BGR)
                                           ).view(1, 3, 1, 1), persistent=False)

    def to_caffe_input(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in `input_space` → the Caffe input (BGR, mean-subtracted)."""
        if self.input_space == "caffe":
            return images
        return images.flip(1) * self._in_scale.to(images.dtype) + self._in_shift.to(images.dtype)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) → four maps of strides 4, 8, 8|16, 8|16|32 (256, 512, 1024,
        2048 channels at width 64)."""
        x2 = self.layer2(self.layer1(self.to_caffe_input(images)))
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x2, x3, x4, self.layer5(x4)]

    def stage_modules(self) -> list[nn.Module]:
        """The four stages, for freezing and parameter groups."""
        return [nn.Sequential(self.layer1, self.layer2), self.layer3, self.layer4, self.layer5]


def caffe_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone part of a deeplab-pytorch state dict, with its prefix removed.

    Accepts the converted COCO init (`layer*` + `fc.*`), the converted VOC DeepLab-v2
    (`base.layer*` + `base.aspp.*`) and a deeplab-pytorch training checkpoint
    (`module.base.*`); heads (`fc.`, `aspp.`) are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if not key.startswith(_HEAD_PREFIXES):
            out[key] = value
    return out


def load_caffe_weights(module: CaffeResNet, path: str | Path) -> None:
    """Load a deeplab-pytorch ResNet-101 file (see `caffe_state_dict`) into `module`.

    Raises:
        FileNotFoundError: no such file (the message names it).
        RuntimeError: unreadable, or its keys or shapes do not fit the backbone; one line that
            names the file and the first mismatching keys.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model weights file not found: {path} (deeplab-pytorch's "
                                "converted deeplabv1_resnet101-coco.pth or an ImageNet "
                                "ResNet-101 caffemodel converted the same way)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot read the weights ({exc.__class__.__name__})"
                           ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: not a state dict ({type(state).__name__})")
    state = caffe_state_dict(state)
    # num_batches_tracked is not in the converted files (Caffe has no such counter).
    own = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own) - {k for k in state
                                                 if k.endswith("num_batches_tracked")})
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise RuntimeError(f"{path}: not a deeplab-pytorch Caffe ResNet state dict (missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}, shape mismatch "
                           f"{wrong[:3]})")
    module.load_state_dict(state, strict=False)


@BACKBONES.register("resnet101_caffe")
def resnet101_caffe(*, output_stride: int = 8, pretrained: str = "none", frozen_bn: bool = False
                    ) -> CaffeResNet:
    """Caffe ResNet-101 (DeepLab-v2); `pretrained` is "none" or a path to a deeplab-pytorch
    file (the converted COCO init `deeplabv1_resnet101-coco.pth`, or an ImageNet caffemodel
    converted by the same key mapping)."""
    net = CaffeResNet(blocks=(3, 4, 23, 3), output_stride=output_stride)
    if pretrained == "imagenet":
        raise ValueError("model weights: resnet101_caffe has no torchvision download; set the "
                         "path of a deeplab-pytorch converted caffemodel (.pth)")
    if pretrained not in ("", "none", None):
        load_caffe_weights(net, pretrained)
    if frozen_bn:
        freeze_batchnorm_stats(net)
    return net
