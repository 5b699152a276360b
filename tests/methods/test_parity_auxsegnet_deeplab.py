"""Parity with the official code: AuxSegNet (xulianuwa/AuxSegNet @9f40a5d) and the DeepLab-v2 of
kazuto1011/deeplab-pytorch, against outputs stored in tests/fixtures/parity/auxsegnet_deeplab/
(made by tests/fixtures/parity/make_auxsegnet_deeplab.py; its docstring says how)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import SegnetConfig
from wsss.data.saliency import SaliencyAugment, cv2_resize
from wsss.methods.auxsegnet import AuxSegNet, AuxSegNetConfig, AuxSegNetNet, refined_cams
from wsss.methods.segnet import segnet_param_groups, segnet_training_step
from wsss.models.backbones import freeze_batchnorm_stats
from wsss.models.resnet_caffe import CaffeResNet
from wsss.models.segnet import DeepLabV2Head, SegNet, freeze_batchnorm_affine
from wsss.ops.crf import CRF_PRESETS, dense_crf
from wsss.ops.cross_task_affinity import fuse_cam_saliency
from wsss.predict import msc_max_probs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "auxsegnet_deeplab"


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        out = {k: data[k] for k in data.files}
    meta = json.loads(str(out["meta"]))
    assert meta["repo"] in ("xulianuwa/AuxSegNet", "kazuto1011/deeplab-pytorch")
    return out


def _weights(data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k[2:]: torch.from_numpy(v) for k, v in data.items() if k.startswith("w/")}


# AuxSegNet ---------------------------------------------------------------------------------------


class _Features(nn.Module):
    """A backbone that returns fixed conv6 features whatever the image (the fixture's input)."""

    def __init__(self, feats: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("feats", feats)
        self.out_channels = [feats.shape[1]] * 4

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.feats] * 4


def _auxsegnet(data: dict[str, np.ndarray]) -> AuxSegNetNet:
    feats = torch.from_numpy(data["feats"])
    net = AuxSegNetNet(backbone=_Features(feats), num_classes=20, channels=8,
                       dilations=(6, 12, 18))
    # The official NLBlock's g and W_z are never used; wsss does not build them.
    state = {k: v for k, v in _weights(data).items() if not k.split(".")[1] in ("g", "W_z")
             or not k.split(".")[0].endswith("_att")}
    net.load_state_dict(state, strict=False)
    missing = set(net.state_dict()) - set(state) - {"backbone.feats"}
    assert not missing, missing
    return net.eval()


def test_auxsegnet_network_matches_official() -> None:
    """NLBlock affinities, non-local feature refinement, cross-task fusion, refined logits."""
    data = _load("auxsegnet_head.npz")
    net = _auxsegnet(data)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 8, 8))
    pairs = {"cls": "cls", "cams": "cam", "sal_init": "init_sal", "sal_refined": "ref_sal",
             "seg_init": "init_seg", "seg_refined": "ref_seg", "affinity": "ct_aff"}
    for ours, theirs in pairs.items():
        np.testing.assert_allclose(out[ours].numpy(), data[theirs], rtol=1e-4, atol=1e-5,
                                   err_msg=ours)


def test_label_update_matches_official_gen_pgt() -> None:
    """Refined CAMs (not clamped, item 17), fused + CRF saliency and the fused labels."""
    data = _load("auxsegnet_head.npz")
    net = _auxsegnet(data)
    image, label = data["image"], data["label"]
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 8, 8))
        cams = refined_cams(out, image.shape[:2])
    np.testing.assert_allclose(cams.numpy(), data["refined_cam"], rtol=1e-4, atol=1e-5)
    assert (data["refined_cam"][0, label > 0] > 1).any()  # the fixture exercises item 17

    method = AuxSegNet.__new__(AuxSegNet)
    method.mcfg = AuxSegNetConfig()
    with torch.no_grad():
        mask, saliency = method.update_labels(net, image, data["sal"] / np.float32(255), label)
    np.testing.assert_allclose(saliency, data["crf_sal"][0], atol=1e-4)
    assert (mask == data["pgt"][0]).all()

    # A clamp to [0, 1] ties the classes above 1 and moves labels: the fixture would catch it.
    clamped = fuse_cam_saliency(torch.from_numpy(data["refined_cam"]).clamp(0, 1),
                                torch.from_numpy(data["crf_sal"]),
                                torch.from_numpy(label)[None])
    assert (clamped[0].numpy() != data["pgt"][0]).any()


def test_refined_cams_are_not_clamped() -> None:
    """Item 17: an affinity whose rows sum to 2 doubles the max-normalised CAM."""
    cams = torch.tensor([[[[4.0, 4.0], [4.0, 2.0]]]])  # max-normalised: 1, 1, 1, .5
    affinity = torch.full((1, 4, 4), 0.5)  # rows sum to 2
    out = refined_cams({"cams": cams, "affinity": affinity}, (2, 2))
    expected = 0.5 * (4 + 4 + 4 + 2) / (4 + 1e-5)
    np.testing.assert_allclose(out.numpy(), np.full((1, 1, 2, 2), expected), rtol=1e-6)
    assert out.max() > 1


class _Offsets:
    """A stand-in generator: random() flips, randrange() returns the official crop offsets."""

    def __init__(self, offsets: list[int]) -> None:
        self.offsets = offsets

    def random(self) -> float:
        return 0.0

    def randrange(self, n: int) -> int:
        value = self.offsets.pop(0)
        assert 0 <= value < n
        return value


def test_augmentation_matches_official_exutils() -> None:
    """cv2 rescale, flip, normalisation and crop with padding 0 = background (item 18)."""
    data = _load("auxsegnet_exutils.npz")
    scale = float(data["scale"])
    size = data["img_scaled"].shape[:2]
    np.testing.assert_allclose(cv2_resize(data["img"].astype(np.float64), size, 1),
                               data["img_scaled"], atol=1e-3)
    np.testing.assert_allclose(cv2_resize(data["sal"], size, 1), data["sal_scaled"], atol=1e-6)
    assert (cv2_resize(data["gt"], size, 0) == data["gt_scaled"]).all()

    assert AuxSegNetConfig().pad_label == 0
    height, width = size
    offsets = ([int(data["h_p"])] if height > 32 else []) + (
        [int(data["w_p"])] if width > 32 else [])
    augment = SaliencyAugment(crop_size=32, flip=True, mask_fill=AuxSegNetConfig().pad_label,
                              resize="cv2", rng=_Offsets(offsets))
    image, mask, sal = augment(data["img"], data["gt"], data["sal"].astype(np.float32),
                               scale=scale)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), data["img_crop"], atol=1e-4)
    np.testing.assert_allclose(sal.numpy(), data["sal_crop"], atol=1e-6)
    assert (mask.numpy() == data["gt_crop"]).all()
    assert height < 32 or width < 32  # the crop pads: the background fill is compared


def test_test_crf_matches_official() -> None:
    data = _load("auxsegnet_crf.npz")
    q = dense_crf(data["img"], data["probs"], **CRF_PRESETS["auxsegnet"])
    np.testing.assert_allclose(q, data["q"], atol=1e-5)


def test_batch_scale_is_shared_by_the_batch() -> None:
    """Item 19: with scale_per="batch" the collate function draws one scale for all items."""
    from wsss.data.saliency import SaliencyDataset

    class Images:
        names = ["a", "b", "c", "d"]
        class_names = ["background", "x"]
        num_classes = 1
        has_masks = True

        def __len__(self) -> int:
            return 4

        def load_image(self, i: int) -> np.ndarray:
            return np.full((40, 50, 3), 60 * i, np.uint8)

        def load_mask(self, i: int) -> np.ndarray:
            return np.ones((40, 50), np.uint8)

        def mask_path(self, i: int) -> str:
            return "mask"

        def label_vector(self, i: int) -> np.ndarray:
            return np.ones(1, np.float32)

    class Saliency(SaliencyDataset):
        def load_saliency(self, index: int, size: tuple[int, int]) -> np.ndarray:
            return np.full(size, 0.7, np.float32)

    augment = SaliencyAugment(crop_size=None, scale_range=(0.7, 1.3), flip=False,
                              resize="cv2", rng=random.Random(0))
    per_batch = Saliency(Images(), FIXTURES, transform=augment, scale_per="batch")
    for _ in range(3):
        batch = per_batch.collate_fn([per_batch[i] for i in range(4)])
        assert batch["image"].shape[0] == 4 and batch["mask"].shape[0] == 4
    per_image = Saliency(Images(), FIXTURES, transform=augment, scale_per="image")
    sizes = {tuple(per_image[i]["image"].shape) for i in range(4)}
    assert len(sizes) > 1  # one scale per image: sizes differ, no batch without a crop


# DeepLab-v2 (deeplab-pytorch) --------------------------------------------------------------------


def _deeplab(data: dict[str, np.ndarray], input_space: str) -> SegNet:
    backbone = CaffeResNet(blocks=(1, 1, 2, 1), width=4, input_space=input_space)
    head = DeepLabV2Head(in_channels=backbone.out_channels, num_outputs=4)
    model = SegNet(backbone=backbone, head=head)
    state = {}
    for key, value in _weights(data).items():
        if key.startswith("aspp.c"):
            index, param = key[len("aspp.c"):].split(".")
            state[f"head.branches.{index}.{param}"] = value
        else:
            state[f"backbone.{key}"] = value
    model.load_state_dict(state, strict=False)
    missing = {k for k in set(model.state_dict()) - set(state)
               if not k.endswith("num_batches_tracked")}
    assert not missing, missing
    freeze_batchnorm_stats(model.backbone)
    freeze_batchnorm_affine(model.backbone)
    return model.eval()


def _caffe_input(image: np.ndarray) -> torch.Tensor:
    bgr = image[:, :, ::-1] - np.array([104.008, 116.669, 122.675])
    return torch.from_numpy(bgr.transpose(2, 0, 1).astype(np.float32))[None]


def test_caffe_resnet_forward_matches_official() -> None:
    """Item 21: the Caffe ResNet (stride in the 1x1 conv, ceil-mode pool) + ASPP, on the Caffe
    input and on the ImageNet-normalised RGB input wsss feeds."""
    from wsss.data.transforms import normalize_image

    data = _load("deeplab_msc.npz")
    with torch.no_grad():
        caffe = _deeplab(data, "caffe").logits(_caffe_input(data["image"]))
        rgb = _deeplab(data, "imagenet").logits(normalize_image(data["image"])[None])
    np.testing.assert_allclose(caffe[0].numpy(), data["logits_base"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rgb[0].numpy(), data["logits_base"], rtol=1e-3, atol=1e-3)


def test_msc_max_test_matches_official() -> None:
    """Item 22: max of the logits over scales 1, 0.5, 0.75 at stride 8, upsampled, softmax."""
    data = _load("deeplab_msc.npz")
    model = _deeplab(data, "imagenet")
    with torch.no_grad():
        probs = msc_max_probs(model, data["image"], scales=[1.0, 0.5, 0.75])
    np.testing.assert_allclose(probs.numpy(), data["probs"], atol=1e-4)


def test_msc_training_loss_matches_official() -> None:
    """Item 23: the four MSC logits and their losses on labels resized (nearest) to them."""
    data = _load("deeplab_msc.npz")
    model = _deeplab(data, "caffe").train()
    batch = {"image": torch.from_numpy(data["train_x"]),
             "mask": torch.from_numpy(data["train_labels"])}
    with torch.no_grad():
        outputs = model(batch["image"], msc_scales=[0.5, 0.75])
        terms = segnet_training_step(model, batch, msc_scales=[0.5, 0.75])
    for i, logits in enumerate(outputs):
        np.testing.assert_allclose(logits.numpy(), data[f"train_logits_{i}"], rtol=1e-4,
                                   atol=1e-4)
    assert list(terms) == ["seg_s1", "seg_s0.5", "seg_s0.75", "seg_max"]
    np.testing.assert_allclose([float(v) for v in terms.values()], data["train_loss"],
                               rtol=1e-5)


def test_param_groups_match_deeplab_pytorch() -> None:
    """Item 23: backbone convolutions at lr (BatchNorm affine not optimised), ASPP weights at
    10x, ASPP biases at 20x without weight decay (`main.py get_params`)."""
    data = _load("deeplab_msc.npz")
    model = _deeplab(data, "caffe")
    cfg = SegnetConfig()
    groups = segnet_param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}

    def official(name: str) -> str:
        if name.startswith("head.branches."):
            index, param = name[len("head.branches."):].split(".")
            return f"aspp.c{index}.{param}"
        return name[len("backbone."):]

    ours = [sorted(official(names[id(p)]) for p in g["params"]) for g in groups]
    theirs = [sorted(data[f"group_{k}"].tolist()) for k in ("1x", "10x", "20x")]
    assert ours == theirs
    assert [g["lr"] / cfg.lr for g in groups] == pytest.approx([1.0, 10.0, 20.0])
    assert groups[2]["weight_decay"] == 0.0 and "weight_decay" not in groups[1]
    assert not any(p.requires_grad for m in model.backbone.modules()
                   if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


def test_round_schedule_matches_official_poly_optimizer() -> None:
    """`PolyOptimizer_cls`: lr0 · (1 − k / max_step)^0.9 in step k (the Trainer's LambdaLR),
    and the effective SGD settings the preset reproduces (momentum 1e-5 ≈ 0, no decay)."""
    from wsss.engine.trainer import build_optimizer, poly_lambda

    data = _load("auxsegnet_poly.npz")
    max_step = int(data["max_step"])
    t = AuxSegNetConfig().round_train
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = build_optimizer([{"params": [params[0]], "lr": t.lr},
                                 {"params": [params[1]], "lr": t.lr * t.head_lr_mult}],
                                name=t.optimizer, momentum=t.momentum,
                                weight_decay=t.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(max_step, t.poly_power))
    lrs = []
    for _ in range(max_step):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    np.testing.assert_allclose(lrs, data["lr"][:max_step], rtol=1e-12)
    # The official loop runs one step more, at the last lr; wsss stops after max_step steps.
    np.testing.assert_allclose(data["lr"][max_step], data["lr"][max_step - 1])
    assert float(data["weight_decay"]) == t.weight_decay == 0.0
    assert float(data["momentum"]) == pytest.approx(1e-5) and t.momentum == 0.0
