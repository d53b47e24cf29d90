"""``compress bundle``: a tar.gz for a Raspberry Pi or any Linux board.

It holds the chosen models, deploy/runner.py (numpy + one runtime, never torch), a small evaluation set from
the test split (eval.npz), bundle.json (models, their normalisation, the run id and the benchmark stage's
measurement settings), requirements.txt and a README. On the board ``python3 runner.py`` writes a
results.json that ``compress report --add`` merges.
"""
from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

from deploy.runner import BUNDLE_SCHEMA
from pipeline.errors import UserError

TOP = "compress-bundle"
# bundle.runtime / --runtime: the TFLite runtime a board installs, pinned, with the numpy it runs with. ai-edge-litert
# 2.3.0 first: under the emulated arm64 check its XNNPACK takes an int8 file whole (1 partition), tflite-runtime
# 2.14's takes none (0: builtin kernels only, tensorflow/tensorflow#61946). ai-edge-litert's aarch64 wheel asks for
# numpy>=1.23.2 (its ml_dtypes pulls numpy 2); tflite-runtime 2.14 was built against numpy 1 and needs numpy<2.
TFLITE_RUNTIMES = {"ai-edge-litert": ("ai-edge-litert==2.3.0", "numpy>=1.23.2"),
                   "tflite-runtime": ("tflite-runtime==2.14.0", "numpy<2")}

README = """# compress device bundle (run {run_id})

Models measured the same way the host's benchmark stage measures them: accuracy on eval.npz ({images} test
images), latency at batch 1 with one thread and with every core (warm-up, then at least {min_runs} runs and
{min_seconds} s), p50 / p90 / p99, throughput at batch {batch}, peak resident memory.

    python3 -m venv venv && . venv/bin/activate
    pip install -r requirements.txt      # {requirements}
    python runner.py --device my-pi      # writes results.json

Then on the host: `compress report --add results.json` puts this board into report.md and pareto.png.

Models: {models}

TFLite runtime: {tflite} (bundle.runtime; `compress bundle --runtime NAME` packs another: {choices}).
Each TFLite row of results.json says the runtime package and the XNNPACK partitions it made of the file: an int8
file with 0 partitions runs on TFLite's builtin kernels, not XNNPACK's.
"""


def _model_entry(run, manifest: dict, name: str, meta: dict) -> tuple[dict, Path]:
    from pipeline.export import formats, inventory

    fmt = formats.get(name)
    if fmt.runtime == "torch":
        raise UserError(f"'{name}' is a PyTorch checkpoint; a bundle carries ONNX or TFLite models only")
    path = inventory.locate(run.root, manifest, name)
    entry = {"artifact": name, "format": name, "runtime": fmt.runtime, "precision": fmt.precision,
             "bytes": path.stat().st_size, "file": f"models/{path.name}",
             "meta": {**meta, "layout": fmt.options.get("layout", "NCHW")}}  # TFLite files are NHWC
    return entry, path


def requirements(runtimes: set, tflite: str) -> str:
    """requirements.txt: the numpy that ``tflite`` (a TFLITE_RUNTIMES name) runs with, its pin where the bundle
    has TFLite models, onnxruntime where it has ONNX ones."""
    pin, numpy = TFLITE_RUNTIMES[tflite]
    lines = [numpy]
    if "tflite" in runtimes:
        lines.append(pin)
    if "onnxruntime" in runtimes:
        lines.append(_onnxruntime_pin())
    return "\n".join(lines) + "\n"


def _onnxruntime_pin() -> str:
    """The onnxruntime the host measured with, so a board's rows differ from the host's by platform only."""
    from importlib import metadata

    try:
        return f"onnxruntime=={metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:
        return "onnxruntime"


def build(run, cfg, names: list[str], images: int, out: Path | None = None, skip_missing: bool = False,
          states: dict | None = None) -> Path:
    """Write the bundle. A named model the run does not have is a UserError (nothing written), or with
    ``skip_missing`` (the configured default list) it is left out. ``states``: each stage's state under ``cfg``
    (Runner.states); a model from a stale stage was made under another config, whose test images and
    normalisation the bundle's eval set would not be."""
    from pipeline import data
    from pipeline.export import formats, inventory
    from pipeline.export.inventory import settings, write_eval_set
    from pipeline.files import atomic_path

    for stage in dict.fromkeys(formats.get(n).stage for n in names):
        if (states or {}).get(stage) == "stale":
            raise UserError(f"stage '{stage}' of {run.root} is stale under this config: its models were made with "
                            "another config (or code); give the config the run was made with (-c, --set), or run "
                            "'compress all' first")
    manifest = run.manifest()
    if skip_missing:
        have = {a["artifact"] for a in inventory.artifacts(run.root, manifest) if "path" in a}
        names = [n for n in names if n in have]
    if not names:
        raise UserError("no models to pack; run 'compress quantize' first, or pass --format NAME "
                        "(e.g. tflite_int8) or set bundle.formats")
    ds = data.load(cfg.data, cfg.seed)
    meta = {**ds.meta(), "normalization": "(pixel / 255 - mean) / std, per channel"}
    entries = [_model_entry(run, manifest, n, meta) for n in dict.fromkeys(names)]
    info = inventory.run_info(run.root, manifest)
    spec = {"schema": BUNDLE_SCHEMA, "run": info, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": settings(cfg.benchmark), "data": "eval.npz", "models": [e for e, _ in entries]}
    out = Path(out) if out else run.root / "bundle" / f"compress-bundle-{info['run_id']}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="compress-bundle-") as tmpdir:
        npz = write_eval_set(Path(tmpdir) / "eval.npz", ds, images)
        n_images = len(ds.test_y) if images <= 0 else min(images, len(ds.test_y))
        reqs = requirements({e["runtime"] for e, _ in entries}, cfg.bundle.runtime)
        text = README.format(run_id=info["run_id"], images=n_images, batch=cfg.benchmark.throughput_batch,
                             min_runs=cfg.benchmark.min_runs, min_seconds=cfg.benchmark.min_seconds,
                             requirements=" + ".join(reqs.split()), tflite=TFLITE_RUNTIMES[cfg.bundle.runtime][0],
                             choices=", ".join(TFLITE_RUNTIMES), models=", ".join(e["artifact"] for e, _ in entries))
        files = {"bundle.json": json.dumps(spec, indent=2) + "\n", "README.md": text, "requirements.txt": reqs}
        with atomic_path(out) as tmp:
            _write_tar(tmp, files, {"runner.py": Path(__file__).with_name("runner.py"), "eval.npz": npz,
                                    **{e["file"]: p for e, p in entries}})
    return out


def _write_tar(path: Path, texts: dict, files: dict) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in texts.items():
            raw = text.encode()
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size, info.mtime, info.mode = len(raw), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(raw))
        for name, src in files.items():
            tar.add(str(src), arcname=f"{TOP}/{name}")
