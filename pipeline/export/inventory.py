"""Every model file of a run, in report order, from the format table and the manifest, and the run id that
ties a device's results to those exact files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.export import formats
from pipeline.files import sha256

# The models before export: the teacher and the student trained alone; the distilled student is torch_fp32.
EXTRA_TORCH = (("teacher_fp32", "teacher", "model.pt"), ("student_alone_fp32", "distill", "baseline.pt"))


def artifacts(run_root: Path, manifest: dict) -> list[dict]:
    """Every model of the run, in report order; missing or failed ones carry status/reason."""
    items = [dict(artifact=a, format="torch_fp32", stage=s, file=f, runtime="torch", precision="fp32")
             for a, s, f in EXTRA_TORCH]
    items += [dict(artifact=f.name, format=f.name, stage=f.stage, file=f.filename(), runtime=f.runtime,
                   precision=f.precision) for f in formats.FORMATS]
    out = []
    for item in items:
        path = Path(run_root) / item["stage"] / item.pop("file")
        made = manifest["stages"].get(item["stage"], {}).get("metrics", {}).get("artifacts")
        if made is not None and item["format"] not in made:  # not asked for by this run's config (quantize.tflite)
            continue
        # the stage's recorded outputs, not the folder: a file another config left there is not this run's model
        outputs = manifest["stages"].get(item["stage"], {}).get("outputs")
        listed = outputs is None or f"{item['stage']}/{path.name}" in {o["path"] for o in outputs}
        if item["artifact"] != item["format"] and not listed:
            continue  # a model this run's config does not train (the student alone with distill.baseline false)
        entry = (made or {}).get(item["format"])
        if entry and entry.get("status") != "ok" and item["artifact"] == item["format"]:
            out.append({**item, "status": "failed", "reason": f"{item['stage']}: {entry.get('reason', 'failed')}"})
        elif not path.is_file() or not listed:
            out.append({**item, "status": "failed", "reason": f"{path.name} not written by stage '{item['stage']}'"})
        else:
            out.append({**item, "path": str(path), "bytes": path.stat().st_size})
    return out


# the config keys that decide whether a run makes a file, for the message when it did not
MADE_BY = {"student_alone_fp32": "distill.baseline", "onnx_int8_x86": "quantize.targets",
           "onnx_int8_arm": "quantize.targets", "onnx_int8_dynamic": "quantize.targets",
           "tflite_fp32": "quantize.tflite", "tflite_fp16": "quantize.tflite", "tflite_int8": "quantize.tflite",
           "tflite_int8_qat": "quantize.qat", "onnx_int8_qat": "quantize.qat"}


def locate(run_root: Path, manifest: dict, name: str) -> Path:
    """The file of artifact ``name`` as the run's manifest records it, else a UserError that says why there is
    none: its config does not make it, it failed (with the stage's reason), or its stage has not run."""
    from pipeline.errors import UserError

    item = next((a for a in artifacts(run_root, manifest) if a["artifact"] == name), None)
    if item is None:
        raise UserError(f"the run in {run_root} does not make {name}: its config leaves it out "
                        f"(see {MADE_BY.get(name, 'the config')}); set that and rerun 'compress all'")
    made = manifest["stages"].get(item["stage"], {}).get("metrics", {}).get("artifacts", {})
    if made.get(name, {}).get("status") == "failed":  # rerunning would fail the same way: the reason says why
        raise UserError(f"the run in {run_root} has no {name}: {item['reason']}")
    if "path" not in item:
        raise UserError(f"the run in {run_root} has no {name} ({item['reason']}); run 'compress all' "
                        f"(or 'compress {item['stage']}') first")
    return Path(item["path"])


def run_info(run_root: Path, manifest: dict) -> dict:
    """run_id: a hash of every model file of the run (as its manifest lists them), so results of other models are
    refused on merge."""
    files = {a["artifact"]: sha256(Path(a["path"])) for a in artifacts(run_root, manifest) if "path" in a}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {"run_id": digest, "run_dir": str(run_root)}


def settings(bcfg) -> dict:
    """The measurement settings deploy.runner reads (also written into bundles)."""
    keys = ("threads", "warmup_runs", "min_runs", "min_seconds", "throughput_batch", "throughput_seconds",
            "eval_batch")
    return {k: getattr(bcfg, k) for k in keys}


def write_eval_set(path: Path, ds, limit: int, split: str = "test") -> Path:
    """The split's images (uint8 NCHW), labels and the normalisation the models were trained with, as one npz:
    every image, or ``limit`` of them taken by ``sample``."""
    import numpy as np

    from pipeline.files import atomic_path

    x, y = getattr(ds, f"{split}_x").numpy(), getattr(ds, f"{split}_y").numpy()
    if 0 < limit < len(y):
        keep = sample(y, limit)
        x, y = x[keep], y[keep]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=x, labels=y,
                                mean=np.asarray(ds.mean, np.float32), std=np.asarray(ds.std, np.float32))
    return path


def sample(labels, n: int, seed: int = 0):
    """Indices of ``n`` labels, each class in proportion to its count, in their original order. Not a prefix: a
    photo folder's test split is sorted by class, so its first n images would cover the first classes only.
    Shuffled within each class by a fixed seed, so the benchmark and every bundle take the same images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels))
    for c in np.unique(labels):  # a class's k-th shuffled image ranks (k + 0.5) / its count: n smallest ranks
        idx = np.flatnonzero(labels == c)
        rank[rng.permutation(idx)] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.sort(np.argsort(rank, kind="stable")[:n])
