"""`SegmentationDataset`: any VOC-layout root (VOC 2012, VOC + SBD, converted COCO, custom data).

Layout (all folders relative to `root` unless given as absolute paths)::

    root/JPEGImages/<name>.<ext>               images (any of `wsss.io.IMAGE_EXTENSIONS`)
    root/SegmentationClass/<name>.png          optional masks (palette or 8-bit grayscale PNG)
    root/ImageSets/Segmentation/<split>.txt    split lists
    root/classes.txt                           optional class list, background first
    root/cls_labels.npy or root/labels.csv     optional image-level labels

Image-level labels come from one of three sources:
- masks: the foreground values 1..C present in the mask (1-Stage style);
- `cls_labels.npy`: the IRN/AMN/PSA/SEAM pickled dict `{name: float32[C] multi-hot}` with int32
  keys `YYYYNNNNNN` (IRN, AMN) or str keys `YYYY_NNNNNN` (PSA, SEAM); both styles are accepted;
- a CSV with lines `name,class1;class2` (optional header `name,labels`; an empty class field
  means no foreground), class names as in `class_names`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wsss import io as wio
from wsss.data.labels import IGNORE_INDEX, VOC_CLASSES, read_class_names
from wsss.data.transforms import image_to_tensor, mask_to_tensor, normalize_image

DEFAULT_IMAGE_DIR = "JPEGImages"
DEFAULT_MASK_DIR = "SegmentationClass"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
LABEL_SOURCES = ("auto", "masks", "cls_labels", "csv")
_CSV_HEADER_FIELDS = {"name", "image", "image_name", "filename", "file_name", "id", "image_id"}
_MAX_REPORTED_PROBLEMS = 20
_EXIF_ORIENTATION = 0x0112


@dataclass
class ValidationReport:
    """Result of `SegmentationDataset.validate`.

    Attributes:
        num_images: number of items checked.
        no_foreground: names whose label vector is all zero (background-only images).
    """

    num_images: int
    no_foreground: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Lists and label files
# --------------------------------------------------------------------------------------------


def name_from_entry(entry: str) -> str:
    """The image name of one list entry.

    `2007_000032`, `2007_000032.jpg` and `/JPEGImages/2007_000032.jpg` all give `2007_000032`
    (only a known image/mask extension is stripped, so names may contain dots).
    """
    token = entry.strip().replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = token.rpartition(".")
    if dot and stem and ("." + ext.lower()) in wio.IMAGE_EXTENSIONS:
        return stem
    return token


def read_text_file(path: Path, what: str) -> str:
    """A text file's content as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        DataError: the bytes are not UTF-8; names the file, the line and the byte.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise wio.DataError(
            f"{path} line {line}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x}; "
            "saved as Latin-1 or another encoding?): save it as UTF-8"
        ) from None


def _entry_name(line: str) -> str:
    """The name of one split-list line: the whole line (names may hold spaces), or the first of
    two paths in 1-Stage style `image_path mask_path` lines."""
    tokens = line.split()
    if len(tokens) == 2 and all(
        "." + t.rpartition(".")[2].lower() in wio.IMAGE_EXTENSIONS for t in tokens
    ):
        return name_from_entry(tokens[0])
    return name_from_entry(line)


def read_name_list(path: str | Path) -> list[str]:
    """Read a split list: one item per line, a name or 1-Stage style `image_path mask_path`.

    A line is one name (spaces included; `name_from_entry` strips folders and a known
    extension), except a line of two image/mask paths, whose first path names the item. Empty
    lines and lines starting with `#` are skipped. The file must be UTF-8 (a BOM is allowed).

    Raises:
        DataError: the file is missing, not UTF-8, holds no names, or lists a name twice.
    """
    path = Path(path)
    if not path.is_file():
        raise wio.DataError(f"split list not found: {path}")
    names = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(read_text_file(path, "split list").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = _entry_name(line)
        if name in seen:
            raise wio.DataError(f"{path} line {line_no}: image {name!r} is listed twice "
                                f"(first on line {seen[name]})")
        seen[name] = line_no
        names.append(name)
    if not names:
        raise wio.DataError(f"{path}: split list is empty")
    return names


def available_splits(root: str | Path) -> list[str]:
    """Names of the `root/ImageSets/Segmentation/*.txt` lists, sorted."""
    folder = Path(root) / SPLIT_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if not wio.is_temporary(p))


def resolve_split(root: str | Path, split: str | Path) -> Path:
    """The list file for `split`: `root/ImageSets/Segmentation/<split>.txt`, or `split` itself
    when it ends with `.txt` (as given if that exists, else relative to `root`).

    Raises:
        DataError: the list is missing; the message lists the available splits.
    """
    root = Path(root)
    split_str = str(split)
    if split_str.endswith(".txt"):
        candidate = Path(split_str)
        path = candidate if candidate.is_absolute() or candidate.is_file() else root / candidate
    else:
        path = root / SPLIT_DIR / f"{split_str}.txt"
    if not path.is_file():
        splits = available_splits(root)
        raise wio.DataError(
            f"split list not found: {path}; available splits in {root / SPLIT_DIR}: "
            + (", ".join(splits) if splits else "none")
        )
    return path


def _canonical_key(name: str) -> str:
    """Lookup key shared by str names `YYYY_NNNNNN` and IRN's int32 keys `YYYYNNNNNN`."""
    if "_" in name:
        digits = name.replace("_", "")
        if digits.isdigit():
            return str(int(digits))
    elif name.isdigit():
        return str(int(name))
    return name


def read_cls_labels(path: str | Path, num_classes: int) -> dict[str, np.ndarray]:
    """Read an IRN/PSA `cls_labels.npy` (pickled dict name → multi-hot float32 (C,)).

    Accepts int keys (`2007000032`, IRN/AMN) and str keys (`2007_000032`, PSA/SEAM). Returns a
    dict keyed by `_canonical_key` so both styles match names from split lists.

    Raises:
        DataError: unreadable file, not a dict, or vectors that are not of length `num_classes`.
    """
    path = Path(path)
    if not path.is_file():
        raise wio.DataError(f"labels file not found: {path}")
    try:
        raw = np.load(path, allow_pickle=True)
        table = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object else raw
    except Exception as exc:
        raise wio.DataError(f"{path}: unreadable cls_labels file ({exc})") from exc
    if not isinstance(table, dict):
        raise wio.DataError(
            f"{path}: expected a pickled dict {{name: multi-hot vector}}, "
            f"got {type(table).__name__}"
        )
    out: dict[str, np.ndarray] = {}
    for key, value in table.items():
        if isinstance(key, bytes):
            key = key.decode()
        key_str = str(int(key)) if isinstance(key, (int, np.integer)) else _canonical_key(str(key))
        vec = np.asarray(value, dtype=np.float32).reshape(-1)
        if vec.shape[0] != num_classes:
            raise wio.DataError(
                f"{path}: label vector for {key!r} has length {vec.shape[0]}, but the dataset has "
                f"{num_classes} foreground classes"
            )
        out[key_str] = vec
    return out


def read_csv_labels(path: str | Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read image-level labels from a CSV of `name,class1;class2` lines.

    A header line whose first field is e.g. `name` or `image` is skipped. An empty class field
    means no foreground. Class names must be in `class_names` (background first; naming the
    background class is allowed and ignored).

    Returns:
        dict canonical name → float32 multi-hot (C,) with C = len(class_names) - 1.

    Raises:
        DataError: missing or non-UTF-8 file, malformed line, unknown class name, repeated
            image name.
    """
    path = Path(path)
    if not path.is_file():
        raise wio.DataError(f"labels file not found: {path}")
    index = {name: i for i, name in enumerate(class_names)}
    num_classes = len(class_names) - 1
    out: dict[str, np.ndarray] = {}
    text = read_text_file(path, "label CSV")  # a BOM (Excel's "CSV UTF-8") is dropped
    for line_no, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row or not "".join(row).strip():
            continue
        if line_no == 1 and row[0].strip().lower() in _CSV_HEADER_FIELDS:
            continue
        if len(row) > 2:
            raise wio.DataError(
                f"{path} line {line_no}: expected 'name,class1;class2', got {len(row)} fields"
            )
        name = name_from_entry(row[0])
        if not name:
            raise wio.DataError(f"{path} line {line_no}: empty image name")
        vec = np.zeros(num_classes, dtype=np.float32)
        field_text = row[1] if len(row) > 1 else ""
        for cls in (c.strip() for c in field_text.split(";")):
            if not cls:
                continue
            if cls not in index:
                raise wio.DataError(
                    f"{path} line {line_no}: unknown class {cls!r} for image {name!r}; "
                    f"known classes: {', '.join(class_names[1:])}"
                )
            if index[cls] > 0:
                vec[index[cls] - 1] = 1.0
        key = _canonical_key(name)
        if key in out:
            raise wio.DataError(f"{path} line {line_no}: image {name!r} listed twice")
        out[key] = vec
    return out


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file (1 = upright, also when absent or malformed)."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1


def size_mismatch(mask_path: Path | None, mask_hw: tuple[int, ...], image_path: Path | None,
                  image_hw: tuple[int, ...]) -> str:
    """The message for a mask whose size differs from its image's; when the image carries an
    EXIF rotation (applied on load) and the mask fits the stored pixels, it says so."""
    message = (f"{mask_path}: mask is {mask_hw[1]}x{mask_hw[0]} but image {image_path} is "
               f"{image_hw[1]}x{image_hw[0]}")
    orientation = exif_orientation(image_path) if image_path is not None else 1
    if orientation in (5, 6, 7, 8) and tuple(mask_hw) == (image_hw[1], image_hw[0]):
        message += (f" after its EXIF orientation {orientation} (a 90-degree rotation, applied "
                    f"on load); the mask matches the stored {image_hw[0]}x{image_hw[1]} pixels: "
                    "rotate the mask the same way, or strip the orientation tag from the image")
    return message


def _progress(iterable, *, total: int, desc: str, enabled: bool):
    from wsss.logs import progress

    return progress(iterable, total=total, desc=desc, enabled=enabled)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class SegmentationDataset(Dataset):
    """Images, image-level labels and optional masks of a VOC-layout root.

    Args:
        root: dataset root.
        split: split name (`root/ImageSets/Segmentation/<split>.txt`) or a path ending in `.txt`.
        image_dir: image folder, or several searched in order (COCO: train2014, val2014);
            relative entries resolve against `root`.
        mask_dir: mask folder (relative to `root` or absolute), or None for no masks. When the
            default `SegmentationClass` does not exist the dataset simply has no masks; any other
            missing folder is an error.
        class_names: class list, background first; None → `root/classes.txt` if present, else
            the VOC classes.
        labels_from: "masks", "cls_labels", "csv" or "auto": csv when `labels_file` ends with
            `.csv`; cls_labels when `labels_file` is given or `root/cls_labels.npy` exists; csv
            when `root/labels.csv` exists (written by the COCO converter); else masks.
        labels_file: path of the `cls_labels.npy` or CSV (relative paths resolve against root).
        transform: paired transform `(image uint8 (H, W, 3), mask uint8 (H, W) | None) ->
            (image, mask)`; numpy outputs are converted to tensors (values unchanged). None →
            ImageNet normalisation and CHW conversion.
        max_image_side: reject images whose longer side is above this (None = no limit).

    Label files are parsed on first use (`label_vector`, `__getitem__`, `validate`), so their
    content errors surface there; a missing split list or label file fails here.

    Attributes:
        names: image names in split order.
        class_names: background first; `num_classes` = len(class_names) - 1 foreground classes.
        has_masks: whether masks are read.
        label_source: "masks", "cls_labels" or "csv".
        labels_file: the label file in use, or None for mask-derived labels.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str | Path,
        image_dir: str | Path | Sequence[str | Path] = DEFAULT_IMAGE_DIR,
        mask_dir: str | Path | None = DEFAULT_MASK_DIR,
        class_names: Sequence[str] | None = None,
        labels_from: str = "auto",
        labels_file: str | Path | None = None,
        transform: Callable | None = None,
        max_image_side: int | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise wio.DataError(f"dataset root not found: {self.root}")
        self.split_path = resolve_split(self.root, split)
        self.split = str(split)
        self.names: list[str] = read_name_list(self.split_path)

        if isinstance(image_dir, (str, Path)):
            image_dir = [image_dir]
        self.image_dirs: list[Path] = [self._under_root(d) for d in image_dir]
        if not self.image_dirs:
            raise ValueError("image_dir must name at least one folder")
        missing = [d for d in self.image_dirs if not d.is_dir()]
        if len(missing) == len(self.image_dirs):
            raise wio.DataError(
                "image folder not found: " + ", ".join(str(d) for d in missing)
            )

        self.mask_dir: Path | None = None
        if mask_dir is not None:
            folder = self._under_root(mask_dir)
            if folder.is_dir():
                self.mask_dir = folder
            elif str(mask_dir) != DEFAULT_MASK_DIR:
                raise wio.DataError(f"mask folder not found: {folder}")
        self.has_masks = self.mask_dir is not None

        self.class_names = self._resolve_class_names(class_names)
        self.num_classes = len(self.class_names) - 1

        if labels_from not in LABEL_SOURCES:
            raise ValueError(f"labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
        self.label_source, self.labels_file = self._resolve_label_source(labels_from, labels_file)

        self.transform = transform
        self.max_image_side = max_image_side
        self._image_paths: dict[int, Path] = {}
        self._mask_labels: dict[int, np.ndarray] = {}
        self._label_table: dict[str, np.ndarray] | None = None

    # ---- construction helpers ---------------------------------------------------------------

    def _under_root(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    def _resolve_class_names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            class_file = self.root / "classes.txt"
            if class_file.is_file():
                try:
                    return read_class_names(class_file)
                except (ValueError, OSError) as exc:
                    raise wio.DataError(str(exc)) from exc
            return list(VOC_CLASSES)
        names = [str(n) for n in class_names]
        if len(names) < 2:
            raise ValueError(f"class_names needs background plus at least one class, got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names repeats a name: {names}")
        return names

    def _resolve_label_source(
        self, labels_from: str, labels_file: str | Path | None
    ) -> tuple[str, Path | None]:
        path = self._under_root(labels_file) if labels_file is not None else None
        if labels_from == "auto":
            if path is not None:
                labels_from = "csv" if path.suffix.lower() == ".csv" else "cls_labels"
            elif (self.root / "cls_labels.npy").is_file():
                labels_from = "cls_labels"
            elif (self.root / "labels.csv").is_file():
                labels_from = "csv"
            else:
                labels_from = "masks"
        if labels_from == "masks":
            if not self.has_masks:
                raise wio.DataError(
                    f"{self.root}: no image-level labels: no mask folder "
                    f"({self.root / DEFAULT_MASK_DIR} not found or mask_dir=None) and no "
                    "cls_labels.npy / labels.csv / labels_file"
                )
            return "masks", None
        if path is None:
            path = self.root / ("cls_labels.npy" if labels_from == "cls_labels" else "labels.csv")
        if not path.is_file():
            raise wio.DataError(f"labels file not found: {path}")
        return labels_from, path

    # ---- paths and raw reads ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        """Path of image `index`: first folder in `image_dirs` holding `<name>.<ext>`.

        Raises:
            DataError: no such file in any image folder.
        """
        cached = self._image_paths.get(index)
        if cached is not None:
            return cached
        name = self.names[index]
        for folder in self.image_dirs:
            found = wio.find_image(folder, name)
            if found is not None:
                self._image_paths[index] = found
                return found
        exts = "|".join(e.lstrip(".") for e in wio.IMAGE_EXTENSIONS)
        raise wio.DataError(
            f"image not found: {self.image_dirs[0] / name}.jpg (looked for {name}.<{exts}> in "
            + ", ".join(str(d) for d in self.image_dirs)
            + f"; listed in {self.split_path})"
        )

    def mask_path(self, index: int) -> Path | None:
        """`mask_dir/<name>.png`, or None when the dataset has no masks."""
        if self.mask_dir is None:
            return None
        return self.mask_dir / f"{self.names[index]}.png"

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 (H, W, 3), EXIF orientation applied. Raises DataError for bad files."""
        return wio.load_image(self.image_path(index), max_side=self.max_image_side)

    def load_mask(self, index: int) -> np.ndarray | None:
        """Mask uint8 (H, W) (0 = background, 1..C, 255 = ignore), or None without masks."""
        path = self.mask_path(index)
        if path is None:
            return None
        return wio.load_mask(path)

    # ---- labels -----------------------------------------------------------------------------

    def _check_mask_values(self, mask: np.ndarray, path: Path | None) -> np.ndarray:
        """Foreground multi-hot (C,) of a mask; DataError for values outside {0..C, 255}."""
        counts = np.bincount(mask.reshape(-1), minlength=256)
        present = np.flatnonzero(counts)
        bad = present[(present > self.num_classes) & (present != IGNORE_INDEX)]
        if bad.size:
            raise wio.DataError(
                f"{path}: mask values {bad.tolist()} outside 0..{self.num_classes} and "
                f"{IGNORE_INDEX} (dataset has {self.num_classes} foreground classes)"
            )
        vec = np.zeros(self.num_classes, dtype=np.float32)
        fg = present[(present >= 1) & (present <= self.num_classes)]
        vec[fg - 1] = 1.0
        return vec

    def _labels_from_mask(self, index: int, mask: np.ndarray | None = None) -> np.ndarray:
        cached = self._mask_labels.get(index)
        if cached is None:
            if mask is None:
                mask = self.load_mask(index)
            cached = self._check_mask_values(mask, self.mask_path(index))
            self._mask_labels[index] = cached
        return cached

    def _table(self) -> dict[str, np.ndarray]:
        if self._label_table is None:
            if self.label_source == "cls_labels":
                self._label_table = read_cls_labels(self.labels_file, self.num_classes)
            else:
                self._label_table = read_csv_labels(self.labels_file, self.class_names)
        return self._label_table

    def label_vector(self, index: int) -> np.ndarray:
        """Image-level labels of item `index`: float32 multi-hot (C,), index = class id − 1.

        Raises:
            DataError: the image is absent from the label file, or its mask is invalid.
        """
        if self.label_source == "masks":
            return self._labels_from_mask(index).copy()
        name = self.names[index]
        vec = self._table().get(_canonical_key(name))
        if vec is None:
            raise wio.DataError(
                f"{self.labels_file}: no image-level labels for {name!r} "
                f"(listed in {self.split_path})"
            )
        return vec.copy()

    # ---- samples ----------------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict:
        """One sample.

        Returns:
            dict with `image` float32 tensor (3, H, W), `labels` float32 tensor (C,), `mask`
            int64 tensor (H, W) (255 = ignore; only when the dataset has masks), `name` str,
            `index` int. H, W are those after the transform.
        """
        if index < 0:
            index += len(self)
        image = self.load_image(index)
        mask = self.load_mask(index)
        if mask is not None and mask.shape != image.shape[:2]:
            raise wio.DataError(size_mismatch(self.mask_path(index), mask.shape,
                                              self.image_path(index), image.shape[:2]))
        if self.label_source == "masks":
            labels = self._labels_from_mask(index, mask).copy()
        else:
            labels = self.label_vector(index)
        if self.transform is None:
            image_t = normalize_image(image)
            mask_t = mask_to_tensor(mask) if mask is not None else None
        else:
            image_t, mask_t = self.transform(image, mask)
            if isinstance(image_t, np.ndarray):
                image_t = image_to_tensor(image_t)
            if isinstance(mask_t, np.ndarray):
                mask_t = mask_to_tensor(mask_t)
        sample = {
            "image": image_t,
            "labels": torch.from_numpy(labels),
            "name": self.names[index],
            "index": index,
        }
        if self.has_masks:
            sample["mask"] = mask_t
        return sample

    # ---- validation -------------------------------------------------------------------------

    def _image_size(self, path: Path) -> tuple[int, int]:
        """(height, width) after EXIF orientation; decodes the whole file to catch truncation."""
        if not path.is_file():
            raise wio.DataError(f"image not found: {path}")
        if path.stat().st_size == 0:
            raise wio.DataError(f"{path}: image file is empty (0 bytes)")
        try:
            with Image.open(path) as image:
                width, height = image.size
                try:
                    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
                except (OSError, ValueError, SyntaxError):  # malformed EXIF: keep stored size
                    orientation = 1
                if orientation in (5, 6, 7, 8):
                    width, height = height, width
                if self.max_image_side is not None and max(width, height) > self.max_image_side:
                    raise wio.DataError(
                        f"{path}: image is {width}x{height}, above the maximum side "
                        f"{self.max_image_side} (data.max_image_side)"
                    )
                image.load()
        except wio.DataError:
            raise
        except Exception as exc:
            raise wio.DataError(f"{path}: unreadable or truncated image ({exc})") from exc
        return height, width

    def _check_item(self, index: int, check_masks: bool) -> tuple[list[str], bool | None]:
        """(problems, has_foreground) for one item; has_foreground None when labels failed."""
        problems: list[str] = []
        size = None
        try:
            size = self._image_size(self.image_path(index))
        except wio.DataError as exc:
            problems.append(str(exc))
        mask_ok = True
        if self.has_masks and (check_masks or self.label_source == "masks"):
            path = self.mask_path(index)
            try:
                mask = wio.load_mask(path)
                if size is not None and mask.shape != size:
                    raise wio.DataError(size_mismatch(path, mask.shape,
                                                      self._image_paths.get(index), size))
                vec = self._check_mask_values(mask, path)
                self._mask_labels[index] = vec
            except wio.DataError as exc:
                problems.append(str(exc))
                mask_ok = False
        has_fg = None
        if self.label_source != "masks" or mask_ok:
            try:
                has_fg = bool(self.label_vector(index).any())
            except wio.DataError as exc:
                problems.append(str(exc))
        return problems, has_fg

    def validate(self, *, check_masks: bool = True, progress: bool = False) -> ValidationReport:
        """Check every item before work starts.

        Detects: missing, empty, truncated or undecodable images (each is fully decoded); images
        above `max_image_side`; missing masks, RGB or 16-bit masks, masks whose size differs
        from the image, mask values outside {0..C, 255}; unknown class names in a CSV; names
        absent from the label file. Files are checked in a thread pool.

        Args:
            check_masks: also check masks (always done when labels come from masks).
            progress: show progress (a bar on a terminal, else log lines; `wsss.logs`).

        Returns:
            `ValidationReport` with the number of images and the background-only names.

        Raises:
            DataError: listing every problem found (first 20 shown), each naming its file.
        """
        if self.label_source != "masks":
            self._table()  # file-level errors (unknown class, bad format) first
        workers = max(1, min(16, (os.cpu_count() or 1) * 2))
        indices = range(len(self))
        problems: list[str] = []
        no_foreground: list[str] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda i: self._check_item(i, check_masks), indices)
            results = _progress(
                results, total=len(self), desc=f"validate {self.split}", enabled=progress
            )
            for index, (item_problems, has_fg) in enumerate(results):
                problems.extend(item_problems)
                if has_fg is False:
                    no_foreground.append(self.names[index])
        if problems:
            shown = problems[:_MAX_REPORTED_PROBLEMS]
            more = len(problems) - len(shown)
            raise wio.DataError(
                f"{len(problems)} problem(s) in split {self.split_path} ({len(self)} images):\n"
                + "\n".join(f"  - {p}" for p in shown)
                + (f"\n  ... and {more} more" if more else "")
            )
        return ValidationReport(num_images=len(self), no_foreground=no_foreground)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset(root={str(self.root)!r}, split={self.split!r}, "
            f"num_images={len(self)}, num_classes={self.num_classes}, "
            f"labels={self.label_source}, masks={self.has_masks})"
        )


__all__ = [
    "DatasetView",
    "SegmentationDataset",
    "ValidationReport",
    "available_splits",
    "name_from_entry",
    "read_cls_labels",
    "read_csv_labels",
    "read_name_list",
    "resolve_split",
]


class DatasetView(Dataset):
    """A dataset over another dataset's images (same names, classes and length) whose items
    add per-image files of a pipeline stage (seeds, affinity scores) under a paired transform.

    Subclasses implement `__getitem__`; `dataset`'s own transform is not used.
    """

    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform
        self.names = dataset.names
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)
