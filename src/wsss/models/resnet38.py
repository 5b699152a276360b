"""WideResNet-38 ("ResNet-38d", model A1 of Wu et al., arXiv:1611.10080) at output stride 8.

The topology and parameter names follow `jiwoon-ahn/psa: network/resnet38d.py` (psa_affinitynet.md
§2), so that the published ImageNet weights (`ilsvrc-cls_rna-a1_cls1000_ep-0001.params`, an MXNet
NDArray list) convert by name. `read_mxnet_params` reads that binary format with numpy alone and
`convert_mxnet_resnet38` renames its arrays into this module's state dict.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.backbones import BACKBONES, freeze_batchnorm_stats, load_pretrained

__all__ = [
    "ResNet38Backbone",
    "convert_mxnet_resnet38",
    "read_mxnet_params",
    "resnet38",
    "write_mxnet_params",
]


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convolutions (bias-free).

    t = ReLU(BN(x)); shortcut = x when shapes match, else a strided 1x1 convolution of t;
    out = shortcut + conv3x3(dil d)(ReLU(BN(conv3x3(stride s, dil d1)(t)))).
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, *, stride: int = 1,
                 dilation: int = 1, first_dilation: int | None = None) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → (block output, t = ReLU(BN(x)), the pre-activation that PSA taps)."""
        t = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(t)
        branch = self.conv_branch2a(t)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch, t


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck (1x1 → 3x3 dilated → 1x1, widths out/4, out/2, out) with
    Dropout2d after each inner ReLU; the shortcut is always a 1x1 convolution of t."""

    def __init__(self, in_ch: int, out_ch: int, *, dilation: int, dropout: float) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.bn_branch2a(x))
        branch = self.conv_branch2a(t)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return self.conv_branch1(t) + branch, t


# (name, in, mid, out, stride, dilation, first_dilation) of the ResBlocks; psa_affinitynet.md §2.
_BASE_WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)


class ResNet38Backbone(nn.Module):
    """WideResNet-38 returning four maps at strides (4, 8, 8, 8).

    Outputs: `conv3` = output of b3_2 (raw residual sum, 256 ch, stride 4; 1-Stage's skip input),
    `conv4` = ReLU(BN(·)) entering b5 (512 ch), `conv5` = the one entering b6 (1024 ch) and
    `conv6` = ReLU(bn7(b7)) (4096 ch), the last three at stride 8 (ceil(H / 8): 321 → 41).

    Args:
        widths: the seven channel widths (64, 128, 256, 512, 1024, 2048, 4096); tests pass
            smaller ones. Pretrained weights need the defaults.
        output_stride: only 8 (the network's native stride) is supported.
    """

    def __init__(self, *, widths: Sequence[int] = _BASE_WIDTHS, output_stride: int = 8) -> None:
        super().__init__()
        if output_stride != 8:
            raise ValueError(f"resnet38 has output stride 8 only, got {output_stride}")
        if len(widths) != 7:
            raise ValueError(f"widths must list 7 channel counts, got {list(widths)}")
        w1, w2, w3, w4, w5, w6, w7 = (int(w) for w in widths)
        self.conv1a = nn.Conv2d(3, w1, 3, padding=1, bias=False)
        self.b2 = ResBlock(w1, w2, w2, stride=2)
        self.b2_1 = ResBlock(w2, w2, w2)
        self.b2_2 = ResBlock(w2, w2, w2)
        self.b3 = ResBlock(w2, w3, w3, stride=2)
        self.b3_1 = ResBlock(w3, w3, w3)
        self.b3_2 = ResBlock(w3, w3, w3)
        self.b4 = ResBlock(w3, w4, w4, stride=2)
        self.b4_1 = ResBlock(w4, w4, w4)
        self.b4_2 = ResBlock(w4, w4, w4)
        self.b4_3 = ResBlock(w4, w4, w4)
        self.b4_4 = ResBlock(w4, w4, w4)
        self.b4_5 = ResBlock(w4, w4, w4)
        self.b5 = ResBlock(w4, w4, w5, dilation=2, first_dilation=1)
        self.b5_1 = ResBlock(w5, w4, w5, dilation=2)
        self.b5_2 = ResBlock(w5, w4, w5, dilation=2)
        self.b6 = BottleneckBlock(w5, w6, dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(w6, w7, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(w7)
        self.out_channels: list[int] = [w3, w4, w5, w7]
        self.output_stride = 8

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) → [conv3 (B, 256, H/4, W/4), conv4, conv5, conv6 (B, ·, H/8, W/8)]
        (sizes rounded up)."""
        x = self.conv1a(images)
        for block in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2):
            x = block(x)[0]
        conv3 = x
        for block in (self.b4, self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5):
            x = block(x)[0]
        x, conv4 = self.b5(x)
        x = self.b5_2(self.b5_1(x)[0])[0]
        x, conv5 = self.b6(x)
        x = self.b7(x)[0]
        conv6 = F.relu(self.bn7(x))
        return [conv3, conv4, conv5, conv6]

    def stage_modules(self) -> list[nn.Module]:
        """Stages ending at each returned map, for freezing and parameter groups."""
        return [
            nn.Sequential(self.conv1a, self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1,
                          self.b3_2),
            nn.Sequential(self.b4, self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5),
            nn.Sequential(self.b5, self.b5_1, self.b5_2),
            nn.Sequential(self.b6, self.b7, self.bn7),
        ]


@BACKBONES.register("resnet38")
def resnet38(*, output_stride: int = 8, pretrained: str = "none", frozen_bn: bool = False
             ) -> ResNet38Backbone:
    """WideResNet-38 at output stride 8.

    `pretrained` is "none" or a PyTorch state dict path; convert the published MXNet file first
    (`python -m wsss.models.resnet38 ilsvrc-cls_rna-a1_cls1000_ep-0001.params out.pth`).
    `frozen_bn` follows PSA/1-Stage: every BatchNorm uses its running statistics and its affine
    parameters do not train.
    """
    if pretrained == "imagenet":
        raise ValueError("resnet38 has no torchvision weights: convert "
                         "ilsvrc-cls_rna-a1_cls1000_ep-0001.params with "
                         "`python -m wsss.models.resnet38 IN.params OUT.pth` and pass OUT.pth")
    net = ResNet38Backbone(output_stride=output_stride)
    load_pretrained(net, pretrained, backbone="resnet38")
    if frozen_bn:
        freeze_batchnorm_stats(net)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)
    return net


# MXNet NDArray list files ---------------------------------------------------------------------
# Layout (mxnet src/ndarray/ndarray.cc, `NDArray::Save` / `Load` and the list wrapper):
#   uint64 0x112 list magic, uint64 reserved, uint64 count, `count` arrays, uint64 count,
#   `count` names (uint64 length + bytes). An array is one of
#   legacy: uint32 ndim, ndim × uint32 dims, ...
#   V1:     uint32 0xF993FAC8, uint32 ndim, ndim × int64 dims, ...
#   V2:     uint32 0xF993FAC9, int32 storage type (0 = dense), uint32 ndim, ndim × int64 dims, ...
#   then (unless ndim = 0) int32 device type, int32 device id, int32 dtype flag, raw data
#   (little endian, C order).
_LIST_MAGIC = 0x112
_V1_MAGIC = 0xF993FAC8
_V2_MAGIC = 0xF993FAC9
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
           6: np.int64}


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated MXNet params file at byte {self.pos}")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated MXNet params file at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def _read_array(r: _Reader) -> np.ndarray:
    (head,) = r.take("<I")
    if head in (_V1_MAGIC, _V2_MAGIC):
        if head == _V2_MAGIC:
            (stype,) = r.take("<i")
            if stype != 0:
                raise ValueError(f"{r.path}: sparse arrays (storage type {stype}) are not supported")
        (ndim,) = r.take("<I")
        shape = r.take(f"<{ndim}q")
    else:  # legacy: the first word is the number of dimensions, dims are uint32
        ndim = head
        shape = r.take(f"<{ndim}I")
    if ndim == 0:
        return np.zeros((0,), dtype=np.float32)
    r.take("<ii")  # device type and id, irrelevant on load
    (flag,) = r.take("<i")
    if flag not in _DTYPES:
        raise ValueError(f"{r.path}: unknown MXNet dtype flag {flag}")
    dtype = np.dtype(_DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(shape))
    array = np.frombuffer(r.raw(count * dtype.itemsize), dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_mxnet_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read an MXNet `.params` (NDArray list) file without MXNet.

    Returns:
        name → array, names as stored (e.g. "arg:res2a_branch1_weight"); a file saved without
        names gets "0", "1", ….

    Raises:
        ValueError: not an NDArray list file, truncated, sparse or of an unknown dtype.
    """
    path = Path(path)
    r = _Reader(path.read_bytes(), str(path))
    magic, _reserved = r.take("<QQ")
    if magic != _LIST_MAGIC:
        raise ValueError(f"{path}: not an MXNet NDArray list file (magic {magic:#x})")
    (count,) = r.take("<Q")
    arrays = [_read_array(r) for _ in range(count)]
    (num_names,) = r.take("<Q")
    names = []
    for _ in range(num_names):
        (length,) = r.take("<Q")
        names.append(r.raw(length).decode("utf-8"))
    if not names:
        names = [str(i) for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{path}: {count} arrays but {len(names)} names")
    return dict(zip(names, arrays))


def write_mxnet_params(path: str | Path, arrays: dict[str, np.ndarray], *, version: int = 2
                       ) -> None:
    """Write float32 arrays as an MXNet NDArray list (`version` 0 = legacy, 1, 2); for tests."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items()}
    out = [struct.pack("<QQQ", _LIST_MAGIC, 0, len(arrays))]
    for value in arrays.values():
        value = np.ascontiguousarray(value)
        if version == 0:
            out.append(struct.pack(f"<I{value.ndim}I", value.ndim, *value.shape))
        else:
            out.append(struct.pack("<I", _V2_MAGIC if version == 2 else _V1_MAGIC))
            if version == 2:
                out.append(struct.pack("<i", 0))
            out.append(struct.pack(f"<I{value.ndim}q", value.ndim, *value.shape))
        out.append(struct.pack("<iii", 1, 0, codes[value.dtype]))
        out.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode("utf-8")
        out.append(struct.pack("<Q", len(encoded)) + encoded)
    Path(path).write_bytes(b"".join(out))


_BN_FIELDS = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var",
              "moving_mean": "running_mean", "moving_var": "running_var"}


def mxnet_name_to_torch(name: str) -> str | None:
    """Map one MXNet name of model A1 to this module's state-dict key (None: dropped).

    "res4b3_branch2b1_weight" → "b4_3.conv_branch2b1.weight", "bn2a_branch1_gamma" →
    "b2.bn_branch1.weight", "bn7_beta" → "bn7.bias", "conv1a_weight" → "conv1a.weight"; the
    1000-way classifier ("linear1000_*") is dropped. The "arg:" / "aux:" prefixes are ignored.
    """
    name = name.split(":", 1)[-1]
    tokens = name.split("_")
    head = tokens[0]
    if head.startswith("conv1a"):
        return "conv1a.weight"
    if head.startswith("linear1000"):
        return None
    if len(tokens) > 1 and "branch" in tokens[1]:
        # head is res<stage><a|b<k>> or bn<stage><a|b<k>>: "a" is the first block of a stage.
        if head.endswith("a"):
            block = "b" + head[-2]
        else:
            block = f"b{head[-3]}_{head[-1]}"
        field = "_".join(tokens[2:])
        if head.startswith("res"):
            return f"{block}.conv_{tokens[1]}.weight"
        if field not in _BN_FIELDS:
            raise ValueError(f"unexpected BatchNorm field in MXNet name {name!r}")
        return f"{block}.bn_{tokens[1]}.{_BN_FIELDS[field]}"
    field = "_".join(tokens[1:])
    if field not in _BN_FIELDS:
        raise ValueError(f"unexpected MXNet name {name!r}")
    return f"bn7.{_BN_FIELDS[field]}"


def convert_mxnet_resnet38(path: str | Path) -> dict[str, torch.Tensor]:
    """Convert `ilsvrc-cls_rna-a1_cls1000_ep-0001.params` into a `ResNet38Backbone` state dict
    (the renaming of `jiwoon-ahn/psa: network/resnet38d.py convert_mxnet_to_torch`)."""
    state = {}
    for name, array in read_mxnet_params(path).items():
        key = mxnet_name_to_torch(name)
        if key is not None:
            state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    for key in [k for k in state if k.endswith(".running_mean")]:
        # PyTorch BatchNorm state carries a step counter that MXNet does not store.
        state[key.replace(".running_mean", ".num_batches_tracked")] = torch.tensor(0)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m wsss.models.resnet38 IN.params OUT.pth`: convert and check against the model."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("params", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    state = convert_mxnet_resnet38(args.params)
    own = ResNet38Backbone().state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise SystemExit(f"{args.params}: converted weights lack {missing[:5]}")
    torch.save(state, args.out)
    print(f"wrote {len(state)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
