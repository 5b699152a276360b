"""Fully connected CRF (Krähenbühl & Koltun, arXiv:1210.5644) on probabilities or on label maps.

The backend is pydensecrf2 (import name `pydensecrf`), imported inside the functions so that the
rest of the library works where it failed to build. Settings of the reference implementations
are collected in `CRF_PRESETS` (docs: /methods/evaluation.md §4); the label CRF re-implements
`jiwoon-ahn/irn: misc/imutils.py crf_inference_label`, the probability CRF the `crf_inference`
helpers of `jiwoon-ahn/psa`, `YudeWang/SEAM` and `visinf/1-stage-wseg`.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CRF_PRESETS", "dense_crf", "dense_crf_batch", "dense_crf_energies", "dense_crf_labels"]

# Probabilities are clipped before −log so that a zero score gives a large finite energy
# (−log 1e-5 ≈ 11.5), as pydensecrf's `unary_from_softmax` does.
_PROB_CLIP = 1e-5

CRF_PRESETS: dict[str, dict[str, int | float]] = {
    # IRN/AMN seeds (`crf_inference_label`); use with `dense_crf_labels(..., gt_prob=0.7)`.
    "irn_seeds": {
        "num_iter": 10,
        "gaussian_sxy": 3,
        "gaussian_compat": 3,
        "bilateral_sxy": 50,
        "bilateral_srgb": 5,
        "bilateral_compat": 10,
    },
    # PSA/SEAM/ICAM AffinityNet seeds and the 1-Stage test CRF (`crf_inference`).
    "psa": {
        "num_iter": 10,
        "gaussian_sxy": 3,
        "gaussian_compat": 3,
        "bilateral_sxy": 80,
        "bilateral_srgb": 13,
        "bilateral_compat": 10,
    },
    # ICAM/SEAM final DeepLab test (`lib/utils/DenseCRF.py`), a single mean-field iteration.
    "deeplab": {
        "num_iter": 1,
        "gaussian_sxy": 3,
        "gaussian_compat": 3,
        "bilateral_sxy": 32,
        "bilateral_srgb": 13,
        "bilateral_compat": 10,
    },
    # AuxSegNet test (`crf_inference_inf`).
    "auxsegnet": {
        "num_iter": 10,
        "gaussian_sxy": 4,
        "gaussian_compat": 3,
        "bilateral_sxy": 83,
        "bilateral_srgb": 5,
        "bilateral_compat": 3,
    },
}


def _densecrf() -> Any:
    """Import the pydensecrf2 extension or fail with a message naming the fix."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(
            "The dense CRF needs the `pydensecrf2` package (import name `pydensecrf`), which "
            f"could not be imported ({err}). Install it with `pip install pydensecrf2`; it builds "
            "from source and needs a C++ compiler and Cython (`pip install cython`)."
        ) from err
    return dcrf


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _buffer(x: np.ndarray, dtype: Any = None) -> np.ndarray:
    """`x` as a C-contiguous, writable array: pydensecrf's typed memoryviews reject strided
    views (e.g. flipped images) and read-only buffers (`np.asarray` of a PIL image), so such
    arrays are copied; others pass through."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return x if x.flags.writeable else x.copy()


def _check_image(image: Any) -> np.ndarray:
    img = _to_numpy(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    return _buffer(img)


def _check_pair(image: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (C, H, W) scores of the same size, as numpy arrays."""
    img = _check_image(image)
    p = _to_numpy(probs)
    if p.ndim != 3 or p.shape[1:] != img.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) with (H, W) = {img.shape[:2]}, got {p.shape}")
    return img, p


def _infer(
    image: np.ndarray,
    unary: np.ndarray,
    num_labels: int,
    *,
    num_iter: int,
    gaussian_sxy: float,
    gaussian_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
) -> np.ndarray:
    """Mean-field inference; `unary` is (n, H·W) float32 energies, returns (n, H, W) float32."""
    dcrf = _densecrf()
    h, w = image.shape[:2]
    model = dcrf.DenseCRF2D(w, h, num_labels)
    model.setUnaryEnergy(_buffer(unary, np.float32))
    model.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    model.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat
    )
    q = model.inference(int(num_iter))
    return np.asarray(q, dtype=np.float32).reshape(num_labels, h, w)


def dense_crf_energies(
    image: np.ndarray | Tensor,
    unary: np.ndarray,
    *,
    num_iter: int,
    gaussian_sxy: float,
    gaussian_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
) -> np.ndarray:
    """Dense CRF on unary energies a caller computed itself (e.g. AuxSegNet's saliency unary).

    Args:
        image: (H, W, 3) uint8 RGB.
        unary: (n, H, W) energies (−log probabilities or any other).

    Returns:
        (n, H, W) float32 posteriors.
    """
    img = _check_image(image)
    if unary.ndim != 3 or unary.shape[1:] != img.shape[:2]:
        raise ValueError(f"unary must be (n, H, W) with (H, W) = {img.shape[:2]}, "
                         f"got {unary.shape}")
    return _infer(img, unary.reshape(unary.shape[0], -1), unary.shape[0], num_iter=num_iter,
                  gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                  bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                  bilateral_compat=bilateral_compat)


def dense_crf(
    image: np.ndarray | Tensor,
    probs: np.ndarray | Tensor,
    *,
    num_iter: int = 10,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Dense CRF posterior from per-class scores (defaults: the `"psa"` preset).

    The unary is −log(clip(probs, 1e-5, 1)); scores need not sum to one (PSA's (1 − max)^α
    stacks and 1-Stage's bg³ map are passed as is). A compat of 0 disables that pairwise term.

    Args:
        image: (H, W, 3) uint8 RGB, numpy or CPU tensor.
        probs: (C, H, W) float scores, numpy or tensor (copied to the CPU); not modified.
        num_iter: mean-field iterations.
        gaussian_sxy, gaussian_compat: spatial smoothness kernel width (px) and weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel widths (px, RGB
            levels) and weight.

    Returns:
        (C, H, W) float32 numpy posterior; sums to 1 over C at every pixel.
    """
    img, p = _check_pair(image, probs)
    num_labels = p.shape[0]
    unary = -np.log(np.clip(p.astype(np.float32), _PROB_CLIP, 1.0)).reshape(num_labels, -1)
    return _infer(
        img,
        unary,
        num_labels,
        num_iter=num_iter,
        gaussian_sxy=gaussian_sxy,
        gaussian_compat=gaussian_compat,
        bilateral_sxy=bilateral_sxy,
        bilateral_srgb=bilateral_srgb,
        bilateral_compat=bilateral_compat,
    )


def dense_crf_labels(
    image: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    *,
    num_labels: int,
    gt_prob: float = 0.7,
    num_iter: int = 10,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """Smooth a label map with a dense CRF (IRN `crf_inference_label`; defaults: `"irn_seeds"`).

    Each pixel's given label has energy −log(gt_prob) and every other label
    −log((1 − gt_prob) / (num_labels − 1)); label 0 is an ordinary label (no "unsure" value).

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int in [0, num_labels); not modified.
        num_labels: number of labels n ≥ 1 (with n = 1 the map is returned unchanged).
        gt_prob: confidence in the given labels, in (0, 1).
        num_iter, gaussian_*, bilateral_*: as in `dense_crf`.

    Returns:
        (H, W) int64 numpy argmax of the posterior.
    """
    img = _check_image(image)
    lab = _to_numpy(labels)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"labels must be (H, W) = {img.shape[:2]}, got {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {lab.dtype}")
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob}")
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= num_labels):
        raise ValueError(
            f"labels must lie in [0, {num_labels}), got range [{lab.min()}, {lab.max()}]"
        )
    if num_labels == 1:
        return lab.copy()
    flat = lab.reshape(-1)
    unary = np.full(
        (num_labels, flat.size), -np.log((1.0 - gt_prob) / (num_labels - 1)), dtype=np.float32
    )
    unary[flat, np.arange(flat.size)] = -np.log(gt_prob)
    q = _infer(
        img,
        unary,
        num_labels,
        num_iter=num_iter,
        gaussian_sxy=gaussian_sxy,
        gaussian_compat=gaussian_compat,
        bilateral_sxy=bilateral_sxy,
        bilateral_srgb=bilateral_srgb,
        bilateral_compat=bilateral_compat,
    )
    return np.argmax(q, axis=0).astype(np.int64)


def _default_start_method() -> str:
    """"fork" where available unless CUDA is initialised (a forked CUDA context is unusable)."""
    if "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _dense_crf_job(args: tuple[np.ndarray, np.ndarray, dict[str, Any]]) -> np.ndarray:
    image, probs, kwargs = args
    return dense_crf(image, probs, **kwargs)


def _claim_jobs(jobs: Sequence[tuple], counter: Any, emit: Any) -> None:
    """Run jobs[i] for every index i this process claims from the shared counter; emit(i, out)."""
    while True:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        if index >= len(jobs):
            return
        emit(index, _dense_crf_job(jobs[index]))


def _crf_worker(jobs: Sequence[tuple], counter: Any, results: Any) -> None:
    """Child process: claim jobs until none is left; an exception goes back as the result."""
    try:
        _claim_jobs(jobs, counter, lambda index, out: results.put((index, out)))
    except BaseException as exc:  # noqa: BLE001 — reported to the parent, which raises it
        results.put((-1, RuntimeError(f"dense CRF worker failed: {exc!r}")))


def dense_crf_batch(
    images: Sequence[np.ndarray | Tensor],
    probs_list: Sequence[np.ndarray | Tensor],
    *,
    workers: int = 1,
    start_method: str | None = None,
    **kwargs: Any,
) -> list[np.ndarray]:
    """`dense_crf` over several images, in `workers` processes when `workers` > 1.

    Results are identical to the sequential loop and returned in input order. Tensors are copied
    to the CPU first. The calling process is one of the workers: it starts `workers` − 1 children
    and every process claims the next image from a shared counter, so unequal image sizes stay
    balanced; with "fork" the children inherit the inputs instead of receiving them pickled.

    Args:
        images: N images, each (H_i, W_i, 3) uint8.
        probs_list: N score stacks, each (C_i, H_i, W_i).
        workers: number of processes, this one included; 1 runs in this process only.
        start_method: multiprocessing start method for the children. None (default) picks
            "fork" where it is available and CUDA is not initialised in this process (workers
            start at once instead of re-importing torch, about 1-2 s each), else "spawn".
        **kwargs: CRF settings passed to `dense_crf` (e.g. `**CRF_PRESETS["psa"]`).

    Returns:
        List of N (C_i, H_i, W_i) float32 numpy posteriors.

    Raises:
        RuntimeError: a child process failed or died (its error is in the message).
    """
    if len(images) != len(probs_list):
        raise ValueError(f"got {len(images)} images but {len(probs_list)} probability maps")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _densecrf()  # fail here, with the install hint, rather than inside a worker
    jobs = []
    for i, (img, p) in enumerate(zip(images, probs_list)):  # every input checked before work
        try:
            jobs.append((*_check_pair(img, p), kwargs))
        except ValueError as exc:
            raise ValueError(f"dense_crf_batch input {i}: {exc}") from None
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_dense_crf_job(job) for job in jobs]
    context = multiprocessing.get_context(start_method or _default_start_method())
    counter = context.Value("q", 0)
    queue = context.Queue()
    children = [context.Process(target=_crf_worker, args=(jobs, counter, queue), daemon=True)
                for _ in range(workers - 1)]
    out: dict[int, np.ndarray] = {}
    try:
        for child in children:
            child.start()
        _claim_jobs(jobs, counter, out.__setitem__)
        while len(out) < len(jobs):
            out.update([_next_result(queue, children)])
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
        queue.close()
    return [out[i] for i in range(len(jobs))]


def _next_result(queue: Any, children: Sequence[Any]) -> tuple[int, np.ndarray]:
    """(index, posterior) from a child; raises if one failed or all died with results owed."""
    while True:
        try:
            index, result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not any(child.is_alive() for child in children):
                codes = [child.exitcode for child in children]
                raise RuntimeError(f"dense CRF workers exited (codes {codes}) before "
                                   "returning every result") from None
            continue
        if index < 0:
            raise result
        return index, result
