"""A procedurally drawn image-classification corpus that plays ImageNet's role for `wsss pretrain`.

Every category is one combination of four factors: a silhouette (8), a surface texture (4), a
colour family (2) and a small distinguishing part (2: none, or a contrasting disc near the
object's top), so 128 categories by default, each needing all four factors to be told apart,
as fine-grained ImageNet classes need shape, texture and parts at once. Scenes hold 1-3 objects
of 1-3 categories (multi-hot labels, as a WSSS classifier sees) on cluttered backgrounds: smooth
colour noise, lines, plain blobs and rings of random colour that belong to no category.

The drawing code shares nothing with `wsss.data.synthetic` (the WSSS classes): other
silhouettes, other textures, its own renderer, so no WSSS class is drawn here.

Images are drawn on the fly from NumPy's global generator, which the trainer seeds per
(seed, epoch, item) (`wsss.engine.trainer.SeededItems`): every epoch sees new scenes, the same
ones after a resume, whatever the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHAPES: tuple[str, ...] = (
    "ellipse", "triangle", "cross", "ring", "crescent", "arrow", "hexagon", "diamond",
)
TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots", "waves")
COLOUR_FAMILIES: tuple[str, ...] = ("warm", "cool")
PARTS: tuple[str, ...] = ("plain", "disc")

# Hue ranges (degrees) of each colour family; saturation and value vary freely within bounds.
_FAMILY_HUES = {"warm": (-40.0, 70.0), "cool": (140.0, 280.0)}

_POLYGONS: dict[str, np.ndarray] = {
    "triangle": np.array([(0.0, -1.0), (0.95, 0.8), (-0.95, 0.8)]),
    "arrow": np.array([(-1.0, -0.3), (0.2, -0.3), (0.2, -0.8), (1.0, 0.0), (0.2, 0.8),
                       (0.2, 0.3), (-1.0, 0.3)]),
    "hexagon": np.array([(math.cos(a), math.sin(a)) for a in np.arange(6) * math.pi / 3]),
}


@dataclass(frozen=True)
class Category:
    """One corpus category: the four factors that define it."""

    shape: str
    texture: str
    colour: str
    part: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.texture}_{self.shape}_{self.part}"


def categories() -> list[Category]:
    """All categories, in a fixed order (index = class index of the corpus)."""
    return [Category(s, t, c, p) for s in SHAPES for t in TEXTURES for c in COLOUR_FAMILIES
            for p in PARTS]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """h in degrees (any value, taken modulo 360), s and v in [0, 1] → RGB float (3,) in [0, 1]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array(rgb) + (v - c)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Silhouette test in local coordinates (u, v) spanning [-1, 1]: bool array like u."""
    if shape == "ellipse":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.6)
    if shape == "cross":
        bar_u = (np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)
        return bar_u | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    poly = _POLYGONS[shape]
    inside = np.zeros(u.shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):  # even-odd rule
        crosses = (b > v) != (d > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = a + (v - b) * (c - a) / (d - b)
        inside ^= crosses & (u < xs)
    return inside


def _texture(texture: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float) -> np.ndarray:
    """Texture pattern in [0, 1] over local coordinates (rotates and scales with the object)."""
    if texture == "stripes":
        return 0.5 + 0.5 * np.sin(freq * math.pi * u + phase)
    if texture == "checker":
        return ((np.floor(freq * (u + 1) / 2) + np.floor(freq * (v + 1) / 2)) % 2).astype(float)
    if texture == "dots":
        fu = (freq * (u + 1) / 2) % 1.0 - 0.5
        fv = (freq * (v + 1) / 2) % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(float)
    return 0.5 + 0.5 * np.sin(freq * math.pi * v + 2.5 * np.sin(3.0 * u + phase))  # waves


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size, 3) colour field in [0, 1]: bilinear upsampling of a (cells, cells) grid."""
    grid = rng.random((cells + 1, cells + 1, 3))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = (t - i)[:, None]
    rows = grid[i] * (1 - f)[..., None] + grid[i + 1] * f[..., None]  # (size, cells+1, 3)
    cols = rows[:, i] * (1 - f.T)[..., None] + rows[:, i + 1] * f.T[..., None]
    return cols


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cluttered background (size, size, 3) float in [0, 1] with distractors of no category."""
    image = 0.25 + 0.6 * _smooth_noise(rng, size, int(rng.integers(2, 6)))
    image += rng.normal(0.0, rng.uniform(0.0, 0.06), image.shape)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    for _ in range(int(rng.integers(0, 5))):  # lines
        angle = rng.uniform(0, math.pi)
        offset = rng.uniform(-0.5, 0.5) * size
        dist = np.abs((xx - size / 2) * math.sin(angle) - (yy - size / 2) * math.cos(angle)
                      - offset)
        image[dist < rng.uniform(0.6, 2.5)] = rng.random(3)
    for _ in range(int(rng.integers(0, 4))):  # plain blobs and rings
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.04, 0.14) * size
        d2 = ((xx - cx) / r) ** 2 + ((yy - cy) / (r * rng.uniform(0.5, 1.5))) ** 2
        region = d2 <= 1.0 if rng.random() < 0.6 else (d2 <= 1.0) & (d2 >= 0.5)
        image[region] = rng.random(3)
    return image


def _draw_object(image: np.ndarray, cat: Category, rng: np.random.Generator,
                 centre: tuple[float, float], radius: float) -> np.ndarray:
    """Draw one instance of `cat` into `image` (H, W, 3) float, in place.

    Returns:
        bool (H, W): the pixels the instance covers (silhouette and part).
    """
    size = image.shape[0]
    angle = rng.uniform(-math.pi, math.pi)
    aspect = rng.uniform(0.75, 1.33)
    rx, ry = radius * aspect, radius / aspect
    extent = max(rx, ry) * 1.05
    x0, x1 = int(max(0, centre[0] - extent)), int(min(size, centre[0] + extent + 1))
    y0, y1 = int(max(0, centre[1] - extent)), int(min(size, centre[1] + extent + 1))
    region = np.zeros(image.shape[:2], dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return region
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    dx, dy = xx - centre[0], yy - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    inside = _inside(cat.shape, u, v)
    lo, hi = _FAMILY_HUES[cat.colour]
    hue = rng.uniform(lo, hi)
    base = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.45, 0.95))
    second = _hsv_to_rgb(hue + rng.uniform(-25, 25), rng.uniform(0.3, 1.0), rng.uniform(0.1, 0.45))
    pattern = _texture(cat.texture, u, v, rng.uniform(3.0, 6.0), rng.uniform(0, 2 * math.pi))
    colour = pattern[..., None] * base + (1 - pattern[..., None]) * second
    shade = 1.0 + 0.25 * (u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1))[..., None]
    patch = image[y0:y1, x0:x1]
    patch[inside] = np.clip(colour * shade, 0, 1)[inside]
    if cat.part == "disc":  # a small contrasting disc near the object's top (local v = -0.55)
        part = (u * u + (v + 0.55) ** 2 <= 0.22**2) & inside
        if not part.any():
            part = u * u + (v + 0.55) ** 2 <= 0.22**2
        patch[part] = _hsv_to_rgb(hue + 180.0 + rng.uniform(-30, 30), 0.9, 1.0)
        inside = inside | part
    region[y0:y1, x0:x1] = inside
    return region


def render_scene(rng: np.random.Generator, num_categories: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 (size, size, 3) and multi-hot labels float32 (num_categories,).

    40 % of scenes hold one object covering ~10-50 % of the image; the others 2-3 objects of
    1-3 categories at ~3-25 % each. Each category is drawn at most once per label, an instance
    may partly leave the frame, later instances occlude earlier ones.
    """
    cats = categories()[:num_categories]
    image = _background(rng, size)
    labels = np.zeros(num_categories, dtype=np.float32)
    if rng.random() < 0.4:
        picks = [int(rng.integers(num_categories))]
        radii = [rng.uniform(0.18, 0.4) * size]
    else:
        count = int(rng.integers(2, 4))
        kinds = rng.choice(num_categories, size=int(rng.integers(1, count + 1)), replace=False)
        picks = [int(kinds[i % len(kinds)]) for i in range(count)]
        radii = [rng.uniform(0.1, 0.28) * size for _ in picks]
    for index, radius in zip(picks, radii):
        centre = (rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size)
        _draw_object(image, cats[index], rng, centre, radius)
        labels[index] = 1.0
    image = np.clip(image * rng.uniform(0.75, 1.2) + rng.uniform(-0.08, 0.08), 0, 1)
    return (image * 255 + 0.5).astype(np.uint8), labels


def render_labelled_scene(rng: np.random.Generator, class_categories: list[int], size: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """A segmentation scene over a chosen subset of categories (a VOC-layout data set with
    other classes than the built-in synthetic ones, `write_voc_layout`).

    1-3 objects (~3-30 % of the image each) of 1-3 of `class_categories` on a cluttered
    background; later objects occlude earlier ones.

    Returns:
        image uint8 (size, size, 3); mask uint8 (size, size): 0 background, k + 1 for
        `class_categories[k]`.
    """
    cats = categories()
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    count = int(rng.integers(1, 4))
    kinds = rng.choice(len(class_categories), size=int(rng.integers(1, count + 1)), replace=False)
    for i in range(count):
        k = int(kinds[i % len(kinds)])
        radius = rng.uniform(0.1, 0.3) * size
        centre = (rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size)
        region = _draw_object(image, cats[class_categories[k]], rng, centre, radius)
        mask[region] = k + 1
    image = np.clip(image * rng.uniform(0.75, 1.2) + rng.uniform(-0.08, 0.08), 0, 1)
    return (image * 255 + 0.5).astype(np.uint8), mask


def write_voc_layout(root: str | Path, *, class_categories: list[int], num_train: int,
                     num_val: int, sizes: tuple[int, int] = (128, 224), seed: int = 0) -> Path:
    """Write a VOC-layout data set whose classes are corpus categories (not the built-in
    synthetic classes): `JPEGImages/` (PNG), `SegmentationClass/` (palette PNG),
    `ImageSets/Segmentation/{train,val}.txt`, `classes.txt`. Image sides vary in `sizes`.

    Used to check that presets run unchanged on other classes and image sizes
    (`--set data.root=DIR data.dataset=custom`).
    """
    from PIL import Image

    from wsss.io import save_mask, write_text

    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [categories()[c].name for c in class_categories]
    write_text(root / "classes.txt", "\n".join(["background", *names]) + "\n")
    for split, count in (("train", num_train), ("val", num_val)):
        ids = []
        for i in range(count):
            rng = np.random.default_rng([seed, 1 if split == "train" else 2, i])
            size = int(rng.integers(sizes[0], sizes[1] + 1))
            image, mask = render_labelled_scene(rng, class_categories, size)
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.png")
            save_mask(root / "SegmentationClass" / f"{name}.png", mask)
            ids.append(name)
        write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    return root


NUM_FACTORS = len(SHAPES) + len(TEXTURES) + len(COLOUR_FAMILIES) + len(PARTS)


def factor_names() -> list[str]:
    """Names of the factor outputs, in `factor_labels` order."""
    return [*SHAPES, *TEXTURES, *COLOUR_FAMILIES, *PARTS]


def factor_labels(labels: np.ndarray) -> np.ndarray:
    """Multi-hot labels of the factors present (float32 (NUM_FACTORS,)): which silhouettes,
    textures, colour families and parts the scene's categories have; a coarser level of the
    label hierarchy, as WordNet's above ImageNet's classes."""
    out = np.zeros(NUM_FACTORS, dtype=np.float32)
    cats = categories()
    for index in np.flatnonzero(labels > 0):
        c = cats[index]
        names = factor_names()
        for offset, value in zip(np.cumsum([0, len(SHAPES), len(TEXTURES), len(COLOUR_FAMILIES)]),
                                 (c.shape, c.texture, c.colour, c.part)):
            out[offset + names[offset:].index(value)] = 1.0
    return out


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class PretrainCorpus(torch.utils.data.Dataset):
    """`num_items` scenes per epoch, drawn on the fly (see the module docstring).

    Items are dicts: `image` float32 (3, size, size) normalised with the ImageNet mean and std
    (as every wsss network expects), `labels` float32 (num_categories,) multi-hot, `factors`
    float32 (NUM_FACTORS,) multi-hot (`factor_labels`), `name`.
    Item i draws from a generator seeded by NumPy's global state (seeded per item by the
    trainer); outside the trainer, `seed` and the index fix the scene.
    """

    def __init__(self, *, num_items: int, num_categories: int = 128, image_size: int = 96,
                 seed: int | None = None) -> None:
        if not 2 <= num_categories <= len(categories()):
            raise ValueError(f"num_categories must be in [2, {len(categories())}], "
                             f"got {num_categories}")
        self.num_items = num_items
        self.num_categories = num_categories
        self.image_size = image_size
        self.seed = seed
        self.class_names = [c.name for c in categories()[:num_categories]]

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.seed is None:
            rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))
        else:
            rng = np.random.default_rng([self.seed, index])
        image, labels = render_scene(rng, self.num_categories, self.image_size)
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        return {"image": (x - mean) / std, "labels": torch.from_numpy(labels),
                "factors": torch.from_numpy(factor_labels(labels)),
                "name": f"corpus_{index:07d}"}
