"""Off-the-shelf saliency maps (PoolNet, DSS, ...) for methods supervised by "image labels +
saliency" (AuxSegNet): reading, up-front validation, writing, a dataset wrapper that adds a
`saliency` map to each sample, and the paired image / mask / saliency training augmentation.

A saliency folder holds `<name>.png` per image: 8-bit grayscale (or palette / RGB, read as
grayscale) with 0..255 meaning 0..1, of any size with the image's aspect ratio; maps are resized
(bilinear) to the image. 16-bit PNGs are read as 0..65535.
"""

from __future__ import annotations

import io as _io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from wsss.data.labels import IGNORE_INDEX
from wsss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    image_to_tensor,
    mask_to_tensor,
    normalize_array,
    normalize_image,
    pil_resize,
)
from wsss.io import DataError, load_mask, write_bytes

__all__ = [
    "SCALE_PER",
    "SaliencyAugment",
    "SaliencyDataset",
    "check_saliency_folder",
    "load_saliency",
    "resolve_saliency_dir",
    "save_saliency",
]

# A map whose aspect ratio differs from the image's by more than this factor belongs to another
# image (or is transposed): rounding when a detector downsizes a map stays far below 5 %.
_ASPECT_TOLERANCE = 1.05
_EXIF_ORIENTATION = 0x0112
# Where the random rescale factor is drawn: once per batch (AuxSegNet `get_data_from_chunk`)
# or once per image.
SCALE_PER = ("batch", "image")
RESIZE_MODES = ("cv2", "pil")


def _cv2_linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis (`cv2.resize`:
    half-pixel centres, scale = 1 / (dst / src) in double precision, coordinates clamped at
    the borders, float32 weights, no antialiasing)."""
    scale = 1.0 / (dst / src)
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    low = left < 0
    frac[low], left[low] = 0.0, 0
    high = left >= src - 1
    frac[high], left[high] = 0.0, src - 1
    right = np.minimum(left + 1, src - 1)
    return left, right, frac.astype(np.float32).astype(np.float64)


def cv2_resize(array: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """`cv2.resize` of a float image (bilinear, `order` 1) or of labels (INTER_NEAREST,
    `order` 0: source index ⌊x · src / dst⌋), in NumPy.

    AuxSegNet resizes the image and saliency as float64 arrays (`exutils.py scale_im`), so the
    bilinear mix is exact (no antialiasing when shrinking, unlike PIL), and the labels with
    OpenCV's nearest neighbour, which samples the top-left of each cell (`scale_gt`).

    Args:
        array: (H, W) or (H, W, K).
        size: target (height, width).

    Returns:
        bilinear: float32 of the new size; nearest: the input's dtype.
    """
    height, width = int(size[0]), int(size[1])
    src_h, src_w = array.shape[:2]
    if order == 0:
        rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / src_h))), src_h - 1)
        cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / src_w))), src_w - 1)
        return array[rows.astype(np.int64)][:, cols.astype(np.int64)]
    if order != 1:
        raise ValueError(f"order must be 0 (nearest) or 1 (bilinear), got {order}")
    x = np.asarray(array, dtype=np.float64)
    top, bottom, fy = _cv2_linear_taps(src_h, height)
    left, right, fx = _cv2_linear_taps(src_w, width)
    shape = (-1,) + (1,) * (x.ndim - 1)
    x = x[top] * (1.0 - fy).reshape(shape) + x[bottom] * fy.reshape(shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x = x[:, left] * (1.0 - fx).reshape(shape) + x[:, right] * fx.reshape(shape)
    return x.astype(np.float32)


def resolve_saliency_dir(root: str | Path, saliency_dir: str | Path) -> Path:
    """`saliency_dir` if absolute, else `root / saliency_dir`."""
    path = Path(saliency_dir).expanduser()
    return path if path.is_absolute() else Path(root) / path


def _read_plane(path: Path) -> np.ndarray:
    """(h, w) float32 in [0, 1] of a saliency PNG; DataError when missing or unreadable."""
    if not path.is_file():
        raise DataError(f"saliency map missing: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(image, dtype=np.float32).clip(0, 65535) / 65535.0
            if image.mode == "LA":
                image = image.getchannel("L")
            elif image.mode != "L":
                image = image.convert("L")
            return np.asarray(image, dtype=np.float32) / 255.0
    except DataError:
        raise
    except Exception as exc:  # PIL raises several types for truncated / corrupt files
        raise DataError(f"{path}: unreadable saliency map ({exc.__class__.__name__}: {exc})"
                        ) from exc


def _check_aspect(path: Path, map_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    (mh, mw), (ih, iw) = map_size, image_size
    ratio = (mw / mh) / (iw / ih)
    if max(ratio, 1.0 / ratio) > _ASPECT_TOLERANCE:
        raise DataError(f"{path}: saliency map is {mw}x{mh} but the image is {iw}x{ih} "
                        "(aspect ratios differ; a map may be of any size, with the image's shape)")


def load_saliency(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a saliency map and resize it (bilinear) to the image size.

    Args:
        path: PNG file.
        size: the image's (height, width).

    Returns:
        float32 (height, width) in [0, 1].

    Raises:
        DataError: missing or unreadable file, or an aspect ratio unlike the image's; the
            message names the file.
    """
    path = Path(path)
    plane = _read_plane(path)
    _check_aspect(path, plane.shape, size)
    if plane.shape != tuple(size):
        plane = pil_resize(plane, size, order=1)
    return np.clip(plane, 0.0, 1.0).astype(np.float32)


def save_saliency(path: str | Path, saliency: np.ndarray) -> None:
    """Write a saliency map as an 8-bit grayscale PNG, value ⌊255·s⌋ (AuxSegNet `save_as_png`).

    Args:
        saliency: (H, W) float in [0, 1].
    """
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"saliency for {path} must be 2-D, got shape {s.shape}")
    buffer = _io.BytesIO()
    Image.fromarray((np.clip(s, 0.0, 1.0) * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    write_bytes(path, buffer.getvalue())


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header, after EXIF orientation."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width
    return height, width


def check_saliency_folder(folder: str | Path, dataset: Any, *, limit: int = 20) -> int:
    """Validate the saliency maps of every image of `dataset` before a stage uses them.

    Each `<folder>/<name>.png` must exist, decode, and have the image's aspect ratio.

    Args:
        folder: saliency folder.
        dataset: a `SegmentationDataset` (its `names` and `image_path`).
        limit: at most this many problems are listed in the error.

    Returns:
        the number of maps checked.

    Raises:
        DataError: the folder is missing, or a list of the bad files and what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"saliency folder not found: {folder} (set method.saliency_dir, "
                        "relative to data.root or absolute)")
    problems: list[str] = []
    for index, name in enumerate(dataset.names):
        path = folder / f"{name}.png"
        try:
            plane = _read_plane(path)
            _check_aspect(path, plane.shape, _image_size(dataset.image_path(index)))
        except DataError as exc:
            problems.append(str(exc))
            if len(problems) >= limit:
                break
    if problems:
        more = " (stopped at the first %d)" % limit if len(problems) >= limit else ""
        raise DataError(f"{len(problems)} bad saliency map(s) in {folder}{more}:\n  "
                        + "\n  ".join(problems))
    return len(dataset.names)


class SaliencyAugment:
    """Training augmentation of (image, mask, saliency) together (AuxSegNet
    `tool/exutils.py get_data_from_chunk`).

    Order: resize-long (optional) → rescale by s ~ U(scale_range) to (int(H·s), int(W·s)) (image
    and saliency bilinear, mask nearest) → colour jitter (image only, optional) → normalise →
    horizontal flip (p = 0.5) → crop: a random window where the image is larger than the crop,
    zero padding at the bottom / right where it is smaller (image 0 = mean colour, saliency 0,
    mask `mask_fill`). The official code draws s once per batch: pass the batch's `scale` to
    `__call__` (`SaliencyDataset(scale_per="batch")` does).

    Args:
        crop_size: output side, or None to keep the whole (rescaled) image.
        scale_range: (min, max) of the scale factor, or None.
        resize_long: (min_long, max_long) random long side, or None.
        flip: random horizontal flip.
        color_jitter: (brightness, contrast, saturation, hue) or None.
        mask_fill: label of padded pixels: 255 (ignore, default) or 0 (background, as the
            official code pads).
        resize: "pil" (PIL bilinear / nearest, antialiased when shrinking) or "cv2" (OpenCV's
            bilinear on float values and its nearest neighbour, `cv2_resize`: the official).
        rng: optional `random.Random`; default the global `random` module.

    Call: (image uint8 (H, W, 3), mask uint8 (H, W) | None, saliency float32 (H, W) in [0, 1])
    → (image float32 tensor (3, h, w), mask int64 tensor (h, w) | None, saliency float32 tensor
    (h, w) in [0, 1]).
    """

    def __init__(self, *, crop_size: int | None, scale_range: Sequence[float] | None = None,
                 resize_long: Sequence[int] | None = None, flip: bool = True,
                 color_jitter: Sequence[float] | None = None, mask_fill: int = IGNORE_INDEX,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 resize: str = "pil", rng: random.Random | None = None) -> None:
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < min <= max, got {list(scale_range)}")
        if resize_long is not None and not 0 < resize_long[0] <= resize_long[1]:
            raise ValueError(f"resize_long must be 0 < min <= max, got {list(resize_long)}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.resize_long = tuple(resize_long) if resize_long is not None else None
        self.flip = flip
        self.jitter = ColorJitter(*color_jitter, rng=rng) if color_jitter else None
        self.mask_fill = int(mask_fill)
        self.mean, self.std = tuple(mean), tuple(std)
        self.rng = rng

    def _gen(self) -> Any:
        return random if self.rng is None else self.rng

    def draw_scale(self) -> float | None:
        """A rescale factor s ~ U(scale_range) from this transform's generator (None without
        a scale range)."""
        if self.scale_range is None:
            return None
        low, high = self.scale_range
        return low + self._gen().random() * (high - low)

    def _rescale(self, image: np.ndarray, mask: np.ndarray | None, saliency: np.ndarray,
                 scale: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        height, width = image.shape[:2]
        # cv2.resize to (int(W·s), int(H·s)): truncation, as the official code.
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        resize = cv2_resize if self.resize == "cv2" else pil_resize
        image = resize(image, size, order=1)
        saliency = resize(saliency, size, order=1)
        if mask is not None:
            mask = resize(mask, size, order=0)
        return image, mask, saliency

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, saliency: np.ndarray, *,
                 scale: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`scale`: the batch's rescale factor; None draws one for this image."""
        gen = self._gen()
        if saliency.shape != image.shape[:2] or (mask is not None and mask.shape != saliency.shape):
            raise ValueError(f"image {image.shape}, mask {None if mask is None else mask.shape} "
                             f"and saliency {saliency.shape} must share (H, W)")
        if self.resize_long is not None:
            target = gen.randint(self.resize_long[0], self.resize_long[1])
            image, mask, saliency = self._rescale(image, mask, saliency,
                                                  target / max(image.shape[:2]))
        if scale is None:
            scale = self.draw_scale()
        if scale is not None:
            image, mask, saliency = self._rescale(image, mask, saliency, scale)
        if self.jitter is not None:
            image, _ = self.jitter(image, None)
        image = normalize_array(image, self.mean, self.std)
        if self.flip and gen.random() < 0.5:
            image, saliency = image[:, ::-1], saliency[:, ::-1]
            if mask is not None:
                mask = mask[:, ::-1]
        if self.crop_size is not None:
            image, mask, saliency = self._crop(gen, image, mask, saliency)
        image_t = image_to_tensor(np.ascontiguousarray(image))
        mask_t = mask_to_tensor(mask) if mask is not None else None
        sal_t = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32)).clamp_(0, 1)
        return image_t, mask_t, sal_t

    def _crop(self, gen: Any, image: np.ndarray, mask: np.ndarray | None, saliency: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        size = self.crop_size
        height, width = image.shape[:2]
        top = gen.randrange(height - size + 1) if height > size else 0
        left = gen.randrange(width - size + 1) if width > size else 0
        h, w = min(size, height), min(size, width)
        out_img = np.zeros((size, size, 3), dtype=np.float32)
        out_img[:h, :w] = image[top:top + h, left:left + w]
        out_sal = np.zeros((size, size), dtype=np.float32)
        out_sal[:h, :w] = saliency[top:top + h, left:left + w]
        out_mask = None
        if mask is not None:
            out_mask = np.full((size, size), self.mask_fill, dtype=np.uint8)
            out_mask[:h, :w] = mask[top:top + h, left:left + w]
        return out_img, out_mask, out_sal

    def __repr__(self) -> str:
        return (f"SaliencyAugment(crop_size={self.crop_size}, scale_range={self.scale_range}, "
                f"resize_long={self.resize_long}, flip={self.flip}, mask_fill={self.mask_fill}, "
                f"resize={self.resize!r})")


class SaliencyDataset(Dataset):
    """A dataset's samples plus a `saliency` (H, W) float32 tensor in [0, 1].

    Masks come from `mask_dir` (pseudo-labels of another stage, `<name>.png`) when given, else
    from the underlying dataset (ground truth, when it has masks). Image-level labels always come
    from the underlying dataset.

    Args:
        dataset: a `SegmentationDataset` (its own transform is not used).
        saliency_dir: folder of `<name>.png` saliency maps (see the module docstring).
        mask_dir: optional folder of `<name>.png` label masks of the image's size.
        transform: (image uint8, mask uint8 | None, saliency float32) → tensors, e.g.
            `SaliencyAugment`; None → normalised image, mask and saliency at full size.
        scale_per: "image" (the transform draws its scale per item) or "batch" (AuxSegNet
            `get_data_from_chunk`: items stay untransformed and `collate_fn` draws one scale
            with `transform.draw_scale()` and transforms every item of the batch with it; the
            training loader must use `collate_fn`).

    Samples: `image` (3, h, w) float32, `labels` (C,), `mask` int64 (h, w) (when masks exist),
    `saliency` float32 (h, w), `name`, `index`.
    """

    def __init__(self, dataset: Any, saliency_dir: str | Path, *,
                 mask_dir: str | Path | None = None, transform: Any = None,
                 scale_per: str = "image") -> None:
        self.dataset = dataset
        self.saliency_dir = Path(saliency_dir)
        if not self.saliency_dir.is_dir():
            raise DataError(f"saliency folder not found: {self.saliency_dir}")
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"mask folder not found: {self.mask_dir}")
        if scale_per not in SCALE_PER:
            raise ValueError(f"scale_per must be one of {SCALE_PER}, got {scale_per!r}")
        if scale_per == "batch" and not hasattr(transform, "draw_scale"):
            raise ValueError("scale_per='batch' needs a transform with draw_scale() "
                             "(SaliencyAugment)")
        self.transform = transform
        self.scale_per = scale_per
        self.names = dataset.names
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes
        self.has_masks = self.mask_dir is not None or dataset.has_masks

    def __len__(self) -> int:
        return len(self.dataset)

    def saliency_path(self, index: int) -> Path:
        return self.saliency_dir / f"{self.names[index]}.png"

    def load_saliency(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """float32 (H, W) in [0, 1] resized to `size` = the image's (H, W)."""
        return load_saliency(self.saliency_path(index), size)

    def _mask(self, index: int, size: tuple[int, int]) -> np.ndarray | None:
        if self.mask_dir is None:
            mask = self.dataset.load_mask(index)
            path = self.dataset.mask_path(index)
        else:
            path = self.mask_dir / f"{self.names[index]}.png"
            if not path.is_file():
                raise DataError(f"pseudo-label mask missing: {path}")
            mask = load_mask(path)
        if mask is not None and mask.shape != tuple(size):
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{size[1]}x{size[0]}")
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.dataset.load_image(index)
        size = image.shape[:2]
        mask = self._mask(index, size)
        saliency = self.load_saliency(index, size)
        if self.scale_per == "batch":  # transformed by collate_fn with the batch's scale
            return {"_raw": (image, mask, saliency), "name": self.names[index], "index": index,
                    "labels": torch.from_numpy(self.dataset.label_vector(index))}
        if self.transform is None:
            image_t = normalize_image(image)
            mask_t = mask_to_tensor(mask) if mask is not None else None
            sal_t = torch.from_numpy(saliency)
        else:
            image_t, mask_t, sal_t = self.transform(image, mask, saliency)
        sample = {"image": image_t, "labels": torch.from_numpy(self.dataset.label_vector(index)),
                  "saliency": sal_t, "name": self.names[index], "index": index}
        if mask_t is not None:
            sample["mask"] = mask_t
        return sample

    def collate_fn(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate a batch; with `scale_per="batch"` first draw one scale and transform every
        item with it (the random state is the one the loader left after the batch's items,
        seeded per item by the trainer, so a batch's augmentation is reproducible)."""
        if self.scale_per == "batch":
            scale = self.transform.draw_scale()
            out = []
            for sample in samples:
                sample = dict(sample)
                image_t, mask_t, sal_t = self.transform(*sample.pop("_raw"), scale=scale)
                sample.update(image=image_t, saliency=sal_t)
                if mask_t is not None:
                    sample["mask"] = mask_t
                out.append(sample)
            samples = out
        return default_collate(samples)

