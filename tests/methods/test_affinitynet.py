"""AffinityNet (PSA): affinity labels, pair labels, loss, one training step, the walk, stages."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import load_config
from wsss.io import load_cams, load_mask
from wsss.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, ToTensor
from wsss.io import npz_bytes, write_bytes
from wsss.methods.affinitynet import (
    AffinityNetConfig,
    AffinityScoreDataset,
    _window_radius,
    affinity_walk,
    affinitynet_loss,
    affinitynet_loss_terms,
    affinitynet_seeds,
    build_affinitynet,
)
from wsss.models.affinitynet import AffinityNet
from wsss.models.backbones import build_backbone
from wsss.ops.affinity import (
    PathIndex,
    affinity_labels,
    affinity_seed_labels,
    background_stack,
    feature_affinity,
    feature_pair_affinity,
    neighbour_pairs,
    pooled_affinity_labels,
)
from wsss.pipeline.artifacts import read_manifest
from wsss.pipeline.runner import run_pipeline

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "smoke.yaml"
TINY = ["model.backbone=resnet18", "model.pretrained=none", "model.frozen_bn=false",
        "method.name=affinitynet"]


# Affinity labels from CAMs ------------------------------------------------------------------------

def test_background_stack_powers() -> None:
    cams = torch.tensor([[[0.2, 0.9]], [[0.5, 0.1]]])
    stack = background_stack(cams, 4.0)
    torch.testing.assert_close(stack[0], torch.tensor([[0.5 ** 4, 0.1 ** 4]]))
    torch.testing.assert_close(stack[1:], cams)
    assert torch.equal(background_stack(torch.zeros(0, 2, 3), 4.0), torch.ones(1, 2, 3))


def test_affinity_seed_labels_on_a_hand_made_cam() -> None:
    # One class (key 7). cam 0.01: (0.99)^32 = 0.72 > 0.01 → background even at α_high → 0;
    # cam 0.1: (0.9)^4 = 0.66 > 0.1 (la: bg) but (0.9)^32 = 0.034 < 0.1 (ha: fg) → unsure;
    # cam 0.5: (0.5)^4 = 0.06 < 0.5 → confident foreground → 7.
    cams = np.array([[[0.01, 0.1, 0.5]]], dtype=np.float32)
    image = np.zeros((1, 3, 3), dtype=np.uint8)
    labels = affinitynet_seeds(image, cams, np.array([7]), low_alpha=4, high_alpha=32, crf=False)
    assert labels.dtype == np.uint8 and labels.tolist() == [[0, 255, 7]]
    # Two classes: the larger CAM wins; a key-0 channel in the file is ignored.
    cams2 = np.array([[[0.9, 0.2]], [[0.6, 0.8]], [[0.3, 0.7]]], dtype=np.float32)
    labels2 = affinitynet_seeds(np.zeros((1, 2, 3), np.uint8), cams2, np.array([0, 3, 5]),
                                low_alpha=4, high_alpha=32, crf=False)
    assert labels2.tolist() == [[3, 3]]
    labels3 = affinitynet_seeds(np.zeros((1, 2, 3), np.uint8), cams2[1:], np.array([3, 5]),
                                low_alpha=4, high_alpha=32, crf=False)
    assert labels3.tolist() == [[3, 3]]
    # No class present: everything is background.
    none = affinitynet_seeds(image, np.zeros((0, 1, 3), np.float32), np.zeros(0, np.int64),
                             low_alpha=4, high_alpha=32, crf=False)
    assert none.tolist() == [[0, 0, 0]]


def test_affinity_seed_labels_rule() -> None:
    # la says bg at pixel 0 and 1, ha says bg at pixel 1 and 2.
    low = torch.tensor([[[0.9, 0.9, 0.1, 0.1]], [[0.1, 0.1, 0.9, 0.2]], [[0.0, 0.0, 0.0, 0.7]]])
    high = torch.tensor([[[0.1, 0.9, 0.9, 0.1]], [[0.9, 0.1, 0.1, 0.2]], [[0.0, 0.0, 0.0, 0.7]]])
    labels = affinity_seed_labels(low, high, torch.tensor([0, 4, 9]))
    assert labels.tolist() == [[255, 0, 0, 9]]


def test_crf_labels_follow_a_confident_square() -> None:
    image = np.full((32, 32, 3), 40, dtype=np.uint8)
    image[8:24, 8:24] = 220
    cams = np.zeros((1, 32, 32), dtype=np.float32)
    cams[0, 9:23, 9:23] = 0.9
    labels = affinitynet_seeds(image, cams, np.array([2]), low_alpha=4, high_alpha=32, crf=True)
    assert set(np.unique(labels).tolist()) <= {0, 2, 255}
    assert (labels[10:22, 10:22] == 2).all()
    assert (labels[:4, :4] == 0).all() and (labels[-4:, -4:] == 0).all()


# Pair labels --------------------------------------------------------------------------------------

def _psa_pairs(h: int, w: int, radius: int = 5) -> list[tuple[int, int]]:
    """PSA `get_indices_of_pairs`, written out: directions (0, x) x = 1..r-1 and (y, x),
    y = 1..r-1, |x| < r, x² + y² < r²; sources rows [0, h − r + 1), cols [r − 1, w − r + 1)."""
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
             if x * x + y * y < radius * radius]
    f = radius - 1
    return [(sy * w + sx, (sy + dy) * w + sx + dx) for dy, dx in dirs
            for sy in range(0, h - f) for sx in range(f, w - f)]


def test_windowed_pairs_are_psa_pairs_and_full_pairs_cover_the_disc() -> None:
    h, w = 7, 11
    src, dst = neighbour_pairs((h, w), 5, window=True)
    psa = _psa_pairs(h, w)
    assert src.numel() == len(psa) == 34 * (h - 4) * (w - 8)
    assert sorted(zip(src.tolist(), dst.tolist())) == sorted(psa)
    src_f, dst_f = neighbour_pairs((h, w), 5, window=False)
    full = {(i, j) for i in range(h * w) for j in range(h * w) if i < j
            and (i // w - j // w) ** 2 + (i % w - j % w) ** 2 < 25}
    assert {tuple(sorted(p)) for p in zip(src_f.tolist(), dst_f.tolist())} == full
    assert src_f.numel() == len(full)


def test_pair_labels_match_psa_rule() -> None:
    # PSA ExtractAffinityLabelInRadius: bg_pos = same & bg, fg_pos = same & fg & both valid,
    # neg = different & both valid.
    h, w = 6, 10
    rng = np.random.default_rng(0)
    seeds = rng.choice([0, 3, 8, 255], size=(h, w), p=[0.4, 0.25, 0.2, 0.15])
    index = PathIndex.build(5, (h, w))
    bg_pos, fg_pos, neg = affinity_labels(torch.from_numpy(seeds), index)
    flat = seeds.reshape(-1)
    got = {name: set() for name in ("bg", "fg", "neg")}
    src = index.src_indices.tolist()
    for d in range(index.num_directions):
        for s, i in enumerate(src):
            j = int(index.dst_indices[d, s])
            for name, t in (("bg", bg_pos), ("fg", fg_pos), ("neg", neg)):
                if t[d, s] > 0:
                    got[name].add((i, j))
    want = {name: set() for name in ("bg", "fg", "neg")}
    for i, j in _psa_pairs(h, w):
        a, b = flat[i], flat[j]
        if a == b == 0:
            want["bg"].add((i, j))
        elif a == b and a != 255:
            want["fg"].add((i, j))
        elif a != b and a != 255 and b != 255:
            want["neg"].add((i, j))
    assert got == want and all(want.values())


# Loss, model, one training step -------------------------------------------------------------------

def test_loss_known_answer() -> None:
    aff = torch.tensor([[[0.5, 0.9, 0.2, 0.7]]])
    bg = torch.tensor([[[1.0, 0, 0, 0]]])
    fg = torch.tensor([[[0, 1.0, 0, 0]]])
    neg = torch.tensor([[[0, 0, 1.0, 1.0]]])
    terms = affinitynet_loss(aff, bg, fg, neg)
    eps = 1e-5
    torch.testing.assert_close(terms["affinity_bg"],
                               torch.tensor(-math.log(0.5 + eps) / (1 + eps) / 4))
    torch.testing.assert_close(terms["affinity_fg"],
                               torch.tensor(-math.log(0.9 + eps) / (1 + eps) / 4))
    neg_want = -(math.log(1 + eps - 0.2) + math.log(1 + eps - 0.7)) / (2 + eps) / 2
    torch.testing.assert_close(terms["affinity_neg"], torch.tensor(neg_want))
    empty = affinitynet_loss(aff, torch.zeros_like(bg), fg, neg)
    assert empty["affinity_bg"] == 0


def test_feature_affinity_mean_and_sum() -> None:
    f = torch.zeros(1, 2, 6, 9)
    f[:, 0, :, 5:] = 1.0  # channel 0 differs by 1 across column 4 | 5
    index = PathIndex.build(5, (6, 9))
    mean = feature_affinity(f, index)
    total = feature_affinity(f, index, distance="sum")
    assert mean.shape == (1, 34, index.src_indices.numel())
    crossing = (index.src_indices % 9 < 5)[None] & (index.dst_indices % 9 >= 5)
    torch.testing.assert_close(mean[0][crossing], torch.full_like(mean[0][crossing],
                                                                   math.exp(-0.5)))
    torch.testing.assert_close(total[0][crossing], torch.full_like(total[0][crossing],
                                                                    math.exp(-1.0)))
    assert torch.all(mean[0][~crossing] == 1)
    src, dst = neighbour_pairs((6, 9), 5, window=True)
    flat_pairs = feature_pair_affinity(f[0], src, dst, chunk=7)
    torch.testing.assert_close(flat_pairs, mean[0].reshape(-1))


def _net() -> AffinityNet:
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    return build_affinitynet(cfg)


def test_model_shapes_and_groups() -> None:
    model = _net()
    assert model.output_stride == 8
    features = model(torch.randn(2, 3, 64, 72))
    assert features.shape == (2, 448, 8, 9) and torch.all(features >= -1)  # ELU output
    backbone, head = model.param_groups()
    assert {id(p) for p in model.parameters()} == {id(p) for p in backbone + head}
    assert len(head) == 4  # three taps + the fusion convolution
    # Stride-16 backbones: earlier taps are resized to the last map.
    net16 = AffinityNet(backbone=build_backbone("resnet18", output_stride=16, pretrained="none",
                                                frozen_bn=False))
    assert net16(torch.randn(1, 3, 64, 64)).shape == (1, 448, 4, 4)


def test_frozen_layers_with_pretrained_settings() -> None:
    cfg = load_config(None, ["model.backbone=resnet18", "model.pretrained=none",
                             "model.frozen_bn=true", "method.name=affinitynet"])
    model = build_affinitynet(cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "backbone.stem.0.weight" in frozen and "backbone.layer1.0.conv1.weight" not in frozen


def test_one_training_step_is_finite_and_trains_everything() -> None:
    model = _net().train()
    backbone, head = model.param_groups()
    optimizer = torch.optim.SGD([{"params": backbone, "lr": 0.01},
                                 {"params": head, "lr": 0.1}])
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:48, 16:48] = 2
    mask[:, 8:16, :] = 255
    mask[1, :, 40:] = 1
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": torch.ones(2, 4), "mask": mask,
             "name": ["a", "b"], "index": torch.tensor([0, 1])}
    before = model.backbone.layer4[0].conv1.weight.detach().clone()
    terms = affinitynet_loss_terms(model, batch, radius=5)
    assert set(terms) == {"affinity_bg", "affinity_fg", "affinity_neg"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    sum(terms.values()).backward()
    optimizer.step()
    assert not torch.equal(before, model.backbone.layer4[0].conv1.weight)
    # A tiny 16×16 crop (2×2 features) is too small for any pair.
    with pytest.raises(ValueError, match="too small"):
        affinitynet_loss_terms(model, {"image": torch.randn(1, 3, 16, 16),
                                       "mask": torch.zeros(1, 16, 16, dtype=torch.long)},
                               radius=5)


# Random walk inference ----------------------------------------------------------------------------

class _TwoRegions(nn.Module):
    """Stand-in AffinityNet: features 0 left of column `cut` (stride-8 cells), 50 right of it."""

    output_stride = 8

    def __init__(self, cut: int) -> None:
        super().__init__()
        self.cut = cut

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        f = torch.zeros(b, 4, math.ceil(h / 8), math.ceil(w / 8))
        f[..., self.cut:] = 50.0
        return f


@pytest.mark.parametrize("walk_pairs", ["window", "full"])
def test_walk_fills_a_region_and_stops_at_its_edge(walk_pairs: str) -> None:
    height, width = 64, 128  # 8 × 16 cells; features split at cell column 8
    image = np.zeros((height, width, 3), dtype=np.uint8)
    cams = np.zeros((1, height, width), dtype=np.float32)
    cams[0, :, 64:] = 1.0  # the right region is the class ...
    cams[0, 16:32, 88:104] = 0.0  # ... but its CAM has a 2 × 2-cell hole
    cams[0, 24:40, 16:32] = 1.0  # a false 2 × 2-cell spot in the left region
    cfg = AffinityNetConfig(num_steps=64, walk_pairs=walk_pairs)
    assert (cams[0, 16:32, 88:104] < 0.5).all() and (cams[0, 24:40, 16:32] > 0.5).all()
    with torch.inference_mode():
        mask, probs, keys = affinity_walk(_TwoRegions(cut=8), image, cams, np.array([4]),
                                          cfg=cfg, device=torch.device("cpu"))
    assert mask.shape == (height, width) and probs.shape == (2, height, width)
    assert keys.tolist() == [0, 4]
    assert probs.min() >= 0 and probs.max() <= 1
    # The walk fills the hole (the region's affinities are 1) ...
    assert (mask[:, 64:] == 4).all()
    # ... removes the spot, and nothing crosses the edge (affinity e^-25 between the regions).
    assert (mask[:, :64] == 0).all()
    assert np.array_equal(keys[probs.argmax(0)], mask)


def test_walk_without_classes_and_with_a_background_channel() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    cfg = AffinityNetConfig(num_steps=4)
    model = _TwoRegions(cut=2)
    mask, probs, keys = affinity_walk(model, image, np.zeros((1, 20, 30), np.float32),
                                      np.array([0]), cfg=cfg, device=torch.device("cpu"))
    assert (mask == 0).all() and probs.shape == (1, 20, 30) and keys.tolist() == [0]
    cams = np.random.default_rng(0).random((2, 20, 30)).astype(np.float32)
    with torch.inference_mode():
        mask2, probs2, keys2 = affinity_walk(_net().eval(), image, cams, np.array([0, 6]),
                                             cfg=cfg, device=torch.device("cpu"))
    assert keys2.tolist() == [0, 6] and probs2.shape == (2, 20, 30)
    assert set(np.unique(mask2).tolist()) <= {0, 6}


# Stages -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stages_end_to_end_and_walk_rerun(smoke_overrides: list[str]) -> None:
    overrides = smoke_overrides + [
        "method.name=affinitynet", "method.affinitynet.backbone_weights=cam",
        "method.affinitynet.train.epochs=1", "method.affinitynet.train.batch_size=8",
        "method.affinitynet.train.crop_size=48", "method.affinitynet.num_steps=8",
        "method.affinitynet.walk_pairs=full", "pipeline.name=aff"]
    cfg = load_config(SMOKE, overrides)
    first = run_pipeline(cfg)
    stages = [o.name for o in first.outcomes]
    assert stages == ["data", "train_cam", "eval_cls", "make_cam", "eval_cam", "make_aff_labels",
                      "eval_aff_labels", "train_affinitynet", "make_aff_masks", "eval_aff_masks"]
    assert all(o.status == "ran" for o in first.outcomes)
    run_dir = first.run_dir
    names = (Path(cfg.data.root) / "ImageSets/Segmentation/train.txt").read_text().split()
    for name in names:
        labels = load_mask(run_dir / "make_aff_labels/masks" / f"{name}.png")
        mask = load_mask(run_dir / "make_aff_masks/masks" / f"{name}.png")
        probs, keys = load_cams(run_dir / "make_aff_masks/probs" / f"{name}.npz")
        assert labels.shape == mask.shape == probs.shape[1:]
        assert keys[0] == 0 and 255 not in mask
        assert set(np.unique(mask).tolist()) <= set(keys.tolist())
    summary = read_manifest(run_dir / "eval_aff_masks")["summary"]
    assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["contour_f"] <= 1.0

    changed = load_config(SMOKE, overrides + ["method.affinitynet.beta=4"])
    again = {o.name: o.status for o in run_pipeline(changed).outcomes}
    assert [s for s in stages if again[s] == "ran"] == ["make_aff_masks", "eval_aff_masks"]


@pytest.mark.slow
def test_resnet38_affinitynet_and_classifier_freeze_psa_layers() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/voc/cam_affinitynet.yaml",
                      ["model.pretrained=none"])
    net = build_affinitynet(cfg)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert "backbone.conv1a.weight" in frozen and "backbone.b2_2.conv_branch2b1.weight" in frozen
    assert "backbone.b3.conv_branch2a.weight" not in frozen
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 64, 80)).shape == (1, 448, 8, 10)
    from wsss.methods import build_method

    classifier = build_method(cfg).build_model(20)
    frozen_cls = {n for n, p in classifier.named_parameters() if not p.requires_grad}
    assert "backbone.conv1a.weight" in frozen_cls
    assert "backbone.b3.conv_branch2a.weight" not in frozen_cls


# PSA's pooled training labels, small-map radius, PSA's classifier ----------------------------------

class _OneImage:
    """A dataset of one image whose pixels encode their own position (R = row, G = column,
    B = 1), so a transformed crop tells where each of its pixels came from."""

    names = ["a"]
    class_names = ["c"] * 8
    num_classes = 8

    def __init__(self, height: int, width: int) -> None:
        ys, xs = np.mgrid[:height, :width]
        self.image = np.stack([ys, xs, np.ones_like(ys)], -1).astype(np.uint8)

    def __len__(self) -> int:
        return 1

    def load_image(self, index: int) -> np.ndarray:
        return self.image.copy()

    def label_vector(self, index: int) -> np.ndarray:
        return np.zeros(8, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_dataset_pools_the_scores_cropped_with_the_image(tmp_path: Path, seed: int) -> None:
    height, width = 30, 50  # crop 40: rows padded, columns cut
    base = _OneImage(height, width)
    rng = np.random.default_rng(seed)
    low = rng.random((3, height, width)).astype(np.float32)
    high = rng.random((3, height, width)).astype(np.float32)
    keys = np.array([0, 2, 5])
    write_bytes(tmp_path / "a.npz", npz_bytes({"low": low, "high": high, "keys": keys}))
    gen = random.Random(seed)
    transform = Compose([RandomHorizontalFlip(rng=gen), RandomCrop(40, rng=gen), ToTensor()])
    sample = AffinityScoreDataset(base, tmp_path, transform, 8)[0]
    image = sample["image"].long()  # (3, 40, 40): source row, column, inside flag
    inside = image[2] == 1
    assert 0 < inside.sum() < 40 * 40  # the crop pads and cuts
    crop = torch.zeros(6, 40, 40)
    both = torch.from_numpy(np.concatenate([low, high]))
    crop[:, inside] = both[:, image[0][inside], image[1][inside]]
    expected = pooled_affinity_labels(crop[:3], crop[3:], torch.from_numpy(keys), 8)
    assert sample["mask"].shape == (5, 5)
    assert torch.equal(sample["mask"], expected)
    assert (sample["mask"][~inside.reshape(5, 8, 5, 8).any(3).any(1)] == 255).all()


def test_window_radius_follows_icam_on_small_maps() -> None:
    # arvijj/icam resnet38_aff: (min_edge - 1) // 2 below 2 * 5 + 1 = 11 cells, else 5
    expected = {3: 1, 4: 1, 5: 2, 6: 2, 7: 3, 8: 3, 9: 4, 10: 4, 11: 5, 12: 5, 56: 5}
    for edge, radius in expected.items():
        assert _window_radius(5, (edge, 60)) == radius
        assert _window_radius(5, (60, edge)) == radius
    with pytest.raises(ValueError, match="too small"):
        affinitynet_loss_terms(_net(), {"image": torch.zeros(1, 3, 32, 64),
                                        "mask": torch.zeros(1, 32, 64, dtype=torch.long)},
                               radius=5)


def test_psa_classifier_dropout_before_gap_only_in_training() -> None:
    from wsss.models.cam_classifier import CamClassifier

    torch.manual_seed(0)
    plain = CamClassifier(backbone=build_backbone("resnet18", output_stride=8, pretrained="none",
                                                     frozen_bn=False), num_classes=3)
    psa = CamClassifier(backbone=plain.backbone, num_classes=3, dropout=0.5)
    psa.classifier.load_state_dict(plain.classifier.state_dict())
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), psa.eval()
    torch.testing.assert_close(psa(x), plain(x))
    torch.testing.assert_close(psa.cams(x), plain.cams(x))
    psa.train()
    plain.train()
    torch.manual_seed(1)
    feats = psa.features(x)
    torch.manual_seed(2)
    dropped = psa(x)
    torch.manual_seed(2)  # the same channel mask, applied by hand: zeroed channels, × 2 the rest
    keep = torch.nn.functional.dropout2d(torch.ones(2, feats.shape[1], 1, 1), 0.5, training=True)
    manual = psa.classifier((feats * keep).mean(dim=(2, 3), keepdim=True)).flatten(1)
    torch.testing.assert_close(dropped, manual)
    assert not torch.allclose(dropped, plain(x))


def test_psa_merge_sums_views_upsampled_to_the_image() -> None:
    from wsss.data.transforms import scaled_views
    from wsss.methods.cam_baseline import multiscale_cams

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(conv(F.avg_pool2d(x, 8, ceil_mode=True)))

    image = np.random.default_rng(0).integers(0, 255, (37, 45, 3)).astype(np.uint8)
    scales = [1.0, 0.5, 1.5]
    with torch.no_grad():
        ours = multiscale_cams(cam_fn, image, scales=scales, flip=True, stride=8,
                               device=torch.device("cpu"), merge="image")
        strided = multiscale_cams(cam_fn, image, scales=scales, flip=True, stride=8,
                                  device=torch.device("cpu"))
        total = torch.zeros(2, 37, 45)
        for scale in scales:  # PSA infer_cls.py: every view upsampled to the image, unflipped
            views = scaled_views(image, scale, flip=True)
            for i in range(2):
                cam = F.interpolate(cam_fn(views[i:i + 1]), (37, 45), mode="bilinear",
                                    align_corners=False)[0]
                total += cam.flip(-1) if i == 1 else cam
    torch.testing.assert_close(ours, total, rtol=1e-5, atol=1e-5)
    assert (ours - strided).abs().max() > 1e-3
