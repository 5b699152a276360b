"""RGB panels for reports and TensorBoard: coloured masks, CAM heat maps, PNG bytes.

Pure NumPy (PIL only to resize and encode): uint8 (H, W, 3) in, uint8 (H, W, 3) out.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from wsss.data.labels import color_palette


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Class-index mask (H, W), values 0..254 or 255 (ignore) → RGB uint8 (H, W, 3) in the VOC
    palette (the colours of `wsss.io.save_mask`)."""
    return color_palette(256)[np.asarray(mask, dtype=np.uint8)]


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) → RGB uint8 (..., 3) on a piecewise-linear jet colour map."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return (255 * rgb + 0.5).astype(np.uint8)


def resize_to(array: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """Resize a (H, W) or (H, W, 3) array to `size` = (H, W)."""
    if array.shape[:2] == tuple(size):
        return array
    if array.dtype != np.uint8:
        planes = np.atleast_3d(array.astype(np.float32))
        out = np.stack([np.asarray(Image.fromarray(p).resize((size[1], size[0]),
                                                             Image.BILINEAR))
                        for p in np.moveaxis(planes, -1, 0)], axis=-1)
        return out[..., 0] if array.ndim == 2 else out
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), method))


def cam_heatmap(image: np.ndarray, cams: np.ndarray, keys: np.ndarray | None = None, *,
                alpha: float = 0.5) -> np.ndarray:
    """The per-pixel maximum over foreground CAMs as a jet heat map blended over the image.

    Args:
        image: uint8 (H, W, 3).
        cams: float (K, h, w) in [0, 1]; resized to (H, W) when the sizes differ.
        keys: (K,) class indices; a background channel (key 0) is left out.
        alpha: weight of the heat map.

    Returns:
        uint8 (H, W, 3).
    """
    cams = np.asarray(cams, dtype=np.float32)
    if keys is not None:
        cams = cams[np.asarray(keys) > 0]
    height, width = image.shape[:2]
    if cams.shape[0] == 0:
        peak = np.zeros((height, width), dtype=np.float32)
    else:
        peak = resize_to(cams.max(axis=0), (height, width), nearest=False)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * jet(peak).astype(np.float32)
    return (blend + 0.5).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """Coloured mask blended over the image; background (0) leaves the image as it is."""
    colours = colorize_mask(resize_to(np.asarray(mask, dtype=np.uint8), image.shape[:2],
                                      nearest=True)).astype(np.float32)
    weight = np.where(np.asarray(mask)[..., None] == 0, 0.0, alpha)
    out = (1 - weight) * image.astype(np.float32) + weight * colours
    return (out + 0.5).astype(np.uint8)


def hstack(panels: Sequence[np.ndarray], *, gap: int = 2) -> np.ndarray:
    """Panels uint8 (H, W_i, 3) side by side with white gaps, each scaled to the first height."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        if i:
            parts.append(spacer)
        parts.append(resize_to(panel, (height, panel.shape[1] * height // panel.shape[0]),
                               nearest=True))
    return np.concatenate(parts, axis=1)


def upscale(rgb: np.ndarray, min_height: int) -> np.ndarray:
    """Enlarge (H, W, 3) by the smallest integer factor (nearest neighbour) reaching
    `min_height`, so that tiny images stay crisp in any viewer; larger ones are unchanged."""
    factor = max(1, math.ceil(min_height / max(rgb.shape[0], 1)))
    if factor == 1:
        return rgb
    return resize_to(rgb, (rgb.shape[0] * factor, rgb.shape[1] * factor), nearest=True)


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) → PNG file contents."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def denormalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float images (B, 3, H, W) → uint8 (B, 3, H, W) for display."""
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return (np.clip(images * s + m, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
