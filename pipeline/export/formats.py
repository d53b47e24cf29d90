"""The one declarative table of model artifacts. Stages look formats up by name, never by position.

An artifact of format F written by stage S lives at ``runs/<run>/<S>/<F.filename()>``, and S records
it in the manifest under ``metrics["artifacts"][F.name]`` with at least ``status`` ("ok" or "failed")
and, when failed, ``reason``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import unknown


@dataclass(frozen=True)
class Format:
    name: str
    stage: str
    suffix: str
    runtime: str  # torch | onnxruntime | tflite
    precision: str  # fp32 | fp16 | int8 | int8-dynamic
    options: dict = field(default_factory=dict)
    file: str = ""  # a fixed file name, where the artifact is not named after its format

    def filename(self) -> str:
        return self.file or self.name + self.suffix


FORMATS: tuple[Format, ...] = (
    Format("torch_fp32", "distill", ".pt", "torch", "fp32", file="student.pt"),
    Format("onnx_fp32", "export", ".onnx", "onnxruntime", "fp32"),
    Format("onnx_simplified", "simplify", ".onnx", "onnxruntime", "fp32"),
    Format("onnx_int8_x86", "quantize", ".onnx", "onnxruntime", "int8",
           {"activations": "uint8", "weights": "int8", "per_channel": True, "target": "x86", "form": "QDQ"}),
    Format("onnx_int8_arm", "quantize", ".onnx", "onnxruntime", "int8",
           {"activations": "int8", "weights": "int8", "per_channel": True, "target": "arm", "form": "QDQ"}),
    Format("onnx_int8_dynamic", "quantize", ".onnx", "onnxruntime", "int8-dynamic", {"weights": "int8"}),
    Format("tflite_fp32", "quantize", ".tflite", "tflite", "fp32", {"layout": "NHWC"}),
    Format("tflite_fp16", "quantize", ".tflite", "tflite", "fp16", {"layout": "NHWC"}),
    Format("tflite_int8", "quantize", ".tflite", "tflite", "int8",
           {"layout": "NHWC", "input": "int8", "output": "int8", "calibration": "MinMax (representative dataset)"}),
    Format("tflite_int8_qat", "quantize", ".tflite", "tflite", "int8",
           {"layout": "NHWC", "input": "int8", "output": "int8", "calibration": "quantization-aware fine-tune"}),
    Format("onnx_int8_qat", "quantize", ".onnx", "onnxruntime", "int8",
           {"activations": "uint8", "weights": "int8", "per_channel": True, "target": "x86", "form": "QDQ",
            "calibration": "quantization-aware fine-tuned weights, MinMax ranges"}),
)


def get(name: str) -> Format:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise unknown("format", name, [f.name for f in FORMATS])

