"""wsss: weakly-supervised semantic segmentation from image-level labels."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(checkpoint: Any, **kwargs: Any) -> Any:
    """A `wsss.predict.Predictor` for a trained checkpoint: `wsss.load(path).predict(image)`.

    Imported lazily so that `import wsss` stays light; see `wsss.predict.load` for arguments.
    """
    from wsss.predict import load as _load

    return _load(checkpoint, **kwargs)
