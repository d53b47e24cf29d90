"""Typed configuration: dataclass defaults, then a YAML file, then ``--set`` overrides, then frozen.

Every section is a frozen dataclass. Unknown keys and wrongly typed values are errors that name the
closest valid key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"
    root: str = ""
    download: bool = True
    val_fraction: float = 0.1
    augment: str = "crop_flip"
    train_subset: int = 0
    synthetic_train: int = 1024
    synthetic_test: int = 256
    synthetic_classes: int = 4
    synthetic_size: int = 16
    synthetic_channels: int = 1


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet20"
    width: float = 1.0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.15
    label_smoothing: float = 0.0
    precision: str = "auto"
    channels_last: bool = True
    eval_batch_size: int = 1000
    weights: str = ""
    backbone_lr: float = 0.1


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    parity_images: int = 1000
    max_abs_diff: float = 1e-3
    min_top1_agreement: float = 1.0


@dataclass(frozen=True)
class SimplifyConfig:
    tool: str = "auto"


@dataclass(frozen=True)
class QuantizeConfig:
    calibration_images: int = 512
    method: str = "MinMax"
    per_channel: bool = True
    targets: tuple[str, ...] = ("x86", "arm", "dynamic")
    tflite: tuple[str, ...] = ("fp32", "fp16", "int8")
    max_drop: float = 1.0
    eval_batch_size: int = 500


@dataclass(frozen=True)
class AdaptConfig:
    stages: tuple[int, ...] = (1,)
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.05
    train_subset: int = 20000
    ce_weight: float = 1.0
    kl_weight: float = 1.0
    feat_weight: float = 1.0
    temperature: float = 4.0


@dataclass(frozen=True)
class DistillConfig:
    method: str = "ama"
    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    hint_weight: float = 1.0
    at_weight: float = 1000.0
    hint_loss: str = "mse"
    joint: bool = False
    baseline: bool = True
    augment: str = "none"
    cache: bool = True


@dataclass(frozen=True)
class CompareConfig:
    methods: tuple[str, ...] = ("student", "kd", "fitnets", "at", "ama")
    seeds: int = 3
    target_top1: float = 0.88


@dataclass(frozen=True)
class BenchmarkConfig:
    threads: int = 0
    warmup_runs: int = 20
    min_runs: int = 200
    min_seconds: float = 2.0
    throughput_batch: int = 64
    throughput_seconds: float = 1.0
    eval_images: int = 0
    eval_batch: int = 256
    max_drop: float = 0.5
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class BundleConfig:
    formats: tuple[str, ...] = ("tflite_fp32", "tflite_fp16", "tflite_int8")
    images: int = 1000
    runtime: str = "tflite-runtime==2.14.0"


@dataclass(frozen=True)
class AndroidConfig:
    adb: str = "adb"
    serial: str = ""
    binary: str = "/data/local/tmp/benchmark_model"
    remote_dir: str = "/data/local/tmp"
    threads: int = 4
    delegate: str = "xnnpack"
    num_runs: int = 200
    warmup_runs: int = 20
    timeout_s: float = 600.0


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TrainConfig = field(default_factory=TrainConfig)
    student: TrainConfig = field(default_factory=lambda: TrainConfig(arch="resnet8", epochs=4))
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    simplify: SimplifyConfig = field(default_factory=SimplifyConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    android: AndroidConfig = field(default_factory=AndroidConfig)

    def section(self, name: str):
        return getattr(self, name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def section_hash(value) -> str:
    """Stable sha256 of a config section (or any JSON-able value)."""
    payload = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str) -> UserError:
    keys = all_keys()
    candidates = keys + sorted({k.split(".")[0] for k in keys if "." in k})  # sections too
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run 'compress config' to list valid keys"
    return UserError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value, hint):
    """Check ``value`` against the field type ``hint``; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (object,)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' expects a list, got {value!r}")
        return tuple(_coerce(key, v, inner) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is object or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise UserError(f"config key '{key}' expects {hint.__name__}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = prefix + str(key)
        if key not in names:
            raise _unknown_key(full)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config section '{full}' must be a mapping, got {value!r}")
            kwargs[key] = _build(hint, value, full + ".")
        else:
            kwargs[key] = _coerce(full, value, hint)
    return cls(**kwargs)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_path(name_or_path: str) -> Path:
    """A shipped config by name (``smoke``) or a YAML file path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise UserError(f"config '{name_or_path}' not found: give a YAML file path or one of {', '.join(names)}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the file") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_set(item: str) -> dict:
    """``teacher.epochs=3`` -> ``{"teacher": {"epochs": 3}}``; the value is read as YAML."""
    if "=" not in item:
        raise UserError(f"--set '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load(config: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    values: dict = {}
    if config:
        values = _read_yaml(resolve_path(config))
    for item in overrides:
        values = _merge(values, parse_set(item))
    return _build(Config, values)


def from_dict(values: dict) -> Config:
    return _build(Config, values)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
