"""Run configuration: a dataclass tree, YAML presets, strict merge, `--set` overrides, dump.

A run config has the sections `data`, `model`, `train`, `method`, `eval`, `pipeline` (and, for
methods that add stages, their own keys inside `method`). Presets are flat YAML files that may
name at most one `base:` preset. Unknown keys and wrong types fail with the full dotted key and
the closest valid key. The schema of `method` is the config dataclass of the method it names.
The `segnet` section configures the final segmentation network that every method can append.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """An invalid config: the message names the dotted key (and a close valid one)."""


# --------------------------------------------------------------------------------------------
# Value checks: each config class lists its rules in a `checks` class variable (field name →
# `Check`); `validate` walks the tree and applies them, plus two naming rules (STYLE §15) that
# hold for every section, methods included: `*_threshold` is a score in [0, 1] and `*scales` a
# non-empty list of positive factors.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A rule for one config value: `ok(value)` is True when valid; `valid` says what is (a
    text, or a callable giving it, for ranges read from a registry when a message needs them)."""

    ok: Callable[[Any], bool]
    valid: str | Callable[[], str]

    def describe(self) -> str:
        return self.valid() if callable(self.valid) else self.valid


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: float) -> Check:
    return Check(lambda v: _number(v) and v >= low, f">= {low}")


def above(low: float) -> Check:
    return Check(lambda v: _number(v) and v > low, f"> {low}")


def between(low: float, high: float, *, high_open: bool = False) -> Check:
    if high_open:
        return Check(lambda v: _number(v) and low <= v < high, f"in [{low}, {high})")
    return Check(lambda v: _number(v) and low <= v <= high, f"in [{low}, {high}]")


def one_of(choices: Callable[[], list[Any]] | tuple[Any, ...]) -> Check:
    """A value from a fixed tuple, or from a callable (a registry, imported when checked)."""
    def names() -> list[Any]:
        return list(choices() if callable(choices) else choices)

    return Check(lambda v: v in names(), lambda: "one of " + ", ".join(map(str, names())))


def optional(check: Check) -> Check:
    return Check(lambda v: v is None or check.ok(v), lambda: f"null or {check.describe()}")


def pair(check: Check) -> Check:
    """Two values [low, high], each passing `check`, low <= high."""
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                 and all(check.ok(x) for x in v) and v[0] <= v[1],
                 lambda: f"[low, high] with low <= high, each {check.describe()}")


def any_list(check: Check) -> Check:
    return Check(lambda v: isinstance(v, (list, tuple)) and all(check.ok(x) for x in v),
                 lambda: f"a list (empty allowed), each {check.describe()}")


def nonempty_list(check: Check) -> Check:
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                 and all(check.ok(x) for x in v),
                 lambda: f"a non-empty list, each {check.describe()}")


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _backbones() -> list[str]:
    from wsss.models.backbones import BACKBONES

    return BACKBONES.names()


def _datasets() -> list[str]:
    from wsss.data import DATASETS

    return DATASETS.names()


def _segnet_archs() -> list[str]:
    from wsss.models.segnet import ARCHS

    return sorted(ARCHS)


def _crf_presets() -> list[str]:
    from wsss.predict import crf_presets

    return sorted(crf_presets())


# Naming rules (suffix → check) applied to every field of every section.
SUFFIX_CHECKS: dict[str, Check] = {
    "_threshold": between(0.0, 1.0),
    "scales": nonempty_list(above(0)),
}


@dataclass
class SyntheticConfig:
    """Parameters of the built-in synthetic data (used when the root holds no data yet)."""

    num_train: int = 1000
    num_val: int = 200
    image_size: int = 160
    seed: int = 0

    checks: ClassVar[dict[str, Check]] = {
        "num_train": at_least(1), "num_val": at_least(1), "image_size": at_least(1),
    }


@dataclass
class DataConfig:
    """Where the data is and which split each stage reads."""

    dataset: str = "synthetic"  # synthetic | voc | coco | custom
    root: str = "data/synthetic"
    train_split: str = "train"  # the classifier trains here
    infer_split: str = "train"  # CAMs, seeds and pseudo-masks are made here
    eval_split: str = "train"  # pseudo-mask quality is measured here (VOC protocol: train)
    val_split: str = "val"  # final segmentation is measured here
    image_dir: list[str] = field(default_factory=lambda: ["JPEGImages"])
    mask_dir: str | None = "SegmentationClass"
    labels_from: str = "auto"  # auto | masks | cls_labels | csv
    labels_file: str | None = None
    max_image_side: int | None = 4096
    num_workers: int = 0  # DataLoader workers
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    checks: ClassVar[dict[str, Check]] = {
        "dataset": one_of(_datasets), "labels_from": one_of(("auto", "masks", "cls_labels", "csv")),
        "image_dir": nonempty_list(Check(lambda v: bool(v), "a folder name")),
        "max_image_side": optional(at_least(1)), "num_workers": at_least(0),
    }


@dataclass
class ModelConfig:
    """The CAM network's backbone."""

    backbone: str = "resnet50"
    output_stride: int = 16
    pretrained: str = "none"  # none | imagenet | path to a state dict
    frozen_bn: bool = True  # IRN's FixedBatchNorm; set false when training from scratch

    checks: ClassVar[dict[str, Check]] = {
        "backbone": one_of(_backbones), "output_stride": one_of((8, 16, 32)),
    }


@dataclass
class TrainConfig:
    """Classifier training recipe (defaults: IRN's CAM recipe, irn.md §4)."""

    epochs: int = 5
    batch_size: int = 16  # total batch over all ranks
    crop_size: int = 512
    resize_long: list[int] | None = field(default_factory=lambda: [320, 640])
    # irn: round(side · target / long) as IRN's pil_rescale; psa: the long side = target, the
    # short round(short · target / long) as PSA / SEAM / ICAM (1 px apart in ~0.02 % of draws)
    resize_long_rounding: str = "irn"
    scale_range: list[float] | None = None
    flip: bool = True
    color_jitter: list[float] | None = None
    # 1-Stage's crop: RandomResizedCrop(crop_size, scale, ratio), no padding (replaces
    # resize_long / scale_range, which must then be null); None: the IRN pipeline above.
    resized_crop_scale: list[float] | None = None
    resized_crop_ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.1
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    # IRN's PolyOptimizer passes weight decay into SGD's momentum slot (effective momentum 1e-4,
    # PSA's 5e-4). wsss passes momentum explicitly: the VOC / COCO presets set the official
    # effective values, 0.0 is the momentum-free SGD the papers describe.
    momentum: float = 0.0
    poly_power: float = 0.9
    grad_clip: float | None = None
    amp: bool = False
    log_every: int = 20
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: end of epoch only)
    # Model selection: after each of these numbers of completed epochs, the mean training loss
    # (model in eval mode, no gradient) over `data.val_split` with the training augmentation;
    # the weights with the lowest one are kept as model.pt (1-Stage `train.py`). Empty: the
    # last epoch's weights.
    select_epochs: list[int] = field(default_factory=list)

    checks: ClassVar[dict[str, Check]] = {
        "epochs": at_least(1), "batch_size": at_least(1), "crop_size": at_least(1),
        "resize_long": optional(pair(at_least(1))), "scale_range": optional(pair(above(0))),
        "resize_long_rounding": one_of(("irn", "psa")),
        "color_jitter": optional(Check(lambda v: len(v) == 4 and all(x >= 0 for x in v),
                                       "[brightness, contrast, saturation, hue], each >= 0")),
        "optimizer": one_of(("sgd", "adam")), "lr": above(0), "head_lr_mult": at_least(0),
        "weight_decay": at_least(0), "momentum": between(0, 1, high_open=True),
        "poly_power": at_least(0), "grad_clip": optional(above(0)), "log_every": at_least(1),
        "checkpoint_every": at_least(0),
    }


@dataclass
class EvalConfig:
    """Evaluation settings shared by every stage that scores its output."""

    sweep_start: float = 0.0
    sweep_stop: float = 1.0
    sweep_step: float = 0.01
    absent: str = "nan"  # absent classes: nan (excluded, chainercv) | zero (SEAM-style)
    contour: bool = True
    plots: bool = True

    checks: ClassVar[dict[str, Check]] = {
        "sweep_start": between(0, 1), "sweep_stop": between(0, 1),
        "sweep_step": Check(lambda v: _number(v) and 0 < v <= 1, "in (0, 1]"),
        "absent": one_of(("nan", "zero")),
    }


@dataclass
class SegnetConfig:
    """Final segmentation network trained on a method's pseudo-masks (defaults: DeepLab-v2 in
    the AdvCAM/AMN recipe, amn.md §4; test settings evaluation.md §4-§5)."""

    enabled: bool = False  # off by default so the core demo stays short
    pseudo_mask_stage: str = ""  # "" = the method's `pseudo_mask_stage`
    arch: str = "deeplabv2"  # deeplabv2 | deeplabv1 | deeplabv3plus
    backbone: str = "resnet101"
    output_stride: int = 8
    pretrained: str = "none"  # none | imagenet | path to a state dict
    frozen_bn: bool = True  # backbone BatchNorm statistics fixed (batch 10 is too small)
    # Backbone BatchNorm weights and biases not trained: deeplab-pytorch optimises only the
    # backbone's convolutions (`main.py get_params`).
    frozen_bn_affine: bool = True
    iterations: int = 30000
    batch_size: int = 10
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0
    # Biases of the head's convolutions (the ASPP's): deeplab-pytorch 20× lr, no weight decay
    # (Caffe lr_mult / decay_mult); head_lr_mult and null keep them with the head's weights.
    head_bias_lr_mult: float = 20.0
    head_bias_weight_decay: float | None = 0.0  # null: segnet.weight_decay
    poly_power: float = 0.9
    weight_decay: float = 5e-4
    momentum: float = 0.9
    crop_size: int = 321
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    balanced_ce: bool = False  # AMN: mean of the background and foreground pixel losses
    # DeepLab-v2 multi-scale training (deeplab-pytorch MSC, e.g. [0.5, 0.75]): the loss sums
    # the cross-entropies of the logits of the crop, of each rescaled crop and of their
    # pixel-wise max, each against the labels resized (nearest) to the logits; [] = one loss on
    # the logits upsampled to the crop.
    msc_train_scales: list[float] = field(default_factory=list)
    amp: bool = False
    checkpoint_every: int = 1000  # steps between resumable checkpoints
    test_scales: list[float] = field(default_factory=lambda: [1.0])
    test_flip: bool = False
    # How the test views merge: "mean" of the logits upsampled to the image, or "max" of the
    # logits at the network's stride over the unscaled image (scale 1.0 must be listed) and
    # the bilinearly rescaled ones, then upsampled (deeplab-pytorch MSC, `msc.py:42`).
    test_merge: str = "mean"
    crf: bool = True  # report masks with and without the dense CRF
    crf_preset: str = "deeplabv2"  # a name in `wsss.predict.crf_presets()`

    checks: ClassVar[dict[str, Check]] = {
        "arch": one_of(_segnet_archs), "backbone": one_of(_backbones),
        "output_stride": one_of((8, 16, 32)), "iterations": at_least(1),
        "batch_size": at_least(1), "lr": above(0), "head_lr_mult": at_least(0),
        "poly_power": at_least(0), "weight_decay": at_least(0),
        "momentum": between(0, 1, high_open=True), "crop_size": at_least(1),
        "scale_range": pair(above(0)), "checkpoint_every": at_least(0),
        "crf_preset": one_of(_crf_presets),
        "msc_train_scales": any_list(above(0)),  # [] = the single-scale loss
    }


@dataclass
class PipelineConfig:
    """Run-level settings."""

    name: str = "run"
    workdir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    workers: int = 1  # process pool for CPU-bound per-image work (dense CRF)
    # Dtype of stored CAM files (`wsss.io.save_cams`): float32 as the official code; float16
    # halves the disk but flips about 20 seed pixels per VOC image after the CRF.
    cam_dtype: str = "float32"  # float32 | float16
    # Trainings also write last.pt when this many seconds have passed since the last one
    # (0: only by train.checkpoint_every / segnet.checkpoint_every steps and, for the CAM
    # network, each epoch's end). Outside every fingerprint: a resume is exact either way.
    checkpoint_seconds: float = 1800.0
    # torch.compile the BatchNorm-folded inference copy of CAM networks (inductor, dynamic
    # shapes: one compile of 10-30 s on a CPU; identical maps; 1.0-1.2x on the 2-core CPU of
    # docs/performance.md). Needs a C++ compiler on CPU. Outside every fingerprint.
    compile: bool = False
    # CPU CAM inference runs the wide 3x3 convolutions as Winograd F(4x4, 3x3) where the map
    # has enough 4x4 tiles: 4x fewer multiply-adds, maps equal up to ~1e-5 (direct: ~1e-6).
    # false = oneDNN's direct convolution everywhere. Outside every fingerprint
    # (docs/performance.md).
    winograd: bool = True
    # CPU CAM inference runs the image and its mirror as two concurrent single-view streams,
    # each with half the intra-op threads, for views of >= 400k pixels (false: one batch of
    # two always). Outside every fingerprint.
    view_streams: bool = True
    stages: list[str] | None = None  # None: all stages of the method
    # A synthetic data set may be generated at data.root when it holds no data. null (the
    # default) becomes true when data.root is the one a preset (or the default config) names,
    # false when it was given on the command line (a mistyped root must not train on generated
    # data). Outside every fingerprint.
    generate_data: bool | None = None
    # Logging and reports live here, outside every stage fingerprint, so switching them never
    # reruns a stage.
    tensorboard: bool = True  # event files under <run>/tensorboard/<stage> (rank 0)
    tensorboard_every: int = 10  # training steps between loss and lr points (0: epoch means only)
    tensorboard_image_every: int = 100  # training steps between input-image grids (0: none)
    tensorboard_images: int = 8  # images per eval stage: input, CAM / mask, ground truth
    report: bool = True  # `wsss run` writes <run>/report/index.html at the end

    checks: ClassVar[dict[str, Check]] = {
        "name": Check(lambda v: bool(v) and "/" not in v and v not in (".", ".."),
                      "a folder name (no '/')"),
        "device": Check(lambda v: bool(DEVICE_PATTERN.match(v)), "auto, cpu, cuda or cuda:N"),
        "workers": at_least(1), "checkpoint_seconds": at_least(0),
        "tensorboard_every": at_least(0),
        "tensorboard_image_every": at_least(0), "tensorboard_images": at_least(0),
    }


@dataclass
class RunConfig:
    """The whole run; `method` is the named method's own config dataclass."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    segnet: SegnetConfig = field(default_factory=SegnetConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


# Config keys holding file-system paths: made absolute once, when the config is loaded.
PATH_KEYS = ("data.root", "pipeline.workdir", "model.pretrained", "segnet.pretrained")
# Values of the `pretrained` keys that are not paths.
_NOT_PATHS = {"", "none", "imagenet", "synthetic"}


def presets_dir() -> Path:
    """The folder of the shipped presets (`configs/` of the repository, also installed as
    package data under `wsss/configs`)."""
    here = Path(__file__).resolve().parent
    shipped = here / "configs"
    return shipped if shipped.is_dir() else here.parents[1] / "configs"


def list_presets() -> list[str]:
    """Names of the shipped presets, e.g. "synthetic/demo" (what `wsss run NAME` accepts)."""
    root = presets_dir()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("**/*.yaml"))


def find_preset(name: str | Path) -> Path:
    """A preset file: `name` itself when it is a file, else the shipped preset of that name
    ("synthetic/demo", with or without ".yaml", also "configs/synthetic/demo.yaml").

    Raises:
        ConfigError: neither exists; the message lists close preset names.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    key = path.as_posix().removesuffix(".yaml")
    key = key.removeprefix("configs/")
    candidate = presets_dir() / f"{key}.yaml"
    if candidate.is_file():
        return candidate
    names = list_presets()
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; presets: {', '.join(names)}" if names else "")
    raise ConfigError(f"config file not found: {name} (neither a file nor a preset name){hint}")


def preset_anchor(path: Path) -> Path:
    """The folder that relative paths written in the preset `path` resolve against.

    A preset inside a `configs/` folder resolves against that folder's parent (the repository
    root for the shipped presets, so `wsss run synthetic/demo` finds and generates its data at
    the same place from any directory); other presets against their own folder. Presets
    installed inside the package (no repository) resolve against the current directory.
    """
    path = path.resolve()
    for parent in path.parents:
        if parent.name == "configs":
            anchor = parent.parent
            return Path.cwd() if anchor == Path(__file__).resolve().parent else anchor
    return path.parent


def _absolute(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or value.strip().lower() in _NOT_PATHS:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _absolute_paths(data: dict[str, Any], base: Path) -> None:
    """Make the `PATH_KEYS` present in the nested dict `data` absolute against `base`."""
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        node = data.get(section)
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _absolute(node[leaf], base)


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), base_dir: Path | None = None
               ) -> dict[str, Any]:
    """Read a preset and its (single) base, returning one merged plain dict with its paths
    absolute (against `base_dir`, default each file's `preset_anchor`)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: base presets form a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    _absolute_paths(data, base_dir or preset_anchor(path))
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' names one preset file")
    merged = _read_yaml((path.parent / base), seen + (path,), base_dir)
    return _deep_update(merged, data)


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            dotted = f"{prefix}{key}"
            keys.append(dotted)
            keys.extend(_valid_keys(node._get_node(key), dotted + "."))
    return keys


def _explain(exc: OmegaConfBaseException, schema: DictConfig) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    valid = _valid_keys(schema)
    message = str(exc).split("\n")[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"unknown config key '{key}'{hint}")
    if key:
        return ConfigError(f"invalid value for config key '{key}': {message}")
    return ConfigError(message)


def _method_schema(name: str) -> Any:
    from wsss.methods import METHODS  # methods register themselves on import

    try:
        method_cls = METHODS.get(name)
    except KeyError as exc:
        raise ConfigError(f"config key 'method.name': {exc.args[0]}") from None
    return method_cls.config_class()


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
    base_dir: str | Path | None = None,
) -> RunConfig:
    """Build a `RunConfig` from defaults, an optional YAML preset and `key=value` overrides.

    Paths (`PATH_KEYS`) come out absolute: relative ones written in a preset resolve against
    its `preset_anchor` (or `base_dir` when given), those of the overrides and the defaults
    against the current directory. `pipeline.generate_data` left null becomes false when the
    overrides set `data.root`, else true.

    Raises:
        ConfigError: unknown key, wrong type or unreadable preset; the message names the key.
    """
    raw = _read_yaml(Path(path), base_dir=Path(base_dir) if base_dir else None) \
        if path is not None else {}
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid override in {list(overrides)}: {exc}") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
    method_name = OmegaConf.select(dotlist, "method.name") or (raw.get("method") or {}).get(
        "name", "cam_baseline"
    )
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(schema, False)
    schema.method = OmegaConf.structured(_method_schema(str(method_name)))
    OmegaConf.set_struct(schema, True)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(raw), dotlist)
    except OmegaConfBaseException as exc:
        raise _explain(exc, schema) from None
    cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if cfg.pipeline.cam_dtype not in ("float32", "float16"):
        raise ConfigError("invalid value for config key 'pipeline.cam_dtype': "
                          f"{cfg.pipeline.cam_dtype!r} (float32 | float16)")
    cwd = Path.cwd()
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        node = getattr(cfg, section)
        setattr(node, leaf, _absolute(getattr(node, leaf), cwd))
    if cfg.pipeline.generate_data is None:
        given = {item.split("=", 1)[0].strip() for item in overrides}
        cfg.pipeline.generate_data = not ({"data.root", "data"} & given)
    validate(cfg)
    return cfg


def config_problems(node: Any, prefix: str = "") -> list[str]:
    """One line per invalid value in a config (sub)tree: the dotted key, the value, the range.

    Rules come from each dataclass's `checks` (a method's config class may list its own) and
    from `SUFFIX_CHECKS`; nested dataclasses are walked. Values are checked after the merge, so
    a type is already right.
    """
    problems: list[str] = []
    rules: dict[str, Check] = getattr(type(node), "checks", {})
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            problems.extend(config_problems(value, key + "."))
            continue
        # A class's own rule for a field replaces the naming rules (e.g. a scale list that
        # may be empty to switch something off).
        checks = [rules[f.name]] if f.name in rules else [
            c for suffix, c in SUFFIX_CHECKS.items()
            if f.name.endswith(suffix) and value is not None]
        for check in checks:
            if not check.ok(value):
                problems.append(f"config key '{key}' = {value!r} is invalid: valid is "
                                f"{check.describe()}")
                break
    return problems


def validate(cfg: RunConfig) -> None:
    """Check every value of a merged config before any stage runs.

    Raises:
        ConfigError: one line per invalid key ("config key 'train.epochs' = 0 is invalid:
            valid is >= 1"), joined by "; ".
    """
    problems = config_problems(cfg)
    if cfg.eval.sweep_start >= cfg.eval.sweep_stop and not problems:
        problems.append(f"config keys 'eval.sweep_start' = {cfg.eval.sweep_start} and "
                        f"'eval.sweep_stop' = {cfg.eval.sweep_stop}: start must be below stop")
    if problems:
        raise ConfigError("; ".join(problems))


def check_device(name: str, key: str = "config key 'pipeline.device'") -> None:
    """Refuse a `pipeline.device` this machine does not have (a CUDA device without a GPU, an
    index beyond the GPUs), before any stage runs.

    Raises:
        ConfigError: naming the key, the value and the devices available here.
    """
    import torch

    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{key} = {name!r} is invalid: valid is auto, cpu, cuda or cuda:N")
    if not name.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= count:
        here = "auto, cpu" + (", cuda" + "".join(f", cuda:{i}" for i in range(count))
                              if count else "")
        raise ConfigError(f"{key} = {name!r}: this machine has "
                          f"{count} CUDA GPU(s); valid here: {here}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict of a config dataclass (or a sub-tree of one)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(cfg)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text (what every run directory stores)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def select(cfg: RunConfig, dotted: str) -> Any:
    """The value at a dotted key, e.g. `select(cfg, "train.lr")`."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
