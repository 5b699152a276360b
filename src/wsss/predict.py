"""Inference on arbitrary images: multi-scale + flip scores, optional dense CRF, a `Predictor`.

A checkpoint (`{"model": state_dict, "meta": {...}}`) carries what inference needs: class names,
normalisation, the network description and the test settings. `load(path)` rebuilds the network
through the builder registered for the checkpoint's kind (`meta["kind"]`, falling back to
`meta["method"]`) in `CHECKPOINT_KINDS`: "segnet" (the final DeepLab, `wsss.methods.segnet`) and
"one_stage" (1-Stage's own network, rebuilt through `METHODS` from the meta its train stage
writes) are registered here; another method whose network segments registers its kind the same
way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from wsss.data.labels import color_palette
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, pil_rescale
from wsss.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from wsss.io import IMAGE_EXTENSIONS, DataError, load_image
from wsss.ops.crf import CRF_PRESETS, dense_crf
from wsss.ops.multiscale import finalize_probs, merge_views
from wsss.registry import Registry

__all__ = ["CHECKPOINT_KINDS", "Predictor", "ScoreModel", "crf_presets", "load",
           "msc_max_probs", "multiscale_probs", "overlay", "to_rgb"]

# Test-time CRF of `kazuto1011/deeplab-pytorch: configs/voc12.yaml` (the DeepLab-v2 code AdvCAM
# and AMN use): POS_XY_STD 1, POS_W 3, BI_XY_STD 67, BI_RGB_STD 3, BI_W 4, 10 iterations.
_SEGNET_CRF_PRESETS: dict[str, dict[str, int | float]] = {
    "deeplabv2": {"num_iter": 10, "gaussian_sxy": 1, "gaussian_compat": 3, "bilateral_sxy": 67,
                  "bilateral_srgb": 3, "bilateral_compat": 4},
}


# Largest image `predict_file` opens (250 megapixels, e.g. 18000x14000): the full-size mask is
# one byte per pixel and a non-JPEG file is decoded whole (3 bytes per pixel) before reducing.
DEFAULT_MAX_PIXELS = 250_000_000


def crf_presets() -> dict[str, dict[str, int | float]]:
    """Named dense-CRF settings: `wsss.ops.crf.CRF_PRESETS` plus the DeepLab-v2 test preset."""
    return {**CRF_PRESETS, **_SEGNET_CRF_PRESETS}


def crf_params(name: str) -> dict[str, int | float]:
    presets = crf_presets()
    if name not in presets:
        raise ValueError(f"unknown CRF preset {name!r}; valid: {', '.join(sorted(presets))}")
    return dict(presets[name])


# --------------------------------------------------------------------------------------------
# Pure inference
# --------------------------------------------------------------------------------------------


def multiscale_probs(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    merge: str = "logits",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Class probabilities of one image, averaged over scales and horizontal flips.

    Each scale resizes the image with PIL bicubic to `round(H·s), round(W·s)`; the scores of
    every view are resized back to (H, W) (bilinear, align_corners False) and un-flipped.
    `merge="logits"` averages logits and applies one softmax (DeepLab/ICAM test), `"probs"`
    averages per-view softmax outputs (1-Stage test). The model's mode is left as the caller
    set it (use eval mode for inference).

    Args:
        score_fn: images (B, 3, h, w) normalised → scores (B, K, h', w'), any h', w'.
        image: uint8 RGB (H, W, 3).

    Returns:
        probs float32 (K, H, W) on `device`, summing to 1 over K.
    """
    if merge not in ("logits", "probs"):
        raise ValueError(f"merge must be 'logits' or 'probs', got {merge!r}")
    height, width = image.shape[:2]
    total: torch.Tensor | None = None
    views = 0
    for scale in scales:
        scaled = image if scale == 1.0 else pil_rescale(image, scale, order=3)
        x = normalize_image(scaled, mean, std).unsqueeze(0).to(device)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        scores = score_fn(x).float()
        scores = F.interpolate(scores, size=(height, width), mode="bilinear",
                               align_corners=False)
        if flip:
            scores = torch.stack([scores[0], scores[1].flip(-1)])
        if merge == "probs":
            scores = scores.softmax(dim=1)
        part = scores.sum(0)
        total = part if total is None else total + part
        views += scores.shape[0]
    if total is None:
        raise ValueError("scales must name at least one scale")
    merged = total / views
    return merged.softmax(dim=0) if merge == "logits" else merged


def to_rgb(image: Any) -> np.ndarray:
    """Any supported image input → uint8 RGB (H, W, 3).

    Args:
        image: a path (EXIF orientation applied), a PIL image (EXIF applied; grayscale,
            palette, RGBA and 16-bit modes converted as `wsss.io.pil_to_rgb` does for
            training) or an array: uint8 (H, W) grayscale,
            (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped).

    Raises:
        DataError: unreadable file or a float image; ValueError: an array of another shape or
            dtype.
    """
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        from wsss.io import pil_to_rgb

        return pil_to_rgb(ImageOps.exif_transpose(image))  # 16-bit scaled as in training
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def overlay(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours (VOC palette) over an RGB image; background and 255 stay untouched.

    Args:
        image: uint8 (H, W, 3). mask: (H, W) class indices.

    Returns:
        uint8 (H, W, 3).
    """
    colours = color_palette()[mask].astype(np.float32)
    out = image.astype(np.float32)
    painted = (mask > 0) & (mask != 255)
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[painted]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Checkpoint kinds
# --------------------------------------------------------------------------------------------


ViewsFn = Callable[[nn.Module, np.ndarray, list[float], bool, torch.device], torch.Tensor]


@dataclass
class ScoreModel:
    """A network rebuilt from checkpoint meta and how to read per-class scores from it.

    Attributes:
        model: the network, weights not yet loaded (the `Predictor` loads the state dict).
        scores: (model, images (B, 3, h, w)) → scores (B, C + 1, h', w'), background first;
            merged over views by `multiscale_probs`.
        merge: "logits" (scores are logits; averaged, then softmax) or "probs" (softmax per
            view, then averaged).
        views: instead of `scores`, the whole test of one image: (model, image uint8 (H, W, 3),
            scales, flip, device) → scores (C + 1, H, W) whose argmax is the mask (a method's
            own view merging, e.g. 1-Stage's class cut and background power).
        test: default test settings (`scales`, `flip`, `crf`, `crf_params`) of this checkpoint.
    """

    model: nn.Module
    scores: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    merge: str = "logits"
    views: ViewsFn | None = None
    test: dict[str, Any] = field(default_factory=dict)


# kind name → builder (meta dict → ScoreModel); add one with `@CHECKPOINT_KINDS.register(kind)`.
CHECKPOINT_KINDS = Registry("checkpoint kind")


@CHECKPOINT_KINDS.register("segnet")
def _segnet_kind(meta: dict[str, Any]) -> ScoreModel:
    from wsss.models.segnet import build_segnet

    net = meta["segnet"]
    model = build_segnet(arch=net["arch"], backbone=net["backbone"],
                         num_classes=int(meta["num_classes"]),
                         output_stride=int(net["output_stride"]), pretrained="none",
                         frozen_bn=bool(net.get("frozen_bn", False)))
    test = dict(meta.get("test") or {})
    if test.get("merge", "mean") == "max":
        mean, std = meta.get("mean", IMAGENET_MEAN), meta.get("std", IMAGENET_STD)

        def views(m: nn.Module, image: np.ndarray, scales: list[float], flip: bool,
                  device: torch.device) -> torch.Tensor:
            return msc_max_probs(m, image, scales=scales, flip=flip, mean=mean, std=std,
                                 device=device)

        return ScoreModel(model=model, views=views, test=test)
    return ScoreModel(model=model, scores=lambda m, images: m(images), merge="logits",
                      test=test)


def msc_max_probs(model: nn.Module, image: np.ndarray, *, scales: Sequence[float],
                  flip: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """DeepLab-v2's multi-scale test (deeplab-pytorch `msc.py`, `main.py test`): the pixel-wise
    max of the logits of the image and of its bilinearly rescaled copies, taken at the
    network's stride on the unscaled image's grid, upsampled (bilinear) to the image, softmax.

    Args:
        model: a `wsss.models.segnet.SegNet` (called with `msc_scales`).
        image: uint8 RGB (H, W, 3).
        scales: must list 1.0 (the grid of the max); the others are rescaled copies.
        flip: also take the max over the mirrored views (deeplab-pytorch has no flip).

    Returns:
        probs float32 (K, H, W) on `device`.
    """
    if 1.0 not in [float(s) for s in scales]:
        raise ValueError(f"the max merge (segnet.test_merge=max) needs scale 1.0 in the test "
                         f"scales, got {list(scales)}")
    height, width = image.shape[:2]
    x = normalize_image(image, mean, std).unsqueeze(0).to(device)
    if flip:
        x = torch.cat([x, x.flip(-1)], dim=0)
    logits = model(x, msc_scales=[float(s) for s in scales if float(s) != 1.0])[-1].float()
    if flip:
        logits = torch.maximum(logits[:1], logits[1:].flip(-1))
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits[0].softmax(dim=0)


def method_model(meta: dict[str, Any]) -> tuple[Any, nn.Module]:
    """The `Method` named by `meta["method"]` and its freshly built network, from the meta a
    method's train stage writes (`Method.checkpoint_meta`: `model` and `method_config`).

    Raises:
        CheckpointError: unknown method, or a stored config its config class does not accept.
    """
    from wsss.config import ModelConfig, RunConfig
    from wsss.methods import METHODS

    name = meta.get("method")
    if name not in METHODS:
        raise CheckpointError(f"checkpoint method {name!r} is not registered; valid: "
                              f"{', '.join(METHODS.names())}")
    method_cls = METHODS.get(name)
    try:
        method_config = method_cls.config_class()(**meta["method_config"])
        model_config = ModelConfig(**{**meta["model"], "pretrained": "none"})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint meta does not describe a {name} network ({exc})"
                              ) from exc
    method = method_cls(RunConfig(model=model_config, method=method_config))
    return method, method.build_model(int(meta["num_classes"]))


@CHECKPOINT_KINDS.register("one_stage")
def _one_stage_kind(meta: dict[str, Any]) -> ScoreModel:
    """1-Stage's test (`wsss.ops.multiscale`): mean of the views' softmax (each view padded to
    `test_pad_size`), classes kept where the max over views of sigmoid(class score) > fp_cut
    (no image labels here), background ** bg_power, CRF "psa"."""
    method, model = method_model(meta)
    c = method.mcfg

    def views(net: nn.Module, image: np.ndarray, scales: list[float], flip: bool,
              device: torch.device) -> torch.Tensor:
        merged, scores = merge_views(net, image, scales=scales, flip=flip,
                                     pad_size=c.test_pad_size, device=device)
        return finalize_probs(merged, scores > c.fp_cut, bg_power=c.bg_power)

    return ScoreModel(model=model, views=views,
                      test={"scales": list(c.test_scales), "flip": c.test_flip, "crf": c.crf,
                            "crf_params": crf_params("psa")})


def checkpoint_kind(meta: dict[str, Any]) -> Callable[[dict[str, Any]], ScoreModel]:
    """The builder for a checkpoint's `meta["kind"]` (else `meta["method"]`).

    Methods register their kinds on import, so `wsss.methods` is imported before giving up.
    """
    kind = meta.get("kind") or meta.get("method")
    if kind is None:
        raise CheckpointError("checkpoint meta names neither a 'kind' nor a 'method'")
    if kind not in CHECKPOINT_KINDS:
        import wsss.methods  # noqa: F401  (methods register their checkpoint kinds)
    if kind not in CHECKPOINT_KINDS:
        raise CheckpointError(
            f"checkpoint kind {kind!r} cannot predict masks; predictable kinds: "
            f"{', '.join(CHECKPOINT_KINDS.names())} (a CAM classifier checkpoint needs its "
            f"pipeline's later stages; train the segmentation network with segnet.enabled=true)"
        )
    return CHECKPOINT_KINDS.get(kind)


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------


class Predictor:
    """Masks for arbitrary images from a trained network, without the training config.

    The predictor owns its model and keeps it in eval mode. Use `load(path)` to build one from
    a checkpoint.

    Args:
        score_model: the network and how to score with it (`ScoreModel`).
        class_names: background first.
        mean, std: normalisation the network was trained with.
        scales, flip: test-time views.
        crf: whether `predict` applies the dense CRF by default; `crf_params`: its settings.
        max_side: images whose longer side exceeds this are scored at a reduced size (the
            probabilities are resized back, the mask has the input's size); None: no limit.
        device: where the network runs.
    """

    def __init__(
        self,
        score_model: ScoreModel,
        *,
        class_names: Sequence[str],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        crf: bool = False,
        crf_params: dict[str, Any] | None = None,
        max_side: int | None = 1024,
        device: torch.device | str = "cpu",
    ) -> None:
        self.score_model = score_model
        self.device = torch.device(device)
        self.model = score_model.model.to(self.device).eval()
        self.class_names = list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.scales = [float(s) for s in scales]
        self.flip = flip
        self.crf = crf
        self.crf_params = dict(crf_params or crf_params_default())
        self.max_side = max_side
        self.meta: dict[str, Any] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: torch.device | str = "cpu",
                        allow_unverified: bool = False, **overrides: Any) -> Predictor:
        """Rebuild the network named by the checkpoint's meta and load its weights.

        Args:
            allow_unverified: load a checkpoint that carries no sha256 (see `load_checkpoint`).
            overrides: `scales`, `flip`, `crf`, `crf_params`, `max_side` replacing the test
                settings stored in the checkpoint; `merge` ("mean" / "max") replaces a segnet
                checkpoint's view merge.

        Raises:
            CheckpointError: missing, corrupt, unverifiable or non-predicting checkpoint.
        """
        state = load_checkpoint(path, map_location="cpu", allow_unverified=allow_unverified)
        meta = state.get("meta") or {}
        if "class_names" not in meta:
            raise CheckpointError(f"{path}: checkpoint meta has no class names")
        merge = overrides.pop("merge", None)
        if merge is not None:
            meta = {**meta, "test": {**(meta.get("test") or {}), "merge": merge}}
        score_model = checkpoint_kind(meta)(meta)
        load_model_state(score_model.model, state["model"], str(path))
        test = score_model.test
        settings = {
            "scales": test.get("scales", [1.0]), "flip": test.get("flip", False),
            "crf": test.get("crf", False),
            "crf_params": test.get("crf_params") or crf_params_default(),
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        predictor = cls(score_model, class_names=meta["class_names"],
                        mean=meta.get("mean", IMAGENET_MEAN), std=meta.get("std", IMAGENET_STD),
                        device=device, **settings)
        predictor.meta = meta
        return predictor

    def predict_probs(self, image: Any) -> np.ndarray:
        """Merged class scores before any CRF (probabilities for the segnet; 1-Stage's kind
        gives its background-powered scores).

        Args:
            image: path, PIL image or uint8 array (see `to_rgb`).

        Returns:
            float32 (C + 1, H, W), background first, at the input's size (after EXIF rotation).
        """
        return self._probs(to_rgb(image))[1]

    def predict(self, image: Any, *, crf: bool | None = None) -> np.ndarray:
        """The mask of one image.

        Args:
            image: path, PIL image or uint8 array (see `to_rgb`).
            crf: apply the dense CRF (None: the predictor's setting).

        Returns:
            uint8 (H, W) class indices, 0 = background.
        """
        rgb = to_rgb(image)
        work = self.capped(rgb)
        mask = self.work_mask(work, crf=crf)
        return upsample_mask(mask, rgb.shape[:2])

    def predict_file(self, path: str | Path, *, crf: bool | None = None,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mask of an image file, with memory bounded by `max_side`, not by the file.

        The file is decoded at most `max_side` on its longer side (JPEG decodes reduced, other
        formats are reduced right after decoding), scored (and CRF-refined) there, and only the
        argmax is upsampled (nearest) to the file's size.

        Returns:
            mask uint8 (H, W) at the file's size (after EXIF rotation), the scored RGB image
            uint8 (h, w, 3) and its mask uint8 (h, w).

        Raises:
            DataError: unreadable file, or more than `max_pixels` pixels.
        """
        work, size = open_capped(path, max_side=self.max_side, max_pixels=max_pixels)
        mask = self.work_mask(work, crf=crf)
        return upsample_mask(mask, size), work, mask

    def capped(self, rgb: np.ndarray) -> np.ndarray:
        """`rgb` reduced (bicubic) to `max_side` on its longer side, or as it is."""
        height, width = rgb.shape[:2]
        if self.max_side is not None and max(height, width) > self.max_side:
            return pil_rescale(rgb, self.max_side / max(height, width), order=3)
        return rgb

    def work_mask(self, work: np.ndarray, *, crf: bool | None = None) -> np.ndarray:
        """Mask uint8 (h, w) of an image already at the scoring size (see `capped`)."""
        probs = self._scores(work).cpu().numpy().astype(np.float32)
        return self.mask_from_probs(work, probs, crf=self.crf if crf is None else crf)

    def mask_from_probs(self, rgb: np.ndarray, probs: np.ndarray, *, crf: bool) -> np.ndarray:
        """Argmax of `probs` (C + 1, H, W), after the dense CRF when `crf`."""
        if crf:
            probs = dense_crf(rgb, probs, **self.crf_params)
        return np.argmax(probs, axis=0).astype(np.uint8)

    def _scores(self, work: np.ndarray) -> torch.Tensor:
        """Merged scores (C + 1, h, w) of an image at the scoring size."""
        sm = self.score_model
        with torch.inference_mode():
            if sm.views is not None:
                return sm.views(self.model, work, self.scales, self.flip, self.device).float()
            if sm.scores is not None:
                return multiscale_probs(lambda x: sm.scores(self.model, x), work,
                                        scales=self.scales, flip=self.flip, merge=sm.merge,
                                        mean=self.mean, std=self.std, device=self.device)
        raise ValueError("a ScoreModel needs `scores` or `views`")

    def _probs(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores at the input's size (bilinear from the scoring size): `predict_probs` only;
        masks upsample the argmax instead (a (C + 1, H, W) float array of a large photo is
        gigabytes)."""
        height, width = rgb.shape[:2]
        work = self.capped(rgb)
        probs = self._scores(work)
        if work is not rgb:
            with torch.inference_mode():
                probs = F.interpolate(probs[None], size=(height, width), mode="bilinear",
                                      align_corners=False)[0]
        return rgb, probs.cpu().numpy().astype(np.float32)


def crf_params_default() -> dict[str, int | float]:
    return crf_params("deeplabv2")


def upsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a class-index mask (h, w) to `size` (H, W); uint8 out."""
    if mask.shape == tuple(size):
        return mask.astype(np.uint8, copy=False)
    image = Image.fromarray(mask.astype(np.uint8, copy=False), mode="L")
    return np.array(image.resize((size[1], size[0]), Image.NEAREST), dtype=np.uint8)


def open_capped(path: str | Path, *, max_side: int | None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file as RGB uint8 at most `max_side` on its longer side.

    JPEG files decode reduced (libjpeg DCT scaling, `Image.draft`, to the smallest power-of-two
    reduction at least the target); other formats decode whole and are reduced at once (PIL
    `reduce`, then bicubic to the exact target, `round(side · max_side / longer side)`). EXIF
    orientation is applied.

    Returns:
        the image uint8 (h, w, 3) and the file's full size (H, W) after EXIF rotation.

    Raises:
        DataError: missing, empty or undecodable file, or more than `max_pixels` pixels.
    """
    from wsss.data.voc import exif_orientation
    from wsss.io import pil_to_rgb

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the size is checked here, against max_pixels
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise DataError(
                    f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} megapixels), "
                    f"above --max-pixels {max_pixels} ({max_pixels / 1e6:.0f} megapixels): its "
                    "full-size mask would not fit; split or shrink the image"
                )
            scale = 1.0
            if max_side is not None and max(width, height) > max_side:
                scale = max_side / max(width, height)
                target = (max(1, round(width * scale)), max(1, round(height * scale)))
                if image.format == "JPEG":
                    image.draft("RGB", target)
                image.load()
                if image.mode not in ("RGB", "L"):  # 16-bit, palette, alpha, CMYK: 8-bit RGB
                    image = Image.fromarray(pil_to_rgb(image, path))
                factor = min(image.size[0] // target[0], image.size[1] // target[1])
                if factor >= 2:
                    image = image.reduce(factor)
                image = image.resize(target, Image.BICUBIC)
            else:
                image.load()
            orientation = exif_orientation(path)
            rgb = pil_to_rgb(image, path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    rgb = _apply_orientation(rgb, orientation)
    full = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    return rgb, full


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 2-8 applied to an (h, w, 3) array (as `ImageOps.exif_transpose`)."""
    ops = {2: [Image.FLIP_LEFT_RIGHT], 3: [Image.ROTATE_180], 4: [Image.FLIP_TOP_BOTTOM],
           5: [Image.TRANSPOSE], 6: [Image.ROTATE_270], 7: [Image.TRANSVERSE],
           8: [Image.ROTATE_90]}.get(orientation, [])
    if not ops:
        return rgb
    image = Image.fromarray(rgb)
    for op in ops:
        image = image.transpose(op)
    return np.array(image)  # writable (the CRF writes into its input buffer)


def load(checkpoint: str | Path, *, device: torch.device | str = "cpu",
         **overrides: Any) -> Predictor:
    """A `Predictor` for a trained checkpoint (the `model.pt` of `train_segnet`, or of any
    method whose checkpoint kind is registered in `CHECKPOINT_KINDS`).

    Example:
        >>> import wsss
        >>> mask = wsss.load("runs/demo/train_segnet/model.pt").predict("photo.jpg")
    """
    return Predictor.from_checkpoint(checkpoint, device=device, **overrides)


def scan_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Image files named by `inputs` and the files of its folders that are not images.

    Files are taken as given; folders are expanded (sorted, non-recursive): files with a known
    image extension are images, other files are returned as skipped (sub-folders and hidden
    files are ignored).

    Raises:
        DataError: an input that does not exist, or no images at all.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in sorted(path.iterdir()):
                if not p.is_file() or p.name.startswith("."):
                    continue
                (files if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                        f"{', '.join(map(str, inputs))}")
    return files, skipped


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by `inputs` (see `scan_inputs`)."""
    return scan_inputs(inputs)[0]


def output_names(files: Sequence[Path]) -> list[str]:
    """Distinct output stems for `files`: the file stem; `<stem>_<ext>` where stems collide,
    then a counter where those still collide (same name in two folders)."""
    stems = [f.stem for f in files]
    names: list[str] = []
    for f in files:
        name = f.stem if stems.count(f.stem) == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        base, count = name, 1
        while name in names:
            name = f"{base}_{count}"
            count += 1
        names.append(name)
    return names
