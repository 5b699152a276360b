"""Tests for the synthetic VOC-layout generator: layout, masks, determinism and failure modes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.labels import IGNORE_INDEX, read_class_names
from wsss.data.synthetic import (
    CONTEXT_OF_CLASS,
    LOOKALIKE_PAIRS,
    SYNTHETIC_CLASSES,
    describe_scene,
    generate,
    object_masks,
    render_scene,
    save_sample_grid,
    void_width,
)
from wsss.io import load_image, load_mask

SIZE = 48
NUM_TRAIN = 14
NUM_VAL = 6
SEED = 3
NUM_CLASSES = len(SYNTHETIC_CLASSES) - 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "seed3"
    return generate(
        root, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=SEED, num_workers=1
    )


def _all_files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _names(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _scenes(num: int, *, size: int = 64, seed: int = 0) -> list[dict]:
    return [describe_scene(seed, "train", i, image_size=size) for i in range(num)]


def test_layout_lists_and_formats(dataset: Path) -> None:
    train, val = _names(dataset, "train"), _names(dataset, "val")
    assert train == [f"syn_train_{i:06d}" for i in range(1, NUM_TRAIN + 1)]
    assert val == [f"syn_val_{i:06d}" for i in range(1, NUM_VAL + 1)]
    assert _names(dataset, "trainval") == train + val
    assert tuple(read_class_names(dataset / "classes.txt")) == SYNTHETIC_CLASSES
    assert 8 <= NUM_CLASSES <= 10 and SYNTHETIC_CLASSES[0] == "background"
    for name in train + val:
        with Image.open(dataset / "JPEGImages" / f"{name}.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE))
        with Image.open(dataset / "SegmentationClass" / f"{name}.png") as im:
            assert (im.mode, im.size) == ("P", (SIZE, SIZE))
        with Image.open(dataset / "SaliencyMaps" / f"{name}.png") as im:
            assert (im.mode, im.size) == ("L", (SIZE, SIZE))
    for folder in ("JPEGImages", "SegmentationClass", "SaliencyMaps"):
        assert len(list((dataset / folder).iterdir())) == NUM_TRAIN + NUM_VAL  # no temporaries
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["parameters"]["seed"] == SEED and meta["parameters"]["image_size"] == SIZE
    assert meta["counts"]["train"]["images"] == NUM_TRAIN
    assert meta["counts"]["val"]["images"] == NUM_VAL
    assert sorted(meta["images"]) == sorted(train + val)
    assert set(meta["class_descriptions"]) == set(SYNTHETIC_CLASSES[1:])
    assert {"lookalike_classes", "co_occurrence", "scale_and_occlusion", "void_band"} <= set(
        meta["failure_modes"]
    )


def test_masks_hold_valid_labels_and_a_foreground_object(dataset: Path) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    for name in _names(dataset, "trainval"):
        mask = load_mask(dataset / "SegmentationClass" / f"{name}.png")
        values = set(np.unique(mask).tolist())
        assert values <= set(range(NUM_CLASSES + 1)) | {IGNORE_INDEX}
        foreground = values - {0, IGNORE_INDEX}
        assert foreground, f"{name} has no labelled foreground pixel"
        assert sorted(foreground) == meta["images"][name]["classes"]


def test_meta_records_match_scene_descriptions(dataset: Path) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        for i in range(count):
            scene = describe_scene(SEED, split, i, image_size=SIZE)
            record = meta["images"][scene["name"]]
            assert record["context"] == sorted(scene["context"])
            assert [o["class"] for o in record["objects"]] == [o["class"] for o in scene["objects"]]
            for rec, obj in zip(record["objects"], scene["objects"]):
                assert rec["area_fraction"] == pytest.approx(obj["area_fraction"], abs=1e-4)
                assert 0.0 <= rec["visible_fraction"] <= rec["area_fraction"] + 0.05


def test_void_band_separates_every_region(dataset: Path) -> None:
    for name in _names(dataset, "trainval"):
        mask = load_mask(dataset / "SegmentationClass" / f"{name}.png").astype(np.int64)
        assert (mask == IGNORE_INDEX).any()
        for a, b in ((mask[:, :-1], mask[:, 1:]), (mask[:-1, :], mask[1:, :])):
            labelled = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert np.all(a[labelled] == b[labelled]), f"{name}: regions touch without void"


def test_void_band_is_about_three_pixels_wide_at_160() -> None:
    assert void_width(160) == 3 and void_width(64) == 1
    lengths = []
    for scene in _scenes(6, size=160):
        mask = render_scene(scene).mask
        for line in np.concatenate([mask, mask.T]):
            void = np.flatnonzero(line == IGNORE_INDEX)
            if void.size == 0:
                continue
            runs = np.split(void, np.flatnonzero(np.diff(void) > 1) + 1)
            for run in runs:
                lo, hi = run[0] - 1, run[-1] + 1
                if lo >= 0 and hi < line.size and line[lo] != line[hi]:  # crosses a boundary
                    lengths.append(run.size)
    assert len(lengths) > 200
    assert np.median(lengths) == 3
    assert 3 <= np.mean(lengths) <= 5  # oblique crossings are a little longer


def test_same_seed_same_bytes_for_any_num_workers(dataset: Path, tmp_path: Path) -> None:
    again = generate(
        tmp_path / "again", num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=SEED,
        num_workers=2,
    )
    assert _all_files(again) == _all_files(dataset)


def test_different_seed_changes_the_data(dataset: Path, tmp_path: Path) -> None:
    other = generate(tmp_path / "other", num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE,
                     seed=SEED + 1, num_workers=1)
    base, changed = _all_files(dataset), _all_files(other)
    assert base.keys() == changed.keys()
    images = [k for k in base if k.startswith("JPEGImages")]
    masks = [k for k in base if k.startswith("SegmentationClass")]
    assert all(base[k] != changed[k] for k in images)
    assert sum(base[k] != changed[k] for k in masks) >= len(masks) - 1


def test_saliency_is_informative_but_noisy(dataset: Path) -> None:
    fg_values, bg_values = [], []
    for name in _names(dataset, "trainval"):
        sal = np.asarray(Image.open(dataset / "SaliencyMaps" / f"{name}.png"), dtype=np.float64)
        mask = load_mask(dataset / "SegmentationClass" / f"{name}.png")
        fg_values.append(sal[(mask != 0) & (mask != IGNORE_INDEX)])
        bg_values.append(sal[mask == 0])
    fg, bg = np.concatenate(fg_values), np.concatenate(bg_values)
    assert fg.mean() > bg.mean() + 60
    assert (fg < 128).mean() > 0.03  # false negatives
    assert (bg >= 128).mean() > 0.002  # false positives
    all_values = np.concatenate([fg, bg])
    assert ((all_values > 20) & (all_values < 235)).mean() > 0.1  # soft, not a binary mask


def test_context_co_occurs_with_its_class() -> None:
    scenes = _scenes(800)
    assert dict(CONTEXT_OF_CLASS) == {"boat": "water", "train": "rails"}
    for cls, context in CONTEXT_OF_CLASS.items():
        with_cls = [s for s in scenes if any(o["class"] == cls for o in s["objects"])]
        without = [s for s in scenes if not any(o["class"] == cls for o in s["objects"])]
        assert len(with_cls) > 60
        assert np.mean([context in s["context"] for s in with_cls]) >= 0.8
        assert np.mean([context in s["context"] for s in without]) <= 0.1


def test_context_is_background_in_the_mask() -> None:
    for cls, context in CONTEXT_OF_CLASS.items():
        scene = next(
            s for s in _scenes(200)
            if context in s["context"] and [o["class"] for o in s["objects"]] == [cls]
        )
        bare = copy.deepcopy(scene)
        del bare["context"][context]
        with_ctx, without_ctx = render_scene(scene), render_scene(bare)
        np.testing.assert_array_equal(with_ctx.mask, without_ctx.mask)
        background = with_ctx.mask == 0
        diff = np.abs(with_ctx.image.astype(np.int64) - without_ctx.image).max(axis=2)
        # The context covers a sizeable part of the background (a band), not only the object.
        assert (diff[background] > 30).mean() > 0.05


def test_object_sizes_span_small_to_large() -> None:
    scenes = _scenes(400)
    areas = np.array([o["area_fraction"] for s in scenes for o in s["objects"]])
    counts = np.bincount([len(s["objects"]) for s in scenes])
    assert counts[0] == 0 and len(counts) == 4 and counts[1:].min() > 40
    assert areas.min() <= 0.025 and areas.max() >= 0.4
    assert (areas < 0.05).mean() > 0.15 and (areas > 0.2).mean() > 0.05


def test_classes_are_roughly_balanced() -> None:
    scenes = _scenes(1000)
    counts = np.bincount([o["class_id"] for s in scenes for o in s["objects"]],
                         minlength=NUM_CLASSES + 1)[1:]
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.25 * counts.mean()


def test_nominal_area_matches_the_rendered_silhouette() -> None:
    ratios, visible_ratios = [], []
    for scene in _scenes(120, size=96):
        if len(scene["objects"]) != 1:
            continue
        area = scene["objects"][0]["area_fraction"] * 96 * 96
        silhouette = object_masks(scene)[0]
        ratios.append(silhouette.sum() / area)
        visible_ratios.append((render_scene(scene).instances == 1).sum() / area)
    assert len(ratios) > 30
    # Border truncation only removes pixels; rasterisation adds a little noise.
    assert max(ratios) < 1.1 and np.median(ratios) > 0.9
    np.testing.assert_allclose(visible_ratios, ratios)


def test_later_objects_occlude_earlier_ones() -> None:
    checked = 0
    for scene in _scenes(300):
        classes = [o["class_id"] for o in scene["objects"]]
        if len(classes) < 2 or classes[0] == classes[1]:
            continue
        masks = object_masks(scene)
        overlap = masks[0] & masks[1]
        if overlap.sum() < 20:
            continue
        rendered = render_scene(scene)
        inner = overlap & (rendered.mask != IGNORE_INDEX)
        if len(classes) == 3:
            inner &= ~masks[2]
        assert np.all(rendered.mask[inner] == classes[1])
        assert (rendered.instances == 1).sum() < masks[0].sum()
        checked += 1
    assert checked >= 5


def _swap_class(scene: dict, index: int, donor: dict) -> dict:
    """Copy of `scene` whose object `index` takes the class and marking colour of `donor`."""
    swapped = copy.deepcopy(scene)
    obj = swapped["objects"][index]
    obj["class_id"], obj["class"] = donor["class_id"], donor["class"]
    obj["marking_colour"] = donor["marking_colour"]
    return swapped


@pytest.mark.parametrize("pair", LOOKALIKE_PAIRS)
def test_lookalike_pairs_share_the_body_and_differ_by_a_small_marking(pair) -> None:
    first, second = pair
    objects = [o for s in _scenes(600) for o in s["objects"]]
    a_objs = [o for o in objects if o["class"] == first]
    b_objs = [o for o in objects if o["class"] == second]
    for key in ("shape", "texture"):
        assert {o[key] for o in a_objs} == {o[key] for o in b_objs}
    body_a = np.array([o["body_colour"] for o in a_objs])
    body_b = np.array([o["body_colour"] for o in b_objs])
    assert np.abs(body_a.mean(0) - body_b.mean(0)).max() < 0.04
    mark_a = np.array([o["marking_colour"] for o in a_objs])
    mark_b = np.array([o["marking_colour"] for o in b_objs])
    gaps = np.linalg.norm(mark_a[:, None, :] - mark_b[None, :, :], axis=2)
    assert gaps.min() > 0.4  # the marking colours never overlap

    # Render one object as `first`, then as `second`: only the marking's pixels change.
    scene = next(s for s in _scenes(300, size=96)
                 if len(s["objects"]) == 1 and s["objects"][0]["class"] == first
                 and s["objects"][0]["area_fraction"] > 0.08)
    donor = b_objs[0]
    as_a, as_b = render_scene(scene), render_scene(_swap_class(scene, 0, donor))
    second_id = SYNTHETIC_CLASSES.index(second)
    np.testing.assert_array_equal(np.where(as_a.mask == IGNORE_INDEX, 255, 0),
                                  np.where(as_b.mask == IGNORE_INDEX, 255, 0))
    assert set(np.unique(as_b.mask).tolist()) == {0, second_id, IGNORE_INDEX}
    np.testing.assert_array_equal(as_a.marking, as_b.marking)
    body = as_a.instances == 1
    marking_share = as_a.marking.sum() / body.sum()
    assert 0.06 < marking_share < 0.15
    changed = np.abs(as_a.image.astype(np.int64) - as_b.image).max(axis=2) > 10
    near_marking = np.zeros_like(as_a.marking)
    ys, xs = np.nonzero(as_a.marking)
    for dy in range(-2, 3):  # the anti-aliasing blur spreads the change by ~2 px
        for dx in range(-2, 3):
            near_marking[np.clip(ys + dy, 0, 95), np.clip(xs + dx, 0, 95)] = True
    assert changed.any() and not (changed & ~near_marking).any()
    assert changed.sum() < 0.25 * body.sum()


def test_sample_grid(dataset: Path, tmp_path: Path) -> None:
    out = save_sample_grid(dataset, tmp_path / "grid.png", num=NUM_TRAIN + NUM_VAL)
    grid = np.asarray(Image.open(out).convert("RGB"))
    # All samples are shown in list order; the first panel is the first image, enlarged.
    zoom = 128 // SIZE
    first = load_image(dataset / "JPEGImages" / f"{_names(dataset, 'trainval')[0]}.png")
    panel = first.repeat(zoom, axis=0).repeat(zoom, axis=1)
    h, w = panel.shape[:2]
    hits = [
        (y, x) for y in range(40) for x in range(40)
        if np.array_equal(grid[y : y + h, x : x + w], panel)
    ]
    assert hits
    rows = (NUM_TRAIN + NUM_VAL + 1) // 2
    assert grid.shape[0] > rows * panel.shape[0] and grid.shape[1] > 6 * panel.shape[1]


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / "x", num_train=0, num_val=0)
    with pytest.raises(ValueError):
        describe_scene(0, "test", 0)
    with pytest.raises(ValueError):
        describe_scene(-1, "train", 0)
