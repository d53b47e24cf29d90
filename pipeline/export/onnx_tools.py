"""ONNX helpers shared by export, simplify and quantize: export, metadata, loading, running, parity.

onnx and onnxruntime are imported inside the functions so ``compress --help`` stays instant.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

INPUT, OUTPUT = "input", "logits"


def model_metadata(ckpt: dict, student_sha256: str) -> dict:
    """What a device needs to feed the model and read its output, from a checkpoint's meta (stored as
    metadata_props, every value JSON so that lists and numbers read back with their types), and the sha256 of
    the checkpoint it was made from. Not a hash of the config: a setting that does not change the model (the
    parity check's image count) then changed the file and reran every stage after export."""
    meta = ckpt["meta"]
    return {"arch": ckpt["arch"], "dataset": meta.get("dataset", ""), "classes": list(meta["classes"]),
            "mean": list(meta["mean"]), "std": list(meta["std"]),
            "input_size": [meta["channels"], meta["size"], meta["size"]], "layout": "NCHW",
            "normalization": "(pixel / 255 - mean) / std, per channel", "student_sha256": student_sha256}


def export(model, path: Path, channels: int, size: int, opset: int) -> None:
    """PyTorch -> ONNX with a named input/output and a dynamic batch axis.

    The legacy TorchScript exporter is used on purpose: the dynamo exporter refuses opset 17, writes
    external weight files by default and loads triton at import.
    """
    import torch

    model = model.eval().cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, torch.zeros(1, channels, size, size), str(path), dynamo=False,
                          opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def load(path: Path, check: bool = True):
    """Read and validate an ONNX file; a damaged file is a UserError that says how to rebuild it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; run the stage that writes it first")
    try:
        proto = onnx.load(str(path))
        if check:
            onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        raise UserError(f"{path} is not a valid ONNX model ({type(exc).__name__}); it is truncated or corrupt: "
                        "delete it and rerun the stage that wrote it with --force") from exc
    return proto


def set_metadata(proto, meta: dict) -> None:
    """Replace the model's metadata_props with ``meta`` (JSON values)."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "compress"


def metadata(path_or_proto) -> dict:
    """The metadata a model file carries, decoded from JSON."""
    proto = path_or_proto if not isinstance(path_or_proto, (str, Path)) else load(path_or_proto, check=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def save(proto, path: Path) -> None:
    """Write ``proto`` atomically."""
    import onnx

    from pipeline.files import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def node_count(proto) -> int:
    return len(proto.graph.node)


def op_counts(proto) -> dict:
    counts: dict = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def session(path: Path, threads: int = 1):
    """An onnxruntime CPU session; ``threads`` intra-op threads (1 = the batch-1 latency setting)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise UserError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {str(exc)[:120]}); "
                        "delete it and rerun its stage with --force") from exc


def logits(path: Path, x: np.ndarray, batch: int = 500, threads: int = 0) -> np.ndarray:
    """Run normalised float NCHW images ``x`` through the model at ``path``; float32 logits."""
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def parity(reference: np.ndarray, other: np.ndarray) -> dict:
    """Max abs logit difference and top-1 agreement of ``other`` against ``reference``."""
    return {"max_abs_diff": float(np.abs(reference - other).max()),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean())}


def verify(path: Path, x: np.ndarray, reference: np.ndarray, ecfg, entry: dict) -> None:
    """Parity of the model at ``path`` against reference logits, recorded in ``entry``; a UserError
    when it is outside the configured bounds (export.max_abs_diff, export.min_top1_agreement)."""
    result = parity(reference, logits(path, x))
    entry.update({k: round(v, 6) for k, v in result.items()}, parity_images=len(x))
    if result["max_abs_diff"] > ecfg.max_abs_diff or result["top1_agreement"] < ecfg.min_top1_agreement:
        raise UserError(f"{Path(path).name} disagrees with PyTorch (max abs diff {result['max_abs_diff']:.2e}, "
                        f"top-1 agreement {result['top1_agreement']:.2%}); rerun with --debug and report it")
