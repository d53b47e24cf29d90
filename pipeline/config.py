"""Typed configuration: dataclass defaults, then a YAML file, then ``--set`` overrides, then frozen.

Every section is a frozen dataclass. Unknown keys and wrongly typed values are errors that name the
closest valid key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import config_fields
from pipeline.config_fields import Names, check
from pipeline.errors import UserError

# The shipped configs: pipeline/configs in an installed wheel (pyproject.toml), configs/ beside the package in a
# checkout.
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = _HERE / "configs" if (_HERE / "configs").is_dir() else _HERE.parent / "configs"


FRACTION = {"gt": 0.0, "lt": 1.0}


AUGMENT = Names("pipeline.data.batches", "AUGMENT")
PRECISIONS = Names("pipeline.train.precision", "PRECISIONS")
TFLITE_RUNTIMES = Names("deploy.bundle", "TFLITE_RUNTIMES")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"
    root: str = ""
    download: bool = True
    val_fraction: float = check(0.1, ge=0.0, lt=1.0)  # 0: no validation split (choices fall back to test)
    test_fraction: float = check(0.1, **FRACTION)  # a flat photo folder: the share held out as the test split
    image_size: int = check(0, ge=0)  # 0: the data set's own size (a photo folder: 224)
    max_bad_fraction: float = check(0.01, ge=0.0, le=1.0)  # unreadable photos tolerated before a run stops
    cache_dir: str = ""  # decoded photo folders ("" = ~/.cache/compress/decoded)
    augment: str = check("crop_flip", choices=AUGMENT)
    train_subset: int = check(0, ge=0)
    synthetic_train: int = check(1024, ge=1)
    synthetic_test: int = check(256, ge=1)
    synthetic_classes: int = check(4, ge=2)
    synthetic_size: int = check(16, ge=8)
    synthetic_channels: int = check(1, choices=(1, 3))


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet20"
    width: float = check(1.0, gt=0.0)
    epochs: int = check(8, ge=0)  # 0 only for the teacher: use teacher.weights as given (see _check_whole)
    batch_size: int = check(128, ge=1)
    lr: float = check(0.2, gt=0.0)
    momentum: float = check(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = check(5e-4, ge=0.0)
    schedule: str = check("onecycle", choices=Names("pipeline.train.optim", "SCHEDULES"))
    warmup_fraction: float = check(0.15, ge=0.0, lt=1.0)
    label_smoothing: float = check(0.0, ge=0.0, lt=1.0)
    precision: str = check("auto", choices=PRECISIONS)
    channels_last: bool = True
    eval_batch_size: int = check(1000, ge=1)
    weights: str = ""
    backbone_lr: float = check(0.1, gt=0.0, le=1.0)
    bn_recalibration_images: int = check(4096, ge=0)  # BatchNorm statistics recomputed after each epoch; 0: off


@dataclass(frozen=True)
class ExportConfig:
    opset: int = check(17, ge=17, le=21)
    parity_images: int = check(1000, ge=1)
    max_abs_diff: float = check(1e-3, gt=0.0)
    min_top1_agreement: float = check(1.0, gt=0.0, le=1.0)


@dataclass(frozen=True)
class SimplifyConfig:
    tool: str = check("auto", choices=Names("stages.simplify", "TOOLS"))


@dataclass(frozen=True)
class QuantizeConfig:
    calibration_images: int = check(512, ge=1)
    method: str = check("MinMax", choices=Names("pipeline.export.ort_quant", "METHODS"))
    per_channel: bool = True
    targets: tuple[str, ...] = check(("x86", "arm"), choices=("x86", "arm", "dynamic"))
    tflite: tuple[str, ...] = check(("fp32", "fp16", "int8"), choices=("fp32", "fp16", "int8"))
    max_drop: float = check(1.0, ge=0.0, le=100.0)
    eval_batch_size: int = check(500, ge=1)
    qat: str = check("auto", choices=("off", "auto", "on"))  # auto: when a post-training int8 file fails the gate
    qat_epochs: float = check(0.25, gt=0.0, le=100.0)  # passes over the training set; 0.25 = a quarter of it
    qat_lr: float = check(0.001, gt=0.0)


@dataclass(frozen=True)
class AdaptConfig:
    stages: tuple[int, ...] = check((1,), ge=0)
    epochs: int = check(2, ge=1)
    batch_size: int = check(128, ge=1)
    lr: float = check(0.05, gt=0.0)
    train_subset: int = check(20000, ge=0)
    ce_weight: float = check(1.0, ge=0.0)
    kl_weight: float = check(1.0, ge=0.0)
    feat_weight: float = check(1.0, ge=0.0)
    temperature: float = check(4.0, gt=0.0)
    bn_recalibration_images: int = check(4096, ge=0)  # the module's BatchNorm statistics, as in training sections


@dataclass(frozen=True)
class DistillConfig:
    method: str = "ama"
    temperature: float = check(4.0, gt=0.0)
    ce_weight: float = check(1.0, ge=0.0)
    kd_weight: float = check(1.0, ge=0.0)
    hint_weight: float = check(1.0, ge=0.0)
    at_weight: float = check(1000.0, ge=0.0)
    hint_loss: str = check("mse", choices=Names("pipeline.distill.losses", "HINT_LOSSES"))
    kd_target: str = check("original", choices=("adapted", "original"))  # ama: soft targets from which teacher
    joint: bool = False
    route_weight: float = check(0.0, ge=0.0)  # ama: KL through the rest of the teacher run on the student's map
    baseline: bool = True
    augment: str = check("none", choices=AUGMENT)
    cache: bool = True


@dataclass(frozen=True)
class CompareConfig:
    methods: tuple[str, ...] = ("student", "kd", "fitnets", "at", "ama")
    seeds: int = check(3, ge=1)
    target_top1: float = check(0.88, **FRACTION)


@dataclass(frozen=True)
class BenchmarkConfig:
    threads: int = check(0, ge=0)
    warmup_runs: int = check(20, ge=0)
    min_runs: int = check(200, ge=1)
    min_seconds: float = check(1.0, ge=0.0)
    throughput_batch: int = check(64, ge=1)
    throughput_seconds: float = check(1.0, ge=0.0)
    eval_images: int = check(0, ge=0)
    eval_batch: int = check(256, ge=1)
    max_drop: float = check(0.5, ge=0.0, le=100.0)
    timeout_s: float = check(1800.0, gt=0.0)


@dataclass(frozen=True)
class BundleConfig:
    formats: tuple[str, ...] = check(("tflite_fp32", "tflite_fp16", "tflite_int8", "onnx_fp32", "onnx_int8_arm"),
                                    choices=("tflite_fp32", "tflite_fp16", "tflite_int8", "onnx_fp32", "onnx_int8_arm"))
    images: int = check(1000, ge=0)
    runtime: str = check("ai-edge-litert", choices=TFLITE_RUNTIMES)  # the TFLite runtime a board installs


@dataclass(frozen=True)
class AndroidConfig:
    adb: str = "adb"
    serial: str = ""
    binary: str = "/data/local/tmp/benchmark_model"
    remote_dir: str = "/data/local/tmp"
    threads: int = check(4, ge=1)
    delegate: str = check("xnnpack", choices=("xnnpack", "gpu", "nnapi", "none"))
    num_runs: int = check(200, ge=1)
    warmup_runs: int = check(20, ge=0)
    timeout_s: float = check(600.0, gt=0.0)


@dataclass(frozen=True)
class Config:
    seed: int = check(0, ge=0)
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
        """A section ("student") or one field of it ("student.arch")."""
        value = self
        for part in name.split("."):
            value = getattr(value, part)
        return value

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def all_keys() -> list[str]:
    """Every valid dotted config key."""
    return config_fields.all_keys(Config)


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


def load(config: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    values: dict = {}
    if config:
        values = config_fields.read_yaml(resolve_path(config))
    for item in overrides:
        values = config_fields.merge(values, config_fields.parse_set(item))
    return from_dict(values)


def from_dict(values: dict) -> Config:
    return _check_whole(config_fields.build(Config, values))


def _check_whole(cfg: Config) -> Config:
    """Rules that span keys: a student always trains; a teacher that does not needs weights to start from."""
    if cfg.student.epochs < 1:
        raise UserError(f"config key 'student.epochs' = {cfg.student.epochs} is out of range; it must be >= 1")
    if not cfg.quantize.targets and not cfg.quantize.tflite:
        raise UserError("quantize.targets and quantize.tflite are both empty; list at least one artifact, "
                        "e.g. quantize.targets: [x86]")
    if 0 < cfg.data.image_size < 8:
        raise UserError(f"config key 'data.image_size' = {cfg.data.image_size} is too small; give 8 or more "
                        "(0 keeps the data set's own size)")
    if cfg.data.dataset == "imagefolder" and not str(cfg.data.root).strip():  # "" is the working folder
        raise UserError("data.dataset is imagefolder but data.root is empty; set data.root to the photo folder "
                        "(one subfolder of images per class)")
    if cfg.teacher.epochs == 0 and not cfg.teacher.weights:
        raise UserError("teacher.epochs is 0 (use the weights as given) but teacher.weights is empty; "
                        "give a weights file or train for at least one epoch")
    return cfg


def dump(cfg: Config) -> str:
    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
