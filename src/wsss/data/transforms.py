"""Paired (image, mask) transforms for training and evaluation, following IRN's `misc/imutils.py`.

Every transform is a callable `(image, mask) -> (image, mask)`:
- `image`: (H, W, 3) numpy array, uint8 (raw RGB) or float32 (after `Normalize`);
- `mask`: (H, W) uint8 class indices (255 = ignore), or None when the sample has no mask.
Geometric transforms move the image and the mask together; crops pad the mask with 255.
`ToTensor` ends a pipeline: image float32 tensor (3, H, W), mask int64 tensor (H, W) or None.

Randomness: every random transform draws from Python's `random` module (the global generator,
as IRN does) unless it is given its own `rng=random.Random(seed)`. Seeding `random.seed(s)` makes a
pipeline reproducible in the main process; inside `DataLoader` workers PyTorch seeds `random`
from the loader's base seed, so `torch.manual_seed(s)` (plus `random.seed`/`np.random.seed`)
makes multi-worker loading reproducible too. Neither numpy's nor torch's generator is used.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Pair = tuple[np.ndarray, "np.ndarray | None"]

_RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.BILINEAR, 3: Image.Resampling.BICUBIC}


def _generator(rng: random.Random | None):
    # The `random` module exposes the same methods as a `random.Random` instance.
    return random if rng is None else rng


# --------------------------------------------------------------------------------------------
# Functional helpers
# --------------------------------------------------------------------------------------------


def pil_resize(array: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """Resize an array with PIL (IRN `misc/imutils.py pil_resize`).

    Args:
        array: (H, W) or (H, W, K) array. uint8 arrays with 1 or 3 channels are resized by PIL
            directly; other dtypes are resized channel by channel as 32-bit float images and cast
            back (exact for nearest-neighbour resizing of integer labels below 2**24).
        size: target (height, width).
        order: 3 = bicubic, 1 = bilinear, 0 = nearest.

    Returns:
        The resized array, same dtype and channel count; the input itself when the size is
        unchanged.
    """
    if order not in _RESAMPLE:
        raise ValueError(f"order must be one of {sorted(_RESAMPLE)}, got {order}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {(height, width)}")
    if array.shape[0] == height and array.shape[1] == width:
        return array
    resample = _RESAMPLE[order]
    if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[2] in (1, 3)):
        squeeze = array.ndim == 3 and array.shape[2] == 1
        source = array[..., 0] if squeeze else array
        out = np.asarray(Image.fromarray(source).resize((width, height), resample))
        return out[..., None] if squeeze else out
    if array.ndim == 2:
        plane = Image.fromarray(array.astype(np.float32)).resize((width, height), resample)
        out = np.asarray(plane)
    else:
        out = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(array[..., k], dtype=np.float32)).resize(
                        (width, height), resample
                    )
                )
                for k in range(array.shape[2])
            ],
            axis=-1,
        )
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(array.dtype)


def pil_rescale(array: np.ndarray, scale: float, order: int) -> np.ndarray:
    """Rescale by `scale` with PIL; target size `(round(H * scale), round(W * scale))`.

    IRN `misc/imutils.py pil_rescale` semantics (`np.round`, i.e. round half to even).

    Args:
        array: (H, W) or (H, W, K) array (see `pil_resize`).
        scale: positive factor.
        order: 3 = bicubic (images), 0 = nearest (masks).

    Returns:
        (round(H * scale), round(W * scale)[, K]) array of the input dtype.
    """
    height, width = array.shape[:2]
    target = (max(1, int(np.round(height * scale))), max(1, int(np.round(width * scale))))
    return pil_resize(array, target, order)


def normalize_array(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """`(image / 255 - mean) / std` per channel.

    Args:
        image: (H, W, 3) uint8 or float in the 0..255 range.

    Returns:
        float32 (H, W, 3).
    """
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    return ((np.asarray(image, dtype=np.float32) / 255.0 - mean_arr) / std_arr).astype(np.float32)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array → float32 tensor (3, H, W), values unchanged."""
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W) integer array → int64 tensor (H, W)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


def normalize_image(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalise an RGB image for a network: `(image / 255 - mean) / std`, HWC → CHW.

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        float32 tensor (3, H, W).
    """
    return image_to_tensor(normalize_array(image, mean, std))


def scaled_views(image: np.ndarray, scale: float, *, flip: bool) -> torch.Tensor:
    """One test-time view batch: the image rescaled (PIL bicubic, round() sizes), normalised,
    stacked with its horizontal mirror when `flip`.

    Args:
        image: uint8 (H, W, 3).

    Returns:
        float32 (2 if flip else 1, 3, round(H·scale), round(W·scale)).
    """
    scaled = image if scale == 1.0 else pil_rescale(image, scale, order=3)
    x = normalize_image(scaled).unsqueeze(0)
    return torch.cat([x, x.flip(-1)], dim=0) if flip else x


# --------------------------------------------------------------------------------------------
# Transform classes
# --------------------------------------------------------------------------------------------


class Compose:
    """Apply paired transforms in order."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]):
        self.transforms = list(transforms)

    def __call__(self, image, mask=None):
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomResizeLong:
    """Resize so that the long side is a random integer in [min_long, max_long] (IRN CAM training).

    The scale is `target / H` if W < H else `target / W`. Sizes: `rounding="irn"` follows IRN's
    `pil_rescale`, round(side · scale); `"psa"` follows PSA / SEAM / ICAM's `RandomResizeLong`:
    the long side is the target and the short one round(short · target / long), which differs
    by a pixel in about 0.02 % of VOC draws (float rounding at .5). Image: PIL bicubic; mask:
    nearest.
    """

    def __init__(self, min_long: int, max_long: int, *, rng: random.Random | None = None,
                 rounding: str = "irn"):
        if not 0 < min_long <= max_long:
            raise ValueError(f"need 0 < min_long <= max_long, got {min_long}, {max_long}")
        if rounding not in ("irn", "psa"):
            raise ValueError(f"rounding must be 'irn' or 'psa', got {rounding!r}")
        self.min_long, self.max_long = int(min_long), int(max_long)
        self.rng = rng
        self.rounding = rounding

    def __call__(self, image, mask=None):
        target_long = _generator(self.rng).randint(self.min_long, self.max_long)
        height, width = image.shape[:2]
        scale = target_long / height if width < height else target_long / width
        if self.rounding == "irn":
            image = pil_rescale(image, scale, 3)
            if mask is not None:
                mask = pil_rescale(mask, scale, 0)
            return image, mask
        if width < height:
            size = (target_long, int(round(width * target_long / height)))
        else:
            size = (int(round(height * target_long / width)), target_long)
        image = pil_resize(image, size, 3)
        if mask is not None:
            mask = pil_resize(mask, size, 0)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomResizeLong({self.min_long}, {self.max_long})"


class RandomRescale:
    """Rescale by a factor drawn uniformly from [min_scale, max_scale] (IRN `random_scale`).

    Image: PIL bicubic; mask: nearest; sizes follow `pil_rescale` (round()).
    """

    def __init__(self, min_scale: float, max_scale: float, *, rng: random.Random | None = None):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.rng = rng

    def __call__(self, image, mask=None):
        scale = self.min_scale + _generator(self.rng).random() * (self.max_scale - self.min_scale)
        image = pil_rescale(image, scale, 3)
        if mask is not None:
            mask = pil_rescale(mask, scale, 0)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomRescale({self.min_scale}, {self.max_scale})"


class RandomHorizontalFlip:
    """Flip image and mask left-right together with probability `p`."""

    def __init__(self, p: float = 0.5, *, rng: random.Random | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = rng

    def __call__(self, image, mask=None):
        if _generator(self.rng).random() < self.p:
            image = np.ascontiguousarray(image[:, ::-1])
            if mask is not None:
                mask = np.ascontiguousarray(mask[:, ::-1])
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast, saturation and hue changes of the image (mask untouched).

    Factors follow torchvision's `ColorJitter` ranges: brightness/contrast/saturation factor
    uniform in [max(0, 1 - v), 1 + v], hue shift uniform in [-hue, hue] (hue <= 0.5, fraction of
    the colour circle); the four operations are applied in a random order (PIL `ImageEnhance`
    and an HSV hue rotation). A value of 0 disables that operation. Needs a uint8 image, so it
    goes before `Normalize`.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        *,
        rng: random.Random | None = None,
    ):
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation), ("hue", hue)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if hue > 0.5:
            raise ValueError(f"hue must be <= 0.5, got {hue}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation, self.hue = float(saturation), float(hue)
        self.rng = rng

    def __call__(self, image, mask=None):
        if image.dtype != np.uint8:
            raise TypeError(
                f"ColorJitter needs a uint8 image (place it before Normalize), got {image.dtype}"
            )
        gen = _generator(self.rng)
        ops = []
        if self.brightness > 0:
            ops.append(("brightness", self.brightness))
        if self.contrast > 0:
            ops.append(("contrast", self.contrast))
        if self.saturation > 0:
            ops.append(("saturation", self.saturation))
        if self.hue > 0:
            ops.append(("hue", self.hue))
        if not ops:
            return image, mask
        gen.shuffle(ops)
        pil = Image.fromarray(image)
        for name, value in ops:
            if name == "hue":
                shift = gen.uniform(-value, value)
                h, s, v = pil.convert("HSV").split()
                h_arr = np.asarray(h, dtype=np.uint8)
                # uint8 wrap-around rotates the hue circle, as torchvision's PIL path does.
                h_arr = (h_arr.astype(np.int16) + round(shift * 255)) % 256
                h = Image.fromarray(h_arr.astype(np.uint8))
                pil = Image.merge("HSV", (h, s, v)).convert("RGB")
            else:
                factor = gen.uniform(max(0.0, 1.0 - value), 1.0 + value)
                enhancer = {
                    "brightness": ImageEnhance.Brightness,
                    "contrast": ImageEnhance.Contrast,
                    "saturation": ImageEnhance.Color,
                }[name]
                pil = enhancer(pil).enhance(factor)
        return np.asarray(pil, dtype=np.uint8).copy(), mask

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue})")


class Normalize:
    """`(image / 255 - mean) / std` → float32 (H, W, 3); the mask is untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image, mask=None):
        return normalize_array(image, self.mean, self.std), mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomCrop:
    """Random crop to `size`, padding when the image is smaller (IRN `random_crop`).

    Along each axis: if the image is larger than the crop, a random window of the image is taken;
    otherwise the whole image is placed at a random offset inside a container filled with
    `image_fill` (IRN pads the *normalised* image with 0, the mean colour) and `mask_fill`
    (255 = ignore) for the mask. The output is always exactly `size`.

    Args:
        size: crop side (int) or (height, width).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        image_fill: float = 0.0,
        mask_fill: int = 255,
        *,
        rng: random.Random | None = None,
    ):
        if isinstance(size, int):
            size = (size, size)
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"crop size must be positive, got {self.size}")
        self.image_fill = image_fill
        self.mask_fill = int(mask_fill)
        self.rng = rng

    @staticmethod
    def _axis(gen, length: int, crop: int) -> tuple[int, int, int]:
        """(container offset, image offset, extent) along one axis."""
        space = length - crop
        if space > 0:
            return 0, gen.randrange(space + 1), crop
        return gen.randrange(-space + 1), 0, length

    def __call__(self, image, mask=None):
        gen = _generator(self.rng)
        height, width = image.shape[:2]
        crop_h, crop_w = self.size
        cont_top, img_top, ext_h = self._axis(gen, height, crop_h)
        cont_left, img_left, ext_w = self._axis(gen, width, crop_w)
        out = np.full((crop_h, crop_w) + image.shape[2:], self.image_fill, dtype=image.dtype)
        out[cont_top:cont_top + ext_h, cont_left:cont_left + ext_w] = (
            image[img_top:img_top + ext_h, img_left:img_left + ext_w]
        )
        if mask is not None:
            if mask.shape[:2] != (height, width):
                raise ValueError(
                    f"mask shape {mask.shape} does not match image shape {image.shape}"
                )
            out_mask = np.full((crop_h, crop_w), self.mask_fill, dtype=mask.dtype)
            out_mask[cont_top:cont_top + ext_h, cont_left:cont_left + ext_w] = (
                mask[img_top:img_top + ext_h, img_left:img_left + ext_w]
            )
            mask = out_mask
        return out, mask

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, image_fill={self.image_fill}, mask_fill={self.mask_fill})"


class RandomResizedCrop:
    """Crop a random area fraction and aspect ratio, then resize to `size` (no padding).

    1-Stage's training crop (`visinf/1-stage-wseg: datasets/transforms.py MaskRandResizedCrop`)
    with the parameter draw of the torchvision it pins (0.2.1, `RandomResizedCrop.get_params`):
    up to 10 tries of area = uniform(scale)·H·W, aspect w/h = uniform(ratio) (linear, not
    log-uniform), w = round(√(area·aspect)), h = round(√(area/aspect)), then w and h swapped with
    probability 1/2; the first window that fits is placed uniformly (`randint`, both ends
    included). If none fits, the centred square of side min(H, W). The same sequence of `random`
    calls as torchvision 0.2.1, so a seeded generator gives the official windows. Image: PIL
    bicubic; mask: nearest.

    Args:
        size: output side (int) or (height, width).
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
    """

    def __init__(self, size: int | tuple[int, int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0), *,
                 rng: random.Random | None = None):
        if isinstance(size, int):
            size = (size, size)
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"crop size must be positive, got {self.size}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {list(scale)}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {list(ratio)}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.rng = rng

    @staticmethod
    def window(gen, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> tuple[int, int, int, int]:
        """(top, left, h, w) of one random window in an (height, width) image."""
        area = height * width
        for _ in range(10):
            target = gen.uniform(*scale) * area
            aspect = gen.uniform(*ratio)
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if gen.random() < 0.5:
                w, h = h, w
            if w <= width and h <= height:
                return gen.randint(0, height - h), gen.randint(0, width - w), h, w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def __call__(self, image, mask=None):
        height, width = image.shape[:2]
        if mask is not None and mask.shape[:2] != (height, width):
            raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
        top, left, h, w = self.window(_generator(self.rng), height, width, self.scale, self.ratio)
        image = pil_resize(image[top:top + h, left:left + w], self.size, 3)
        if mask is not None:
            mask = pil_resize(mask[top:top + h, left:left + w], self.size, 0)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class ToTensor:
    """image (H, W, 3) → float32 tensor (3, H, W), values unchanged; mask → int64 (H, W) | None."""

    def __call__(self, image, mask=None):
        image_t = image if isinstance(image, torch.Tensor) else image_to_tensor(image)
        if mask is not None and not isinstance(mask, torch.Tensor):
            mask = mask_to_tensor(mask)
        return image_t, mask

    def __repr__(self) -> str:
        return "ToTensor()"


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def build_train_transform(
    *,
    crop_size: int | tuple[int, int] | None,
    resize_long: tuple[int, int] | None = None,
    scale_range: tuple[float, float] | None = None,
    flip: bool = True,
    color_jitter: tuple[float, float, float, float] | None = None,
    resized_crop_scale: tuple[float, float] | None = None,
    resized_crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    resize_long_rounding: str = "irn",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    rng: random.Random | None = None,
) -> Compose:
    """The IRN training pipeline (`voc12/dataloader.py VOC12ImageDataset` order).

    resize-long → rescale → colour jitter → normalise → flip → crop (image pad 0, mask pad 255)
    → tensors. Steps given as None (or `flip=False`) are left out; `crop_size=None` keeps the
    full image (variable sizes; batch size 1 or a custom collate).

    With `resized_crop_scale`, 1-Stage's pipeline instead (`datasets/pascal_voc.py`):
    `RandomResizedCrop(crop_size, resized_crop_scale, resized_crop_ratio)` → flip → colour
    jitter → normalise → tensors, never padded (then `resize_long` and `scale_range` must be
    None).

    Args:
        crop_size: output side (int) or (height, width), or None.
        resize_long: (min_long, max_long) for `RandomResizeLong`, e.g. (320, 640) in IRN.
        resize_long_rounding: "irn" or "psa" (`RandomResizeLong`'s size rounding).
        scale_range: (min_scale, max_scale) for `RandomRescale`, e.g. (0.5, 1.5).
        color_jitter: (brightness, contrast, saturation, hue) or None.
        rng: optional `random.Random` shared by all random steps (default: the global `random`).
            A private generator is copied into every DataLoader worker, so workers would repeat
            each other's draws; keep the default for multi-worker loading.

    Returns:
        A `Compose` mapping (uint8 (H, W, 3), uint8 (H, W) | None) to
        (float32 tensor (3, h, w), int64 tensor (h, w) | None).
    """
    if color_jitter is not None and len(color_jitter) != 4:
        raise ValueError(
            f"color_jitter must be (brightness, contrast, saturation, hue), got {color_jitter}"
        )
    steps: list[Callable[..., Pair]] = []
    if resized_crop_scale is not None:
        if crop_size is None:
            raise ValueError("a random resized crop needs a crop size")
        if resize_long is not None or scale_range is not None:
            raise ValueError("resized_crop_scale (a random resized crop) replaces resize_long "
                             "and scale_range: set train.resize_long and train.scale_range "
                             "to null")
        steps.append(RandomResizedCrop(crop_size, resized_crop_scale, resized_crop_ratio,
                                       rng=rng))
        if flip:
            steps.append(RandomHorizontalFlip(0.5, rng=rng))
        if color_jitter is not None:
            steps.append(ColorJitter(*color_jitter, rng=rng))
        steps += [Normalize(mean, std), ToTensor()]
        return Compose(steps)
    if resize_long is not None:
        steps.append(RandomResizeLong(resize_long[0], resize_long[1], rng=rng,
                                      rounding=resize_long_rounding))
    if scale_range is not None:
        steps.append(RandomRescale(scale_range[0], scale_range[1], rng=rng))
    if color_jitter is not None:
        steps.append(ColorJitter(*color_jitter, rng=rng))
    steps.append(Normalize(mean, std))
    if flip:
        steps.append(RandomHorizontalFlip(0.5, rng=rng))
    if crop_size is not None:
        steps.append(RandomCrop(crop_size, image_fill=0.0, mask_fill=255, rng=rng))
    steps.append(ToTensor())
    return Compose(steps)


def build_eval_transform(
    *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Compose:
    """Normalise and convert to tensors, no geometry (full-resolution evaluation)."""
    return Compose([Normalize(mean, std), ToTensor()])


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRescale",
    "RandomResizedCrop",
    "RandomResizeLong",
    "ToTensor",
    "build_eval_transform",
    "build_train_transform",
    "image_to_tensor",
    "mask_to_tensor",
    "normalize_array",
    "normalize_image",
    "pil_rescale",
    "pil_resize",
]
