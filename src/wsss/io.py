"""On-disk formats (palette PNG masks, `.npz` CAMs, RGB images) with atomic writes.

Every writer goes through `atomic_write`: the data lands in a temporary file in the same folder
and is moved into place with `os.replace`, so no partial file ever carries an output name. The
file gets the mode a plain `open()` would give (0666 less the umask), not the temporary file's
private 0600.
"""

from __future__ import annotations

import contextlib
import io as _io
import multiprocessing
import os
import signal
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from wsss.data.labels import color_palette

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_TMP_MARK = ".tmp-"


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[_io.IOBase]:
    """Open a temporary sibling of `path` for writing and move it onto `path` on success.

    On any exception the temporary file is removed and `path` is left untouched.

    Raises:
        OSError: the folder cannot be created or written, or the disk is full; re-raised with
            the same errno (so `PermissionError` stays one) and `filename` set to `path`, the
            output name, never the temporary one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_MARK + path.name + ".", dir=path.parent)
    except OSError as exc:
        _raise_named(exc, path)
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _test_kill_hook()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            _raise_named(exc, path)
        raise


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask: from /proc/self/status on Linux (no race), else by setting and
    restoring it under a lock."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _raise_named(exc: OSError, path: Path) -> None:
    """Re-raise an error of the temporary file (a write to its descriptor names no file) as an
    OSError of the same errno (and subclass) naming `path`; an error naming another file (the
    folder, or a file the caller's block reads) is re-raised unchanged."""
    if exc.errno is None or not (exc.filename is None or is_temporary(exc.filename)):
        raise exc
    raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc


# Test hook, read only by tests/pipeline/test_kill_resume.py: with WSSS_TEST_KILL_AT_WRITE=N in
# the environment, the main process SIGKILLs itself during its N-th atomic write, when the
# temporary file is complete but not yet moved into place. Worker processes never fire it.
KILL_AT_WRITE_ENV = "WSSS_TEST_KILL_AT_WRITE"
_writes_done = 0


def _test_kill_hook() -> None:
    global _writes_done
    at = os.environ.get(KILL_AT_WRITE_ENV)
    if not at or multiprocessing.parent_process() is not None:
        return
    _writes_done += 1
    if _writes_done == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


def is_temporary(path: str | Path) -> bool:
    """True for the temporary files `atomic_write` leaves behind when a process is killed."""
    return Path(path).name.startswith(_TMP_MARK)


def remove_temporaries(folder: str | Path) -> int:
    """Delete leftover temporary files (from killed writers) in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for p in folder.iterdir():
        if is_temporary(p):
            p.unlink(missing_ok=True)
            count += 1
    return count


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a class-index mask as a palette PNG.

    Args:
        mask: (H, W) integer array with values in 0..254 or 255 (ignore).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask for {path} must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask for {path} has values outside 0..255")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(color_palette().reshape(-1).tolist())
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def load_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask (palette or 8-bit grayscale PNG) as (H, W) uint8.

    Raises:
        DataError: the file is missing, unreadable, or not a single-channel 8-bit index image
            (an RGB colour mask, a 16-bit PNG).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise DataError(
                    f"{path}: mask must be an 8-bit index image (palette 'P' or grayscale 'L'), "
                    f"got PIL mode {image.mode!r}"
                    + (" (a colour-coded RGB mask?)" if image.mode in ("RGB", "RGBA") else "")
                )
            return np.array(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise DataError(f"{path}: unreadable mask ({exc})") from exc


def load_image(path: str | Path, *, max_side: int | None = None) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), applying its EXIF orientation.

    Grayscale, palette and RGBA images are converted to RGB (alpha dropped).

    Raises:
        DataError: missing, zero-byte, truncated or undecodable file, or a side above `max_side`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            if max_side is not None and max(image.size) > max_side:
                raise DataError(
                    f"{path}: image is {image.size[0]}x{image.size[1]}, above the maximum side "
                    f"{max_side} (data.max_image_side)"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            return pil_to_rgb(image, path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc


_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def pil_to_rgb(image: Image.Image, source: str | Path = "image") -> np.ndarray:
    """A decoded PIL image as RGB uint8 (H, W, 3).

    8-bit modes (grayscale, palette, RGBA, CMYK, ...) go through `convert("RGB")`. PIL's own
    conversion clips 16-bit grayscale (mode `I;16*`) at 255, which turns a photo all white, so
    16-bit values are scaled to 8 bits here: round(v / 257), 65535 → 255, the same for every
    image (no per-image stretch, so images stay comparable). 32-bit integer images (`I`) are
    read as 8-bit when their values fit 0..255 and as 16-bit when they fit 0..65535.

    Raises:
        DataError: a floating-point (`F`) image, or integer values outside 0..65535.
    """
    if image.mode in _16BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise DataError(f"{source}: {image.mode} image with values {low}..{high}, outside "
                            "0..65535; convert it to 8-bit RGB")
        if image.mode in _16BIT_MODES or high > 255:
            values = (values * 255 + 32767) // 65535  # round(v / 257)
        gray = values.astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise DataError(f"{source}: floating-point image (PIL mode 'F') has no defined 8-bit "
                        "scale; convert it to 8-bit RGB")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


CAM_DTYPES = ("float32", "float16")


def save_cams(path: str | Path, cams: np.ndarray, keys: np.ndarray, *, dtype: str = "float32",
              **extra: np.ndarray) -> None:
    """Write a CAM file: `.npz` with `cams` (K, H, W) and `keys` int64 (K,).

    `keys` are class indices in the mask convention (0 = background, c = foreground class c).
    Extra named arrays (e.g. a stride-4 `cams_strided`) are stored beside them.

    Args:
        dtype: "float32" (default; the official CAM files are float32) or "float16" (half the
            disk, but about 20 seed pixels per VOC image flip after the CRF, issue 20); float
            extras are stored in it too (`pipeline.cam_dtype`).
    """
    if dtype not in CAM_DTYPES:
        raise ValueError(f"CAM dtype must be one of {CAM_DTYPES} (pipeline.cam_dtype), "
                         f"got {dtype!r}")
    cams = np.asarray(cams)
    keys = np.asarray(keys, dtype=np.int64)
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0]:
        raise ValueError(f"CAMs for {path}: shape {cams.shape} does not match keys {keys.shape}")
    extra = {k: np.asarray(v) for k, v in extra.items()}
    extra = {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in extra.items()}
    arrays = {"cams": cams.astype(dtype), "keys": keys, **extra}
    write_bytes(path, npz_bytes(arrays))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed `.npz` whose bytes depend only on the arrays.

    `np.savez_compressed` stamps each member with the current time; here every member carries
    a fixed date, so the same arrays always give the same file (byte-identical resumes).
    """
    buffer = _io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = _io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def load_cams(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a CAM file written by `save_cams`.

    Returns:
        cams float32 (K, H, W) and keys int64 (K,).
    """
    path = Path(path)
    try:
        with np.load(path) as data:
            return data["cams"].astype(np.float32), data["keys"].astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"CAM file not found: {path}") from None
    except Exception as exc:
        raise DataError(f"{path}: unreadable CAM file ({exc})") from exc


def find_image(folder: Path, name: str) -> Path | None:
    """The image file `folder/name.<ext>` for the first known extension that exists."""
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    return None
