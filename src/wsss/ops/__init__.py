"""Pure tensor/array refinement ops: CAM post-processing and dense CRF.

`crf` imports its pydensecrf2 backend lazily, so importing this package never needs it.
"""

from wsss.ops.cam import (
    cams_to_mask,
    cams_to_probs,
    merge_multiscale,
    normalize_cams,
    seeds_from_cams,
    strided_size,
    strided_up_size,
)
from wsss.ops.crf import CRF_PRESETS, dense_crf, dense_crf_batch, dense_crf_labels

__all__ = [
    "CRF_PRESETS",
    "cams_to_mask",
    "cams_to_probs",
    "dense_crf",
    "dense_crf_batch",
    "dense_crf_labels",
    "merge_multiscale",
    "normalize_cams",
    "seeds_from_cams",
    "strided_size",
    "strided_up_size",
]
