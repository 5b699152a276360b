"""Seeded synthetic WSSS data set (VOC layout) showing the failure modes WSSS papers address.

The generator is the library's built-in default data: methods train on it from scratch on a CPU,
so it is small (160 px by default) yet hard in the ways that make WSSS methods differ.

Layout written by `generate(root, ...)`:
    root/JPEGImages/<name>.png            RGB uint8 (H, W, 3), lossless PNG
    root/SegmentationClass/<name>.png     palette PNG (H, W): 0 background, 1..C classes, 255 void
    root/SaliencyMaps/<name>.png          grayscale uint8 (H, W), noisy class-agnostic saliency
    root/ImageSets/Segmentation/{train,val,trainval}.txt    one name per line
    root/classes.txt                      `SYNTHETIC_CLASSES`, background first
    root/meta.json                        parameters, classes, counts, one record per image
Names are `syn_train_000001`, `syn_val_000001`, ... (1-based). `meta.json` is written last, so its
presence marks a complete set.

Scenes. Every image holds 1-3 objects of `SYNTHETIC_CLASSES[1:]` (classes drawn uniformly, so
frequencies are balanced) on a cluttered background: a two-colour gradient, sometimes a horizon,
low-frequency colour noise, a fine texture (noise, stripes or grain) and 1-6 distractor shapes
(blobs, boxes, thin lines) that are background in the mask. Bodies are blobs, rounded rectangles and
polygons with class textures, colour jitter and directional shading; each image then gets its own
illumination (gain, gamma, colour cast, light ramp), a slight blur and sensor noise.

Failure modes, each recorded in `meta.json["failure_modes"]`:
  (a) Look-alike classes (`LOOKALIKE_PAIRS`): cat/dog share one body (furry blob, tan-brown) and
      bus/truck share one body (striped grey-blue rounded box). The classes of a pair differ only by
      the colour of a small marking inside the body that covers ~10% of its area (a disc at the
      front for cat/dog, a square at the upper front for bus/truck). A classifier needs only the
      marking, so CAMs concentrate there and under-cover the body. `render_scene` returns the
      marking pixels, so CAM coverage of the part versus the body can be measured.
  (b) Co-occurrence (`CONTEXT_OF_CLASS`): a boat sits on a water band and a train on a rails stripe
      in 90% of the images that contain them (4% of the other images show the context alone).
      The context is background (0) in the mask, so CAMs that fire on it produce false positives.
  (c) Scale and occlusion: nominal object areas are log-uniform between 2% and 50% of the image
      (a single object; 25% / 15% caps with 2 / 3 objects; 1 / 2 / 3 objects in 45 / 35 / 20% of
      the images). Objects are drawn largest first, later ones over earlier ones (placement limits
      the overlap of bounding boxes to ~45%), and the mask holds the visible class. Objects may
      be cut by the image border.
  (d) Void band: as in VOC, pixels within a band around every object boundary (object/background
      and object/object) are 255. Its width is `void_width(image_size)`: 3 px at 160 px.
Saliency maps imitate off-the-shelf detectors (PoolNet, DSS) used by AuxSegNet: blurred
foreground with per-object confidence, missed objects and missing parts (false negatives), salient
distractors and random blobs (false positives), and dilated or eroded boundaries.

Determinism: a scene is a pure function of (seed, split, index, image_size); its geometry and
colours come from `describe_scene` (cheap, no rendering) and its pixels from `render_scene`, each
with its own generator seeded from that tuple. Files are therefore byte-identical for the same
seed whatever `num_workers` is.
"""

from __future__ import annotations

import io as _io
import json
import math
import multiprocessing
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from wsss.data.labels import BACKGROUND, IGNORE_INDEX, color_palette, read_class_names
from wsss.io import (
    DataError,
    load_image,
    load_mask,
    remove_temporaries,
    save_mask,
    write_bytes,
    write_text,
)

__all__ = [
    "CONTEXT_OF_CLASS",
    "LOOKALIKE_PAIRS",
    "SYNTHETIC_CLASSES",
    "RenderedScene",
    "describe_scene",
    "generate",
    "object_masks",
    "render_scene",
    "save_sample_grid",
    "void_width",
]

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_IDS = {"train": 1, "val": 2}

# Scene statistics (documented in the module docstring and copied into meta.json).
MIN_AREA_FRACTION = 0.02
MAX_AREA_FRACTION = (0.5, 0.25, 0.15)  # cap per object for 1, 2, 3 objects in the image
NUM_OBJECTS_PROBS = (0.45, 0.35, 0.20)
MARKING_AREA_FRACTION = 0.10
CONTEXT_PROB_WITH_CLASS = 0.90
CONTEXT_PROB_WITHOUT_CLASS = 0.04
# Objects are shrunk to fit within 96% of the image side (so the long train stays below ~35% of
# the image); `area_fraction` records the area after shrinking.
_FIT = 0.96
# An object may cover at most this fraction of an earlier object's bounding box (placement retries).
_MAX_BOX_OVERLAP = 0.45


@dataclass(frozen=True)
class _Body:
    """Appearance shared by every instance of a class (and by both classes of a look-alike pair)."""

    shape: str  # blob | lobed | roundrect | boat | chevron | bottle
    aspect: tuple[float, float]  # long half-size / short half-size
    max_angle: float  # rotation drawn from U(-max_angle, max_angle), radians
    hue: tuple[float, float]  # degrees, may exceed 360 (taken modulo)
    saturation: tuple[float, float]
    value: tuple[float, float]
    texture: str
    part_hsv: tuple[tuple[float, float], ...] | None = None  # non-discriminative part colour


@dataclass(frozen=True)
class _ClassSpec:
    name: str
    body: _Body
    marking_hsv: tuple[tuple[float, float], ...] | None  # discriminative marking colour (pairs)
    marking_shape: str | None
    context: str | None
    description: str


_PET_BODY = _Body(
    shape="blob", aspect=(1.3, 1.8), max_angle=math.pi, hue=(22.0, 38.0),
    saturation=(0.35, 0.6), value=(0.45, 0.75), texture="fur",
)
_VEHICLE_BODY = _Body(
    shape="roundrect", aspect=(1.8, 2.6), max_angle=0.25, hue=(200.0, 230.0),
    saturation=(0.12, 0.35), value=(0.55, 0.8), texture="panels",
)

_CLASS_SPECS: tuple[_ClassSpec, ...] = (
    _ClassSpec(
        "cat", _PET_BODY, ((50.0, 62.0), (0.85, 1.0), (0.9, 1.0)), "disc", None,
        "furry tan-brown blob, any orientation; a bright yellow disc (~10% of the body) at its "
        "front end; look-alike of dog",
    ),
    _ClassSpec(
        "dog", _PET_BODY, ((195.0, 210.0), (0.85, 1.0), (0.9, 1.0)), "disc", None,
        "the same furry tan-brown blob as cat; a bright sky-blue disc (~10% of the body) at its "
        "front end; look-alike of cat",
    ),
    _ClassSpec(
        "bus", _VEHICLE_BODY, ((-8.0, 8.0), (0.85, 1.0), (0.85, 1.0)), "square", None,
        "striped grey-blue rounded box, nearly level; a red square (~10% of the body) at its "
        "upper front; look-alike of truck",
    ),
    _ClassSpec(
        "truck", _VEHICLE_BODY, ((105.0, 130.0), (0.85, 1.0), (0.8, 1.0)), "square", None,
        "the same striped grey-blue rounded box as bus; a green square (~10% of the body) at its "
        "upper front; look-alike of bus",
    ),
    _ClassSpec(
        "boat",
        _Body("boat", (1.1, 1.5), 0.12, (0.0, 360.0), (0.45, 0.8), (0.45, 0.8), "planks",
              part_hsv=((0.0, 360.0), (0.0, 0.08), (0.85, 1.0))),
        None, None, "water",
        "hull with a white triangular sail, any hull colour; sits on a blue water band in 90% of "
        "its images",
    ),
    _ClassSpec(
        "train",
        _Body("roundrect", (2.6, 3.6), 0.06, (95.0, 150.0), (0.45, 0.8), (0.3, 0.55), "windows",
              part_hsv=((190.0, 220.0), (0.05, 0.25), (0.75, 0.95))),
        None, None, "rails",
        "long dark-green box with a row of light windows, level with the rails; runs on a "
        "rails stripe (gravel, sleepers, two rails) in 90% of its images",
    ),
    _ClassSpec(
        "bird",
        _Body("chevron", (1.6, 2.4), math.pi, (8.0, 25.0), (0.7, 0.9), (0.7, 0.9), "feathers"),
        None, None, None, "orange chevron (spread wings) with feather stripes, any orientation",
    ),
    _ClassSpec(
        "bottle",
        _Body("bottle", (2.2, 3.0), 0.35, (165.0, 185.0), (0.45, 0.7), (0.4, 0.65), "glass",
              part_hsv=((0.0, 360.0), (0.0, 0.15), (0.1, 0.3))),
        None, None, None, "upright teal glass bottle with a highlight stripe and a dark cap",
    ),
    _ClassSpec(
        "plant",
        _Body("lobed", (1.0, 1.25), math.pi, (85.0, 130.0), (0.6, 0.9), (0.35, 0.65), "leaves"),
        None, None, None, "green star-shaped blob with 5-8 lobes and mottled leaf texture",
    ),
    _ClassSpec(
        "tvmonitor",
        _Body("roundrect", (1.2, 1.6), 0.15, (0.0, 360.0), (0.0, 0.08), (0.08, 0.3), "screen",
              part_hsv=((200.0, 250.0), (0.3, 0.7), (0.15, 0.4))),
        None, None, None, "dark frame around a glowing blue screen showing a blurry picture",
    ),
)

SYNTHETIC_CLASSES: tuple[str, ...] = ("background",) + tuple(s.name for s in _CLASS_SPECS)
LOOKALIKE_PAIRS: tuple[tuple[str, str], ...] = (("cat", "dog"), ("bus", "truck"))
CONTEXT_OF_CLASS: types.MappingProxyType[str, str] = types.MappingProxyType(
    {s.name: s.context for s in _CLASS_SPECS if s.context is not None}
)

FAILURE_MODES: types.MappingProxyType[str, str] = types.MappingProxyType({
    "lookalike_classes": (
        "cat/dog and bus/truck share body shape, colour and texture; they differ only by the "
        "colour of a marking covering ~10% of the body, so a classifier needs only the marking "
        "and CAMs under-cover the body"
    ),
    "co_occurrence": (
        "boat appears on a water band and train on a rails stripe in 90% of their images; the "
        "context is background (0) in the mask, so CAMs leak onto it"
    ),
    "scale_and_occlusion": (
        "1-3 objects per image with nominal areas from 2% to 50% of the image (log-uniform); "
        "later objects occlude earlier ones and the mask holds the visible class"
    ),
    "void_band": "VOC-style 255 band on every object boundary (void_width px: 3 px at 160 px)",
    "noisy_saliency": (
        "class-agnostic saliency with blur, per-object confidence, missed objects and parts, "
        "salient distractors and random blobs"
    ),
})

# Polygon templates in local coordinates spanning [-1, 1] on both axes (u right, v down).
# boat: hull below the waterline v = 0.2, sail above it.
_BOAT_WATERLINE = 0.2
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "boat": ((-1.0, 0.2), (-0.55, 0.2), (0.1, -1.0), (0.1, 0.2), (1.0, 0.2), (0.7, 1.0),
             (-0.7, 1.0)),
    "chevron": ((-1.0, -1.0), (0.0, 0.1), (1.0, -1.0), (1.0, -0.35), (0.0, 1.0), (-1.0, -0.35)),
    "bottle": ((-1.0, 1.0), (1.0, 1.0), (1.0, -0.15), (0.35, -0.5), (0.35, -1.0), (-0.35, -1.0),
               (-0.35, -0.5), (-1.0, -0.15)),
}


def _polygon_area(vertices: tuple[tuple[float, float], ...]) -> float:
    """Shoelace area of a simple polygon given as (u, v) vertices."""
    pts = np.asarray(vertices, dtype=np.float64)
    u, v = pts[:, 0], pts[:, 1]
    return float(0.5 * abs(np.dot(u, np.roll(v, -1)) - np.dot(v, np.roll(u, -1))))


class RenderedScene(NamedTuple):
    """Pixels of one scene (H = W = image_size).

    Attributes:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8, 0 background, 1..C classes, 255 void band.
        saliency: (H, W) uint8, 0..255 noisy class-agnostic saliency.
        instances: (H, W) int16, k > 0 where `objects[k - 1]` is visible, 0 elsewhere (no void).
        marking: (H, W) bool, visible pixels of the discriminative markings of look-alike classes.
    """

    image: np.ndarray
    mask: np.ndarray
    saliency: np.ndarray
    instances: np.ndarray
    marking: np.ndarray


def void_width(image_size: int) -> int:
    """Width in pixels of the void band: ~2.5 px per 160 px (VOC's ~5 px at 500 px is thinner)."""
    return max(1, int(image_size * 2.5 / 160 + 0.5))


def _scene_seed(seed: int, split: str, index: int, stream: int) -> list[int]:
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return [int(seed), _SPLIT_IDS[split], int(index), stream]


def _hsv_to_rgb(h: float, s: float, v: float) -> list[float]:
    """One HSV colour (hue in degrees, s and v in [0, 1]) as RGB floats in [0, 1]."""
    h = (h % 360.0) / 60.0
    i = int(h) % 6
    f = h - math.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i]
    return [r, g, b]


def _sample_rgb(rng: np.random.Generator, hsv: tuple[tuple[float, float], ...]) -> list[float]:
    h, s, v = (float(rng.uniform(lo, hi)) for lo, hi in hsv)
    return [round(c, 4) for c in _hsv_to_rgb(h, s, v)]


def _unit_area(obj: dict[str, Any]) -> float:
    """Silhouette area divided by a*b (a, b = half-sizes along the local u, v axes)."""
    shape = obj["shape"]
    if shape in ("blob", "lobed"):
        # r(t) = 1 + sum amp_k cos(k t + phase) in ellipse-normalised polar coordinates:
        # area = 1/2 * integral r^2 dt = pi * (1 + sum amp_k^2 / 2), times the Jacobian a*b.
        return math.pi * (1.0 + 0.5 * sum(amp * amp for _, amp, _ in obj["harmonics"]))
    if shape == "roundrect":
        # 4ab minus the four corner cut-offs (4 - pi) r^2, with corner radius r = corner * b.
        a, b = obj["half_size"]
        return 4.0 - (4.0 - math.pi) * obj["corner"] ** 2 * b / a
    return _polygon_area(_POLYGONS[shape])


def _extent(obj: dict[str, Any]) -> tuple[float, float]:
    """Half-extents (x, y) in pixels of the rotated silhouette's bounding box (conservative)."""
    a, b = obj["half_size"]
    grow = 1.0
    if obj["shape"] in ("blob", "lobed"):
        grow = 1.0 + sum(abs(amp) for _, amp, _ in obj["harmonics"])
    ca, sa = abs(math.cos(obj["angle"])), abs(math.sin(obj["angle"]))
    return grow * (a * ca + b * sa), grow * (a * sa + b * ca)


def _box(cx: float, cy: float, ex: float, ey: float) -> tuple[float, float, float, float]:
    return cx - ex, cy - ey, cx + ex, cy + ey


def _box_overlap(new: tuple[float, ...], old: tuple[float, ...]) -> float:
    """Fraction of `old`'s area covered by `new`."""
    w = max(0.0, min(new[2], old[2]) - max(new[0], old[0]))
    h = max(0.0, min(new[3], old[3]) - max(new[1], old[1]))
    area = max(1e-9, (old[2] - old[0]) * (old[3] - old[1]))
    return w * h / area


def _sample_object(
    rng: np.random.Generator, class_id: int, area_fraction: float, size: int
) -> dict[str, Any]:
    """Shape, size, colours and markings of one object (position set later)."""
    spec = _CLASS_SPECS[class_id - 1]
    body = spec.body
    obj: dict[str, Any] = {
        "class_id": class_id,
        "class": spec.name,
        "shape": body.shape,
        "texture": body.texture,
        "angle": float(rng.uniform(-body.max_angle, body.max_angle)),
        "mirror": bool(rng.random() < 0.5),
    }
    if body.shape == "blob":
        ks = rng.choice([2, 3, 4], size=int(rng.integers(2, 4)), replace=False)
        obj["harmonics"] = [
            [int(k), float(rng.uniform(0.03, 0.09)), float(rng.uniform(0, 2 * math.pi))]
            for k in ks
        ]
    elif body.shape == "lobed":
        obj["harmonics"] = [
            [int(rng.integers(5, 9)), float(rng.uniform(0.18, 0.3)), float(rng.uniform(0, 6.3))],
            [2, float(rng.uniform(0.0, 0.08)), float(rng.uniform(0, 2 * math.pi))],
        ]
    elif body.shape == "roundrect":
        obj["corner"] = float(rng.uniform(0.1, 0.3))
    aspect = float(rng.uniform(*body.aspect))
    # half_size is set before _unit_area for roundrect (its corner scales with the short side).
    obj["half_size"] = [aspect, 1.0] if body.shape != "bottle" else [1.0, aspect]
    area_px = area_fraction * size * size
    ab = area_px / _unit_area(obj)
    if body.shape == "bottle":  # tall: the long side is v
        b = math.sqrt(ab * aspect)
        a = ab / b
    else:
        a = math.sqrt(ab * aspect)
        b = ab / a
    obj["half_size"] = [a, b]
    ex, ey = _extent(obj)
    shrink = min(1.0, _FIT * size / (2 * ex), _FIT * size / (2 * ey))
    obj["half_size"] = [a * shrink, b * shrink]
    a, b = obj["half_size"]
    if body.shape == "roundrect":
        obj["corner_px"] = obj["corner"] * b
    obj["area_fraction"] = _unit_area(obj) * a * b / (size * size)
    obj["body_colour"] = _sample_rgb(rng, (body.hue, body.saturation, body.value))
    obj["part_colour"] = _sample_rgb(rng, body.part_hsv) if body.part_hsv else None
    if spec.marking_hsv is not None:
        marking_area = MARKING_AREA_FRACTION * obj["area_fraction"] * size * size
        if spec.marking_shape == "disc":
            obj["marking"] = {
                "shape": "disc", "center": [0.58 * a, 0.0],
                "size": math.sqrt(marking_area / math.pi),
            }
        else:
            side = math.sqrt(marking_area)
            obj["marking"] = {
                "shape": "square", "center": [a - 0.1 * b - side / 2, -0.88 * b + side / 2],
                "size": side,
            }
        obj["marking_colour"] = _sample_rgb(rng, spec.marking_hsv)
    else:
        obj["marking"] = None
        obj["marking_colour"] = None
    return obj


def describe_scene(seed: int, split: str, index: int, *, image_size: int = 160) -> dict[str, Any]:
    """The geometry and colours of one scene, without rendering (a pure, cheap function).

    Args:
        seed: non-negative data-set seed.
        split: "train" or "val".
        index: 0-based image index within the split.
        image_size: side H = W of the square image in pixels.

    Returns:
        JSON-serialisable dict: `name`, `split`, `index`, `seed`, `image_size`, `render_seed`,
        `context` ({"water": {"top": y}} and/or
        {"rails": {"y": y, "angle": rad, "half_height": h}}),
        `objects` in drawing order (later ones occlude earlier ones), each with `class_id`
        (1..C), `class`, `shape`, `center` [x, y] and `half_size` [a, b] in pixels, `angle`
        (radians), `mirror`, `area_fraction` (nominal silhouette area / image area, before
        clipping and occlusion), `body_colour` / `part_colour` / `marking_colour` (RGB in [0, 1]
        or None) and `marking` (local-coordinate disc or square, or None).
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    rng = np.random.default_rng(_scene_seed(seed, split, index, 0))
    size = float(image_size)
    num_classes = len(_CLASS_SPECS)
    num_objects = int(rng.choice(3, p=NUM_OBJECTS_PROBS)) + 1
    class_ids = [int(c) for c in rng.integers(1, num_classes + 1, size=num_objects)]
    max_area = MAX_AREA_FRACTION[num_objects - 1]
    areas = np.exp(rng.uniform(math.log(MIN_AREA_FRACTION), math.log(max_area), size=num_objects))
    objects = [_sample_object(rng, c, float(a), image_size) for c, a in zip(class_ids, areas)]
    objects.sort(key=lambda o: -o["area_fraction"])  # large first: small ones stay visible

    context: dict[str, dict[str, float]] = {}
    present = {o["class"] for o in objects}
    for cls, ctx in sorted(CONTEXT_OF_CLASS.items(), key=lambda kv: kv[1]):
        p = CONTEXT_PROB_WITH_CLASS if cls in present else CONTEXT_PROB_WITHOUT_CLASS
        if rng.random() < p:
            if ctx == "water":
                context["water"] = {"top": float(rng.uniform(0.45, 0.7) * size)}
            else:
                context["rails"] = {
                    "y": float(rng.uniform(0.55, 0.85) * size),
                    "angle": float(rng.uniform(-0.06, 0.06)),
                    "half_height": float(rng.uniform(0.05, 0.07) * size),
                }

    boxes: list[tuple[float, ...]] = []
    for obj in objects:
        ex, ey = _extent(obj)
        if obj["class"] == "train" and "rails" in context:
            obj["angle"] = context["rails"]["angle"]
            ex, ey = _extent(obj)
        best: tuple[float, float, float] | None = None
        for _ in range(12):
            cx = float(rng.uniform(min(0.6 * ex, size / 2), max(size - 0.6 * ex, size / 2)))
            cy = float(rng.uniform(min(0.6 * ey, size / 2), max(size - 0.6 * ey, size / 2)))
            if obj["class"] == "boat" and "water" in context:
                top = context["water"]["top"]
                waterline = top + float(rng.uniform(0.1, 0.6)) * (size - top)
                cy = waterline - _BOAT_WATERLINE * obj["half_size"][1]
            elif obj["class"] == "train" and "rails" in context:
                rails = context["rails"]
                rail_y = rails["y"] + math.tan(rails["angle"]) * (cx - size / 2)
                # The train's underside rests a little below the rails' centre line.
                cy = rail_y - obj["half_size"][1] + 0.2 * rails["half_height"]
            box = _box(cx, cy, ex, ey)
            overlap = max((_box_overlap(box, old) for old in boxes), default=0.0)
            if best is None or overlap < best[0]:
                best = (overlap, cx, cy)
            if overlap <= _MAX_BOX_OVERLAP:
                break
        assert best is not None
        obj["center"] = [best[1], best[2]]
        boxes.append(_box(best[1], best[2], ex, ey))

    return {
        "name": f"syn_{split}_{index + 1:06d}",
        "split": split,
        "index": int(index),
        "seed": int(seed),
        "image_size": int(image_size),
        "render_seed": _scene_seed(seed, split, index, 1),
        "context": context,
        "objects": objects,
    }


# ----------------------------------------------------------------------------- rendering helpers


def _gaussian_blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W) or (H, W, C) float32 over the first two axes (reflect)."""
    if sigma <= 0:
        return array
    radius = max(1, int(3.0 * sigma + 0.5))
    radius = min(radius, array.shape[0] - 1, array.shape[1] - 1)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = array
    for axis in (0, 1):
        n = out.shape[axis]
        moved = np.moveaxis(out, axis, 0)
        # Reflect padding without repeating the edge pixel (numpy's "reflect" mode).
        index = np.concatenate(
            [np.arange(radius, 0, -1), np.arange(n), np.arange(n - 2, n - 2 - radius, -1)]
        )
        padded = moved[index]
        acc = kernel[0] * padded[0:n]
        for i in range(1, len(kernel)):
            acc += kernel[i] * padded[i : i + n]
        out = np.moveaxis(acc, 0, axis)
    return np.ascontiguousarray(out)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise (size, size, channels) float32, ~N(0, 1) on a `cells`-cell lattice."""
    grid = rng.standard_normal(size=(cells + 1, cells + 1, channels), dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    w = t - i0
    w = w * w * (3 - 2 * w)  # smoothstep hides the lattice
    interp = np.zeros((size, cells + 1), dtype=np.float32)
    interp[np.arange(size), i0] = 1 - w
    interp[np.arange(size), i0 + 1] += w
    rows = np.tensordot(interp, grid, axes=(1, 0))  # (size, cells + 1, channels)
    return np.ascontiguousarray(np.tensordot(rows, interp, axes=(1, 1)).transpose(0, 2, 1))


def _boundary_band(instances: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels with a pixel of another instance id inside a disc-shaped window.

    The window holds the offsets of a (width + 1)-pixel square whose distance to the square's
    centre is at most (width + 1) / 2 (+ a margin against rounding), so the band is `width` px
    across an axis-aligned boundary and about as wide across an oblique one (a square window
    would make diagonal bands ~40% wider). Windows are clipped at the image border.
    """
    k = width + 1
    lo = (k - 1) // 2
    hi = k - 1 - lo
    centre = (hi - lo) / 2
    radius_sq = (k / 2 + 0.05) ** 2
    height, width_px = instances.shape
    band = np.zeros(instances.shape, dtype=bool)
    for dy in range(-lo, hi + 1):
        for dx in range(-lo, hi + 1):
            if (dy, dx) == (0, 0) or (dy - centre) ** 2 + (dx - centre) ** 2 > radius_sq:
                continue
            ys = slice(max(0, -dy), height - max(0, dy))
            xs = slice(max(0, -dx), width_px - max(0, dx))
            other = instances[
                max(0, dy) : height + min(0, dy), max(0, dx) : width_px + min(0, dx)
            ]
            band[ys, xs] |= instances[ys, xs] != other
    return band


def _local_frame(
    obj: dict[str, Any], size: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Crop of the image holding the object and its local coordinates there.

    Returns:
        (row slice, column slice), u and v (h, w) float32 in pixels along the object's axes;
        None when the object lies outside the image.
    """
    cx, cy = obj["center"]
    ex, ey = _extent(obj)
    x0, x1 = max(0, math.floor(cx - ex - 1)), min(size, math.ceil(cx + ex + 1))
    y0, y1 = max(0, math.floor(cy - ey - 1)), min(size, math.ceil(cy + ey + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    c, s = math.cos(obj["angle"]), math.sin(obj["angle"])
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if obj["mirror"]:
        u = -u
    return (slice(y0, y1), slice(x0, x1)), u, v


def _polygon_inside(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over pixels, looping over the few edges."""
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    n = len(vertices)
    for i in range(n):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % n]
        if y1 == y2:
            continue  # a horizontal edge never crosses a horizontal ray
        crosses = (y1 > v) != (y2 > v)
        x_at = (x2 - x1) * (v - y1) / (y2 - y1) + x1
        inside ^= crosses & (u < x_at)
    return inside


def _silhouette(obj: dict[str, Any], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(h, w) bool silhouette of `obj` at local coordinates u, v."""
    a, b = obj["half_size"]
    shape = obj["shape"]
    if shape in ("blob", "lobed"):
        un, vn = u / a, v / b
        theta = np.arctan2(vn, un)
        radius = np.ones_like(theta)
        for k, amp, phase in obj["harmonics"]:
            radius += amp * np.cos(k * theta + phase)
        return un * un + vn * vn <= radius * radius
    if shape == "roundrect":
        c = obj["corner_px"]
        qx = np.abs(u) - (a - c)
        qy = np.abs(v) - (b - c)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) <= c
    vertices = np.asarray(_POLYGONS[shape], dtype=np.float32) * np.array([a, b], np.float32)
    return _polygon_inside(u, v, vertices)


def object_masks(scene: dict[str, Any]) -> np.ndarray:
    """Full (amodal) silhouettes of the scene's objects, ignoring occlusion.

    Returns:
        (K, H, W) bool, one per object in `scene["objects"]` order.
    """
    size = scene["image_size"]
    masks = np.zeros((len(scene["objects"]), size, size), dtype=bool)
    for k, obj in enumerate(scene["objects"]):
        frame = _local_frame(obj, size)
        if frame is not None:
            crop, u, v = frame
            masks[k][crop] = _silhouette(obj, u, v)
    return masks


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cluttered background (size, size, 3) float32 in ~[0, 1]."""
    yy = (np.arange(size, dtype=np.float32) + 0.5)[:, None] / size
    xx = (np.arange(size, dtype=np.float32) + 0.5)[None, :] / size
    c0 = np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.85)))
    if rng.random() < 0.5:
        c1 = np.clip(c0 + rng.normal(0, 0.12, 3), 0, 1)
    else:
        c1 = np.array(
            _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.85))
        )
    phi = rng.uniform(0, 2 * math.pi)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(phi) + (yy - 0.5) * math.sin(phi), 0, 1)
    c0, c1 = c0.astype(np.float32), c1.astype(np.float32)
    image = c0 + (c1 - c0) * t[..., None]  # (size, size, 3) float32
    if rng.random() < 0.3:  # horizon: a differently coloured ground below a line
        horizon = rng.uniform(0.3, 0.7) + (xx - 0.5) * rng.uniform(-0.2, 0.2)
        ground = np.array(
            _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.7)),
            dtype=np.float32,
        )
        below = np.broadcast_to(yy > horizon, (size, size))
        image[below] = 0.5 * image[below] + 0.5 * ground
    image += rng.uniform(0.04, 0.14) * _smooth_noise(rng, size, int(rng.integers(2, 6)), 3)
    kind = int(rng.integers(0, 3))
    amp = float(rng.uniform(0.03, 0.1))
    if kind == 0:
        image += amp * rng.standard_normal(size=(size, size, 1), dtype=np.float32)
    elif kind == 1:
        psi = rng.uniform(0, math.pi)
        period = rng.uniform(4, 16) * size / 160
        proj = (xx * math.cos(psi) + yy * math.sin(psi)) * size
        image += (amp * np.sin(2 * math.pi * proj / period))[..., None].astype(np.float32)
    else:
        grain = _gaussian_blur(rng.standard_normal(size=(size, size, 1), dtype=np.float32), 1.0)
        image += 2.5 * amp * grain
    return image


def _draw_water(image: np.ndarray, rng: np.random.Generator, top: float) -> None:
    size = image.shape[0]
    rows = np.arange(size, dtype=np.float32) + 0.5
    cols = np.arange(size, dtype=np.float32) + 0.5
    region = rows >= top
    if not region.any():
        return
    y = rows[region][:, None]
    x = cols[None, :]
    depth = (y - top) / max(1.0, size - top)
    colour = np.array(
        _hsv_to_rgb(rng.uniform(190, 215), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.6)),
        dtype=np.float32,
    )
    # Waves get longer towards the viewer (bottom), as in perspective.
    period = (2.5 + 6.0 * depth) * size / 160
    phase = 0.8 * np.sin(2 * math.pi * x / (rng.uniform(20, 40) * size / 160) + rng.uniform(0, 6.3))
    waves = np.sin(2 * math.pi * (y - top) / period + phase)
    noise = rng.standard_normal(size=waves.shape, dtype=np.float32)
    shade = 1.15 - 0.3 * depth + 0.15 * waves + 0.04 * noise
    image[region] = colour[None, None, :] * shade[..., None].astype(np.float32)


def _draw_rails(image: np.ndarray, rng: np.random.Generator, rails: dict[str, float]) -> None:
    size = image.shape[0]
    xx = (np.arange(size, dtype=np.float32) + 0.5)[None, :] - size / 2
    yy = (np.arange(size, dtype=np.float32) + 0.5)[:, None] - rails["y"]
    c, s = math.cos(rails["angle"]), math.sin(rails["angle"])
    along = xx * c + yy * s
    across = -xx * s + yy * c
    half = rails["half_height"]
    band = np.abs(across) < half
    gravel = np.array(
        _hsv_to_rgb(rng.uniform(20, 40), rng.uniform(0.1, 0.25), rng.uniform(0.35, 0.55)),
        dtype=np.float32,
    )
    texture = 1.0 + 0.18 * rng.standard_normal(size=(size, size), dtype=np.float32)
    layer = gravel[None, None, :] * texture[..., None]
    period = rng.uniform(0.045, 0.065) * size
    sleepers = (np.mod(along + rng.uniform(0, period), period) < 0.35 * period) & (
        np.abs(across) < 0.8 * half
    )
    layer[sleepers] = np.array(_hsv_to_rgb(25, 0.5, rng.uniform(0.2, 0.3)), np.float32)
    rail_half_width = max(0.6, 0.006 * size)
    steel = np.abs(np.abs(across) - 0.45 * half) < rail_half_width
    layer[steel] = np.array(_hsv_to_rgb(210, 0.05, rng.uniform(0.7, 0.85)), np.float32)
    image[band] = layer[band]


def _draw_distractors(image: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Background clutter; returns the (H, W) bool mask of each distractor."""
    size = image.shape[0]
    masks = []
    for _ in range(int(rng.integers(1, 7))):
        kind = int(rng.integers(0, 3))
        area = math.exp(rng.uniform(math.log(0.003), math.log(0.05))) * size * size
        obj: dict[str, Any] = {
            "angle": float(rng.uniform(-math.pi, math.pi)), "mirror": False,
            "center": [float(rng.uniform(0, size)), float(rng.uniform(0, size))],
        }
        if kind == 0:
            obj["shape"] = "blob"
            obj["harmonics"] = [
                [int(k), float(rng.uniform(0.0, 0.15)), float(rng.uniform(0, 6.3))] for k in (2, 3)
            ]
            aspect = rng.uniform(1.0, 2.0)
            b = math.sqrt(area / (math.pi * aspect))
            obj["half_size"] = [aspect * b, b]
        elif kind == 1:
            obj["shape"] = "roundrect"
            aspect = rng.uniform(1.0, 2.5)
            b = math.sqrt(area / (4 * aspect))
            obj["half_size"] = [aspect * b, b]
            obj["corner_px"] = float(rng.uniform(0.0, 0.5)) * b
        else:  # thin line: a long, narrow box
            obj["shape"] = "roundrect"
            b = float(rng.uniform(0.4, 1.2)) * size / 160 + 0.3
            obj["half_size"] = [float(rng.uniform(0.1, 0.4)) * size, b]
            obj["corner_px"] = 0.0
        colour = np.array(
            _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.65), rng.uniform(0.2, 0.9)),
            dtype=np.float32,
        )
        frame = _local_frame(obj, size)
        if frame is None:
            continue
        crop, u, v = frame
        inside = _silhouette(obj, u, v)
        stripes = rng.random() < 0.3
        period = rng.uniform(3, 8) * size / 160
        shade = 1.0 + 0.06 * rng.standard_normal(size=u.shape, dtype=np.float32)
        if stripes:
            shade = shade + 0.15 * np.sign(np.sin(2 * math.pi * u / period))
        patch = image[crop]
        patch[inside] = (colour[None, None, :] * shade[..., None])[inside]
        full = np.zeros((size, size), dtype=bool)
        full[crop] = inside
        masks.append(full)
    return masks


def _object_texture(
    rng: np.random.Generator, obj: dict[str, Any], u: np.ndarray, v: np.ndarray, size: int
) -> np.ndarray:
    """Multiplicative texture (h, w) float32 around 0 for an object's body."""
    a, b = obj["half_size"]
    scale = size / 160
    noise = rng.standard_normal(size=u.shape, dtype=np.float32)
    texture = obj["texture"]
    if texture == "fur":
        period = rng.uniform(3, 6) * scale
        return 0.10 * noise + 0.07 * np.sin(2 * math.pi * v / period + 0.5 * noise)
    if texture == "panels":
        # A darker band along the lower body and thin horizontal seams.
        band = ((v > 0.15 * b) & (v < 0.45 * b)).astype(np.float32)
        seams = (np.mod(v + b, 0.35 * b) < max(0.8, 0.05 * b)).astype(np.float32)
        return -0.25 * band - 0.12 * seams + 0.04 * noise
    if texture == "planks":
        period = rng.uniform(3, 5) * scale
        return 0.1 * np.sign(np.sin(2 * math.pi * v / period)) + 0.05 * noise
    if texture == "feathers":
        period = rng.uniform(3, 6) * scale
        return 0.15 * np.sin(2 * math.pi * (u + 0.5 * np.abs(v)) / period) + 0.05 * noise
    if texture == "glass":
        highlight = np.exp(-(((u - 0.45 * a) / (0.15 * a + 0.5)) ** 2))
        return 0.8 * highlight + 0.03 * noise
    if texture == "leaves":
        mottle = _gaussian_blur(noise[..., None], 1.5 * scale)[..., 0]
        return 0.5 * mottle + 0.08 * noise
    return 0.03 * noise  # windows, screen: parts carry the pattern


def _object_parts(
    rng: np.random.Generator, obj: dict[str, Any], u: np.ndarray, v: np.ndarray
) -> np.ndarray | None:
    """(h, w) bool region drawn in `part_colour` (sail, windows, cap, screen), or None."""
    a, b = obj["half_size"]
    if obj["class"] == "boat":
        return v < _BOAT_WATERLINE * b
    if obj["class"] == "train":
        period = rng.uniform(0.9, 1.3) * b
        offset = rng.uniform(0, period)
        return (
            (v > -0.6 * b) & (v < -0.1 * b) & (np.abs(u) < a - 0.2 * b)
            & (np.mod(u + offset, period) < 0.55 * period)
        )
    if obj["class"] == "bottle":
        return v < -0.85 * b
    if obj["class"] == "tvmonitor":
        frame = rng.uniform(0.1, 0.2) * min(a, b)
        return (np.abs(u) < a - frame) & (np.abs(v) < b - frame)
    return None


def _draw_object(
    image: np.ndarray, rng: np.random.Generator, obj: dict[str, Any]
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Paint one object; returns its crop, silhouette and marking (h, w) bool, or None."""
    size = image.shape[0]
    frame = _local_frame(obj, size)
    if frame is None:
        return None
    crop, u, v = frame
    a, b = obj["half_size"]
    inside = _silhouette(obj, u, v)
    psi = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.1, 0.3) * (u * math.cos(psi) + v * math.sin(psi)) / max(a, b)
    texture = _object_texture(rng, obj, u, v, size)
    shade = (light * (1.0 + texture)).astype(np.float32)
    colour = np.asarray(obj["body_colour"], np.float32)[None, None, :] * shade[..., None]
    parts = _object_parts(rng, obj, u, v)
    if parts is not None:
        part_colour = np.asarray(obj["part_colour"], np.float32)
        if obj["class"] == "tvmonitor":  # a blurry picture on the screen
            picture = _smooth_noise(rng, max(u.shape), 3, 3)[: u.shape[0], : u.shape[1]]
            colour[parts] = (part_colour * (1.0 + 0.35 * picture))[parts]
        else:
            colour[parts] = (part_colour[None, None, :] * light[..., None])[parts]
    marking = np.zeros_like(inside)
    spec = obj["marking"]
    if spec is not None:
        mu, mv = spec["center"]
        if spec["shape"] == "disc":
            marking = (u - mu) ** 2 + (v - mv) ** 2 <= spec["size"] ** 2
        else:
            marking = (np.abs(u - mu) <= spec["size"] / 2) & (np.abs(v - mv) <= spec["size"] / 2)
        marking &= inside
        colour[marking] = (
            np.asarray(obj["marking_colour"], np.float32)[None, None, :] * light[..., None]
        )[marking]
    patch = image[crop]
    patch[inside] = colour[inside]
    return crop, inside, marking


def _illuminate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image gain, gamma, colour cast and a light ramp; (H, W, 3) float32."""
    size = image.shape[0]
    xx = (np.arange(size, dtype=np.float32) + 0.5)[None, :] / size - 0.5
    yy = (np.arange(size, dtype=np.float32) + 0.5)[:, None] / size - 0.5
    psi = rng.uniform(0, 2 * math.pi)
    ramp = 1.0 + rng.uniform(-0.35, 0.35) * (xx * math.cos(psi) + yy * math.sin(psi)) * 2
    gain = rng.uniform(0.7, 1.2)
    gamma = rng.uniform(0.8, 1.25)
    cast = rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    image = np.clip(image, 0, 1) ** gamma
    return image * (gain * ramp)[..., None] * cast[None, None, :]


def _saliency(
    rng: np.random.Generator,
    instances: np.ndarray,
    objects: list[dict[str, Any]],
    distractors: list[np.ndarray],
) -> np.ndarray:
    """Noisy class-agnostic saliency (H, W) uint8 from the visible objects."""
    size = instances.shape[0]
    sal = np.zeros((size, size), dtype=np.float32)
    yy = (np.arange(size, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(size, dtype=np.float32) + 0.5)[None, :]
    for k, obj in enumerate(objects):
        visible = instances == k + 1
        count = int(visible.sum())
        if count == 0:
            continue
        # Detectors miss small objects more often (false negatives).
        p_miss = 0.25 if obj["area_fraction"] < 0.04 else 0.06
        confidence = 0.0 if rng.random() < p_miss else float(rng.uniform(0.6, 1.0))
        sal[visible] = confidence
        if rng.random() < 0.35:  # a missing part
            ys, xs = np.nonzero(visible)
            pick = int(rng.integers(0, count))
            radius = math.sqrt(count) * rng.uniform(0.2, 0.45)
            hole = (yy - ys[pick]) ** 2 + (xx - xs[pick]) ** 2 <= radius * radius
            sal[hole & visible] *= float(rng.uniform(0.0, 0.3))
    background = instances == 0
    for mask in distractors:  # salient clutter (false positives)
        if rng.random() < 0.3:
            sal[mask & background] = float(rng.uniform(0.35, 0.85))
    if rng.random() < 0.25:
        cx, cy = rng.uniform(0, size, 2)
        ra, rb = rng.uniform(0.05, 0.2, 2) * size
        blob = ((xx - cx) / ra) ** 2 + ((yy - cy) / rb) ** 2 <= 1
        sal = np.maximum(sal, blob * np.float32(rng.uniform(0.3, 0.7)))
    sal = _gaussian_blur(sal, size / 80)
    # A power below / above 1 widens / shrinks the blurred profile: dilated or eroded boundaries.
    sal = np.clip(sal, 0, 1) ** np.float32(rng.uniform(0.6, 1.6))
    sal = _gaussian_blur(sal, size / 160)
    sal += 0.05 * _smooth_noise(rng, size, 4, 1)[..., 0]
    return np.clip(sal * 255 + 0.5, 0, 255).astype(np.uint8)


def render_scene(scene: dict[str, Any]) -> RenderedScene:
    """Render a scene from `describe_scene` (deterministic given the scene dict).

    The mask and `instances` depend only on the scene's geometry; textures, background,
    illumination and saliency noise come from a generator seeded with `scene["render_seed"]`.

    Returns:
        `RenderedScene` with image (H, W, 3) uint8, mask (H, W) uint8, saliency (H, W) uint8,
        instances (H, W) int16 and marking (H, W) bool.
    """
    size = scene["image_size"]
    rng = np.random.default_rng(scene["render_seed"])
    image = _background(rng, size)
    if "water" in scene["context"]:
        _draw_water(image, rng, scene["context"]["water"]["top"])
    if "rails" in scene["context"]:
        _draw_rails(image, rng, scene["context"]["rails"])
    distractors = _draw_distractors(image, rng)
    instances = np.zeros((size, size), dtype=np.int16)
    marking = np.zeros((size, size), dtype=bool)
    for k, obj in enumerate(scene["objects"]):
        drawn = _draw_object(image, rng, obj)
        if drawn is None:
            continue
        crop, inside, part = drawn
        instances[crop][inside] = k + 1
        marking[crop][inside] = part[inside]
    image = _illuminate(image, rng)
    image = _gaussian_blur(image, 0.6)  # soft, anti-aliased edges
    image += rng.uniform(0.005, 0.03) * rng.standard_normal(size=image.shape, dtype=np.float32)
    image_u8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)

    lookup = np.array([BACKGROUND] + [o["class_id"] for o in scene["objects"]], dtype=np.uint8)
    mask = lookup[instances]
    mask[_boundary_band(instances, void_width(size))] = IGNORE_INDEX
    saliency = _saliency(rng, instances, scene["objects"], distractors)
    return RenderedScene(image_u8, mask, saliency, instances, marking)


# ----------------------------------------------------------------------------- writing


def _png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _write_one(task: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """Describe, render and write one image; returns its meta.json record."""
    root, split, index, image_size, seed = task
    root_path = Path(root)
    scene = describe_scene(seed, split, index, image_size=image_size)
    rendered = render_scene(scene)
    name = scene["name"]
    # Level 1: the sensor noise leaves little to compress, and level 6 costs ~2 ms more per image.
    write_bytes(root_path / "JPEGImages" / f"{name}.png", _png_bytes(rendered.image, 1))
    save_mask(root_path / "SegmentationClass" / f"{name}.png", rendered.mask)
    write_bytes(root_path / "SaliencyMaps" / f"{name}.png", _png_bytes(rendered.saliency))
    pixels = float(image_size * image_size)
    visible = np.bincount(rendered.instances.ravel(), minlength=len(scene["objects"]) + 1)
    present = np.unique(rendered.mask)
    return {
        "name": name,
        "split": split,
        "classes": [int(c) for c in present if c not in (BACKGROUND, IGNORE_INDEX)],
        "context": sorted(scene["context"]),
        "objects": [
            {
                "class": obj["class"],
                "area_fraction": round(obj["area_fraction"], 4),
                "visible_fraction": round(float(visible[k + 1]) / pixels, 4),
            }
            for k, obj in enumerate(scene["objects"])
        ],
    }


def _split_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    class_images = {name: 0 for name in SYNTHETIC_CLASSES[1:]}
    for rec in records:
        for c in rec["classes"]:
            class_images[SYNTHETIC_CLASSES[c]] += 1
    rates = {}
    for cls, ctx in CONTEXT_OF_CLASS.items():
        cid = SYNTHETIC_CLASSES.index(cls)
        with_cls = [r for r in records if cid in r["classes"]]
        without = [r for r in records if cid not in r["classes"]]
        rates[cls] = {
            "context": ctx,
            "images": len(with_cls),
            "rate_with_class": round(
                sum(ctx in r["context"] for r in with_cls) / max(1, len(with_cls)), 4
            ),
            "rate_without_class": round(
                sum(ctx in r["context"] for r in without) / max(1, len(without)), 4
            ),
        }
    return {
        "images": len(records),
        "objects": sum(len(r["objects"]) for r in records),
        "class_images": class_images,
        "context_rates": rates,
    }


def generate(
    out_dir: str | Path,
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 160,
    seed: int = 0,
    num_workers: int | None = None,
) -> Path:
    """Write the synthetic data set in VOC layout (see the module docstring) and return its root.

    Existing files with the same names are overwritten; the output depends only on
    (num_train, num_val, image_size, seed), never on `num_workers`.

    Args:
        out_dir: root folder, created if missing.
        num_train: number of training images (>= 0).
        num_val: number of validation images (>= 0).
        image_size: side of the square images in pixels (>= 16).
        seed: non-negative seed; image i of a split is seeded from (seed, split, i).
        num_workers: processes; None means min(2, cpu_count). Values above 1 use a spawn pool.

    Returns:
        The root folder as a Path.
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(
            f"need num_train, num_val >= 0 and > 0 in total, got {num_train}, {num_val}"
        )
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    root = Path(out_dir)
    for sub in ("JPEGImages", "SegmentationClass", "SaliencyMaps", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        remove_temporaries(root / sub)
    remove_temporaries(root)

    counts = {"train": num_train, "val": num_val}
    tasks = [
        (str(root), split, i, image_size, seed) for split in SPLITS for i in range(counts[split])
    ]
    workers = min(2, os.cpu_count() or 1) if num_workers is None else int(num_workers)
    if workers > 1 and len(tasks) > 1:
        # spawn: no fork of a parent that may hold torch/OpenMP threads; same on every platform.
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(32, len(tasks) // (4 * workers)))
        with context.Pool(min(workers, len(tasks))) as pool:
            records = list(pool.imap(_write_one, tasks, chunksize=chunk))
    else:
        records = [_write_one(task) for task in tasks]

    lists = root / "ImageSets" / "Segmentation"
    names = {split: [r["name"] for r in records if r["split"] == split] for split in SPLITS}
    for split in SPLITS:
        write_text(lists / f"{split}.txt", "".join(n + "\n" for n in names[split]))
    write_text(lists / "trainval.txt", "".join(n + "\n" for s in SPLITS for n in names[s]))
    write_text(root / "classes.txt", "".join(c + "\n" for c in SYNTHETIC_CLASSES))

    meta = {
        "generator": "wsss.data.synthetic",
        "version": GENERATOR_VERSION,
        "parameters": {
            "num_train": num_train,
            "num_val": num_val,
            "image_size": image_size,
            "seed": seed,
            "void_width": void_width(image_size),
            "num_objects_probs": list(NUM_OBJECTS_PROBS),
            "min_area_fraction": MIN_AREA_FRACTION,
            "max_area_fraction_by_num_objects": list(MAX_AREA_FRACTION),
            "marking_area_fraction": MARKING_AREA_FRACTION,
            "context_prob_with_class": CONTEXT_PROB_WITH_CLASS,
            "context_prob_without_class": CONTEXT_PROB_WITHOUT_CLASS,
        },
        "classes": list(SYNTHETIC_CLASSES),
        "class_descriptions": {s.name: s.description for s in _CLASS_SPECS},
        "lookalike_pairs": [list(p) for p in LOOKALIKE_PAIRS],
        "contexts": dict(CONTEXT_OF_CLASS),
        "failure_modes": dict(FAILURE_MODES),
        "counts": {split: _split_stats([r for r in records if r["split"] == split])
                   for split in SPLITS},
        "images": {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in records},
    }
    write_text(root / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return root


def save_sample_grid(
    root: str | Path, out_png: str | Path, *, num: int = 12, seed: int = 0
) -> Path:
    """Write a grid of samples (image | GT mask in palette colours | saliency) as a PNG.

    Samples are drawn without replacement from `trainval.txt` (or train + val) with `seed`;
    each triple is captioned with the classes in its mask. Images under 128 px are enlarged
    (nearest neighbour) for legibility.

    Args:
        root: a data set root written by `generate` (or any VOC root with `SaliencyMaps/`;
            a missing saliency map is shown grey).
        out_png: output path, written atomically.
        num: number of samples (capped at the number of images).
        seed: sample selection seed.

    Returns:
        The output path.
    """
    root = Path(root)
    lists = root / "ImageSets" / "Segmentation"
    if (lists / "trainval.txt").is_file():
        names = (lists / "trainval.txt").read_text().split()
    else:
        names = [n for s in SPLITS if (lists / f"{s}.txt").is_file()
                 for n in (lists / f"{s}.txt").read_text().split()]
    if not names:
        raise DataError(f"{lists}: no image lists (trainval.txt, train.txt, val.txt) found")
    try:
        class_names = read_class_names(root / "classes.txt")
    except FileNotFoundError:
        class_names = list(SYNTHETIC_CLASSES)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(names), size=min(num, len(names)), replace=False))
    palette = color_palette()
    gap, caption, per_row = 4, 14, 2
    panels = []
    for i in picks:
        name = names[int(i)]
        image = load_image(root / "JPEGImages" / f"{name}.png")
        mask = load_mask(root / "SegmentationClass" / f"{name}.png")
        sal_path = root / "SaliencyMaps" / f"{name}.png"
        if sal_path.is_file():
            with Image.open(sal_path) as sal_image:
                sal = np.asarray(sal_image.convert("L"))
        else:
            sal = np.full(mask.shape, 128, np.uint8)
        row = [image, palette[mask], np.repeat(sal[..., None], 3, axis=2)]
        present = [class_names[c] if c < len(class_names) else str(c)
                   for c in np.unique(mask) if c not in (BACKGROUND, IGNORE_INDEX)]
        panels.append((row, ", ".join(present)))
    height, width = panels[0][0][0].shape[:2]
    zoom = max(1, 128 // max(height, width))
    ph, pw = height * zoom, width * zoom
    triple_w = 3 * pw + 2 * gap
    cols = min(per_row, len(panels))
    rows = math.ceil(len(panels) / cols)
    grid_w = cols * triple_w + (cols + 1) * 3 * gap
    grid_h = rows * (ph + caption + gap) + gap + caption
    canvas = Image.new("RGB", (grid_w, grid_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c in range(cols):
        x = 3 * gap + c * (triple_w + 3 * gap)
        for j, title in enumerate(("image", "mask", "saliency")):
            draw.text((x + j * (pw + gap) + 2, 1), title, fill=(0, 0, 0))
    for k, (row, text) in enumerate(panels):
        r, c = divmod(k, cols)
        x = 3 * gap + c * (triple_w + 3 * gap)
        y = caption + gap + r * (ph + caption + gap)
        for j, panel in enumerate(row):
            tile = Image.fromarray(np.ascontiguousarray(panel, dtype=np.uint8))
            if zoom > 1:
                tile = tile.resize((pw, ph), Image.Resampling.NEAREST)
            canvas.paste(tile, (x + j * (pw + gap), y))
        draw.text((x, y + ph + 1), text, fill=(0, 0, 0))
    out_png = Path(out_png)
    write_bytes(out_png, _png_bytes(np.asarray(canvas)))
    return out_png
