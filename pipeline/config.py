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


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TrainConfig = field(default_factory=TrainConfig)

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
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
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
