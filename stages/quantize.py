"""quantize: ONNX Runtime static INT8 per deployment target (x86, ARM) and dynamic-range INT8, and
TFLite fp32 / fp16 / full-integer int8, each behind an accuracy gate on the validation split, then evaluated
once on the test set for the report (the gate falls back to the test set only when data.val_fraction is 0).

Gate: an int8 artifact whose validation top-1 drop against the fp32 student exceeds quantize.max_drop points is
retried with the next calibration method, then with the first conv and the classifier kept in float;
if it still fails it is not written and is marked failed in the manifest with the reason. Bad input
(empty or mis-shaped calibration set, a model the TFLite converter cannot take, a missing converter
package) marks only the artifacts it affects; the others are written, then the stage exits with a
one-line error (exit code 2).

The ONNX Runtime artifacts come from the simplified ONNX file; the TFLite ones from the distilled PyTorch
checkpoint through litert-torch (a direct PyTorch -> TFLite converter), so this stage reads both. The TFLite
converter processes start first and run side by side (``tflite_tools.plan``) while this process makes the ONNX
Runtime files: the stage's work is mostly single-threaded Python, so on two cores this cut the photos config's
stage from 60 to 44 s (benchmarks/results/quantize_speed.md).

Quantization-aware fine-tuning (``quantize.qat``: on, or auto when a post-training int8 file fails its gate)
then trains the student with fake quantization against the teacher (pipeline/export/qat.py) and writes
tflite_int8_qat (its learned ranges) and onnx_int8_qat (its weights, ONNX Runtime's ranges), gated alike.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

NAME = "quantize"
SECTIONS = ("seed", "data", "quantize", "student", "distill")  # the last two: the QAT fine-tune's batch and loss
UPSTREAM = ("simplify", "distill")


def upstream(cfg) -> tuple[str, ...]:
    """The QAT fine-tune distils from the teacher, so the teacher is an input wherever it may run."""
    return UPSTREAM + (("teacher",) if cfg.quantize.qat != "off" else ())


class Inputs:
    """What every conversion in this stage shares: source model, metadata, data and the fp32 reference."""

    def __init__(self, ctx, src: Path):
        from pipeline import data
        from pipeline.export import artifacts, onnx_tools

        self.src, qcfg = src, ctx.cfg.quantize
        self.proto = onnx_tools.load(src)
        self.meta = onnx_tools.metadata(self.proto)
        ds = data.load(ctx.cfg.data, ctx.cfg.seed)
        self.split = "val" if len(ds.val_y) else "test"  # what the gate decides on
        self.x = artifacts.Normalized(ds, getattr(ds, f"{self.split}_x"))  # float32 one batch at a time
        self.y = getattr(ds, f"{self.split}_y").numpy()
        self.test_x, self.test_y = artifacts.Normalized(ds, ds.test_x), ds.test_y.numpy()
        artifacts.check_images(self.test_x, self.meta["input_size"], "the test set")
        self.ref_top1 = top1(onnx_tools.logits(src, self.x, qcfg.eval_batch_size), self.y)
        self.ref_test_top1 = top1(onnx_tools.logits(src, self.test_x, qcfg.eval_batch_size), self.test_y)
        try:
            self.calib = artifacts.calibration_images(ds, qcfg.calibration_images, ctx.cfg.seed)
        except Exception as exc:  # kept and raised by each calibrated conversion only
            self.calib = exc

    def calibration(self) -> np.ndarray:
        from pipeline.export import artifacts

        if isinstance(self.calib, Exception):
            raise self.calib
        artifacts.check_images(self.calib, self.meta["input_size"], "the calibration set")
        return self.calib


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def record_test(entry: dict, inp: Inputs, logits) -> None:
    """The one test-set evaluation of a written artifact, for the report."""
    entry.update(test_top1=round(top1(logits(inp.test_x), inp.test_y), 5), fp32_test_top1=round(inp.ref_test_top1, 5))


def gate(entry: dict, attempts, evaluate, inp: Inputs, max_drop: float, final: Path) -> None:
    """Build candidates from ``attempts`` ((label, build(tmp_path)) pairs) until one keeps top-1 within
    ``max_drop`` points of fp32; it becomes ``final``. Every attempt is recorded in ``entry``."""
    from pipeline.errors import UserError
    from pipeline.export.artifacts import GateFailed

    tried = entry.setdefault("attempts", [])
    for label, build in attempts:
        tmp = final.with_name(f".{final.stem}.candidate{final.suffix}")
        try:
            try:
                build(tmp)
            except Exception as exc:  # an onnxruntime quantizer crash fails this attempt, not the stage
                tried.append({**label, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
                continue
            acc = top1(evaluate(tmp, inp.x), inp.y)
            drop = round((inp.ref_top1 - acc) * 100, 3)
            tried.append({**label, f"{inp.split}_top1": round(acc, 5), "drop_points": drop})
            if drop <= max_drop:
                tmp.replace(final)
                entry.update(chosen=label, gate_split=inp.split, **{f"{inp.split}_top1": round(acc, 5)},
                             fp32_top1=round(inp.ref_top1, 5), drop_points=drop)
                record_test(entry, inp, lambda x: evaluate(final, x))
                return
        finally:
            tmp.unlink(missing_ok=True)
    drops = [t["drop_points"] for t in tried if "drop_points" in t]
    if not drops:
        raise UserError(f"the quantizer failed on every attempt ({tried[-1]['error']}); rerun with --debug")
    best = min(drops)
    raise GateFailed(f"accuracy drop {best:.2f} points > quantize.max_drop {max_drop} after {len(tried)} attempts "
                     "(calibration methods, sensitive layers in float); not written")


def onnx_artifact(ctx, inp: Inputs, target: str) -> None:
    """One ONNX Runtime artifact (x86 / arm static, or dynamic) through the gate, with metadata."""
    from rich.markup import escape

    from pipeline.export import artifacts, onnx_tools, ort_quant

    qcfg, name = ctx.cfg.quantize, f"onnx_int8_{target}"
    final = artifacts.path_of(ctx, name)
    with artifacts.conversion(ctx, name) as entry:
        pre = ctx.dir / ".preprocessed.onnx"
        ort_quant.preprocess(inp.src, pre)
        try:
            float_nodes = ort_quant.sensitive_nodes(onnx_tools.load(pre, check=False))
            if target == "dynamic":
                attempts = [({"float_nodes": f}, lambda t, f=f: ort_quant.dynamic(pre, t, f))
                            for f in ([], float_nodes)]
            else:
                calib, methods = inp.calibration(), ort_quant.method_order(qcfg.method)
                plan = [(m, []) for m in methods[:2]] + [(qcfg.method, float_nodes)]
                rr = ort_quant.reduce_range(target)
                attempts = [({"method": m, "float_nodes": f, "reduce_range": rr}, lambda t, m=m, f=f: ort_quant.static(
                    pre, t, calib, target, m, qcfg.per_channel, f, rr)) for m, f in plan]
            evaluate = lambda p, x: onnx_tools.logits(p, x, qcfg.eval_batch_size)  # noqa: E731
            gate(entry, attempts, evaluate, inp, qcfg.max_drop, final)
        finally:
            pre.unlink(missing_ok=True)
        if target != "dynamic" and entry["chosen"]["method"] != qcfg.method:
            first = entry["attempts"][0]
            why = first.get("error") or f"{first.get('drop_points')} points drop > quantize.max_drop {qcfg.max_drop}"
            ctx.console.print(f"[yellow]{name}: calibrated with {entry['chosen']['method']}, not quantize.method "
                              f"{qcfg.method} ({escape(why)})[/yellow]", highlight=False)  # why: onnxruntime's text
        proto = onnx_tools.load(final)
        onnx_tools.set_metadata(proto, {**inp.meta, "format": name, "quantization": entry["chosen"]})
        onnx_tools.save(proto, final)
        entry.update(int8_initializers=ort_quant.int8_weights(proto), nodes=onnx_tools.node_count(proto),
                     options={**artifacts.formats.get(name).options,
                              **({} if target == "dynamic" else {"per_channel": qcfg.per_channel})})
        if target == "dynamic":  # measured: ~25x slower than fp32 for a ResNet-8 on x86 (ConvInteger kernels)
            entry["note"] = "dynamic-range Conv runs as ConvInteger in onnxruntime: smaller, not faster, than fp32"


def tflite_artifacts(ctx, inp: Inputs, pool) -> Callable[[], None]:
    """Start TFLite fp32 / fp16 / int8 from the PyTorch student in converter subprocesses side by side
    (``tflite_tools.plan``) on ``pool``; returns what waits for them and evaluates each on the validation and
    test sets. The stage does its ONNX Runtime work meanwhile."""
    import os

    from pipeline.errors import UserError
    from pipeline.export import artifacts, tflite_tools

    qcfg = ctx.cfg.quantize
    try:
        calib = inp.calibration() if "int8" in qcfg.tflite else None
        calib_error = None
    except UserError as exc:
        calib, calib_error = None, exc
    wanted = [p for p in qcfg.tflite if not (p == "int8" and calib_error)]
    for precision in qcfg.tflite:  # the converter writes them; conversion() below must not delete them
        artifacts.path_of(ctx, f"tflite_{precision}").unlink(missing_ok=True)
    student = artifacts.upstream(ctx, "torch_fp32") if wanted else None
    jobs = [(group, pool.submit(tflite_tools.convert, student, {p: artifacts.path_of(ctx, f"tflite_{p}")
                                                                 for p in group},
                                inp.meta, calib if "int8" in group else None, threads=threads,
                                scratch=ctx.run.scratch()))
            for group, threads in tflite_tools.plan(wanted, os.cpu_count() or 1)]

    def finish() -> None:
        results = {}
        for group, job in jobs:
            try:
                results.update(job.result())
            except UserError as exc:  # e.g. litert-torch not installed: every TFLite artifact fails alike
                results.update({p: {"status": "failed", "reason": str(exc)} for p in group})
        if calib_error:
            results["int8"] = {"status": "failed", "reason": str(calib_error)}
        for precision in qcfg.tflite:
            tflite_one(ctx, inp, precision, results[precision])

    return finish


def tflite_one(ctx, inp: Inputs, precision: str, result: dict) -> None:
    from pipeline.errors import UserError
    from pipeline.export import artifacts, tflite_tools
    from pipeline.export.artifacts import GateFailed

    name = f"tflite_{precision}"
    final = artifacts.path_of(ctx, name)
    with artifacts.conversion(ctx, name, clear=False) as entry:
        entry.update({k: v for k, v in result.items() if k not in ("status", "reason")})
        if result["status"] != "ok":
            raise UserError(result["reason"])
        logits = lambda x: tflite_tools.logits(final, x, ctx.cfg.quantize.eval_batch_size)  # noqa: E731
        acc = top1(logits(inp.x), inp.y)
        drop = round((inp.ref_top1 - acc) * 100, 3)
        entry.update(gate_split=inp.split, **{f"{inp.split}_top1": round(acc, 5)}, fp32_top1=round(inp.ref_top1, 5),
                     drop_points=drop, weight_types=tflite_tools.weight_types(final))
        # PT2E's static quantizer here calibrates with min/max only, so the fallback is to not ship the file
        if drop > ctx.cfg.quantize.max_drop:
            final.unlink()
            why = ("its ranges are learned, with no calibration to fall back on: fine-tune longer with quantize."
                   "qat_epochs") if precision == "int8_qat" else "the TFLite int8 route offers no other calibration"
            raise GateFailed(f"accuracy drop {drop:.2f} points > quantize.max_drop {ctx.cfg.quantize.max_drop} "
                             f"({why}); not written")
        record_test(entry, inp, logits)


def qat_artifacts(ctx, inp: Inputs) -> None:
    """tflite_int8_qat and onnx_int8_qat from the fake-quantized fine-tune, each gated against fp32 like the
    others, with its top-1 agreement with the fake-quantized model (the parity check of a quantized file).
    Converting the TFLite file beside the ONNX one saved nothing measurable (quantize_speed.md), so they go in turn."""
    from pipeline import data, models
    from pipeline.export import artifacts, qat, tflite_tools
    from pipeline.files import save_torch

    qcfg = ctx.cfg.quantize
    why = qat.reason(qcfg, ctx.metrics.get("artifacts", {}))
    for name in ("tflite_int8_qat", "onnx_int8_qat"):
        artifacts.path_of(ctx, name).unlink(missing_ok=True)
    if why is None:
        return
    ctx.console.print(f"qat: fine-tuning the student with fake quantization against the teacher ({why})")
    src = artifacts.upstream(ctx, "torch_fp32")
    student, _ = models.load_model(src)
    teacher, _ = models.load_model(ctx.input("teacher", "model.pt"))
    ds = data.load(ctx.cfg.data, ctx.cfg.seed)
    cached = ctx.recorded("distill", "teacher_logits.pt")  # None: the distill stage did not cache them
    soft = qat.distilled_targets(cached) if cached else None  # None: not the original teacher's there either
    net, fit_metrics = qat.fine_tune(student, teacher, ds, ctx.cfg, qcfg, ctx.dir / "qat", seed=ctx.cfg.seed,
                                     fingerprint=ctx.fingerprint, console=ctx.console, soft_targets=soft)
    fake = qat.logits(net, inp.x, qcfg.eval_batch_size).numpy()
    ctx.metrics["qat"] = {"reason": why, **fit_metrics, f"fakequant_{inp.split}_top1": round(top1(fake, inp.y), 5)}
    state = save_torch(net.graph.state_dict(), ctx.dir / "qat" / "qat_state.pt")
    agree = lambda logits: round(float((logits.argmax(1) == fake.argmax(1)).mean()), 5)  # noqa: E731
    if "int8" in qcfg.tflite:
        path = artifacts.path_of(ctx, "tflite_int8_qat")
        tflite_one(ctx, inp, "int8_qat", tflite_tools.convert(src, {"int8_qat": path}, inp.meta, None,
                                                               qat_state=state, scratch=ctx.run.scratch())["int8_qat"])
        entry = ctx.metrics["artifacts"]["tflite_int8_qat"]
        if entry.get("status") == "ok":
            entry["fakequant_agreement"] = agree(tflite_tools.logits(path, inp.x, qcfg.eval_batch_size))
    if "x86" in qcfg.targets:
        onnx_qat(ctx, inp, qat.float_student(student, net), ds, agree)


def onnx_qat(ctx, inp: Inputs, student, ds, agree) -> None:
    """onnx_int8_qat: the fine-tuned float weights through ONNX Runtime's static x86 quantizer, gated."""
    from pipeline.export import artifacts, onnx_tools, ort_quant

    qcfg = ctx.cfg.quantize
    final = artifacts.path_of(ctx, "onnx_int8_qat")
    with artifacts.conversion(ctx, "onnx_int8_qat") as entry:
        fp32, pre = ctx.dir / ".qat_fp32.onnx", ctx.dir / ".qat_preprocessed.onnx"
        try:
            onnx_tools.export(student, fp32, ds.channels, ds.size, ctx.cfg.export.opset)
            ort_quant.preprocess(fp32, pre)
            calib = inp.calibration()
            rr = ort_quant.reduce_range("x86")
            attempts = [({"method": qcfg.method, "float_nodes": [], "reduce_range": rr}, lambda t: ort_quant.static(
                pre, t, calib, "x86", qcfg.method, qcfg.per_channel, [], rr))]
            evaluate = lambda p, x: onnx_tools.logits(p, x, qcfg.eval_batch_size)  # noqa: E731
            gate(entry, attempts, evaluate, inp, qcfg.max_drop, final)
        finally:
            fp32.unlink(missing_ok=True)
            pre.unlink(missing_ok=True)
        proto = onnx_tools.load(final)
        onnx_tools.set_metadata(proto, {**inp.meta, "format": "onnx_int8_qat", "quantization": entry["chosen"]})
        onnx_tools.save(proto, final)
        entry["fakequant_agreement"] = agree(evaluate(final, inp.x))


def audit_all(ctx) -> None:
    """Record for each written file what its runtime really runs in int8 (pipeline/export/int8_audit.py); the
    benchmark and the report read it. An audit that fails costs only its own record."""
    from pipeline.export import int8_audit

    for name, entry in ctx.metrics.get("artifacts", {}).items():
        if entry.get("status") != "ok":
            continue
        try:
            entry["audit"] = int8_audit.audit(ctx.run.root / entry["path"])
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot load the file says so in the record
            entry["audit_error"] = f"{type(exc).__name__}: {exc}"
            continue
        ctx.console.print(f"{name}: {entry['audit']['line']}", highlight=False, markup=False)


def run(ctx) -> list[Path]:
    from pipeline.errors import UserError
    from pipeline.export import artifacts, ort_quant, tflite_tools

    qcfg = ctx.cfg.quantize
    ort_quant.check_method(qcfg.method)
    for key, values, valid in (("targets", qcfg.targets, ("x86", "arm", "dynamic")),
                               ("tflite", qcfg.tflite, ("fp32", "fp16", "int8"))):
        if set(values) - set(valid):
            raise UserError(f"quantize.{key} {list(values)} holds unknown entries; valid: {', '.join(valid)}")
    wanted = {f"onnx_int8_{t}" for t in qcfg.targets} | {f"tflite_{p}" for p in qcfg.tflite}
    for fmt in artifacts.formats.FORMATS:  # a file an earlier config asked for must not pass for this run's
        if fmt.stage == ctx.name and fmt.name not in wanted:
            artifacts.path_of(ctx, fmt.name).unlink(missing_ok=True)
    inp = Inputs(ctx, artifacts.upstream(ctx, "onnx_simplified"))
    ctx.metrics.update(fp32_test_top1=round(inp.ref_test_top1, 5), gate_split=inp.split,
                       **{f"fp32_{inp.split}_top1": round(inp.ref_top1, 5)})
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="tflite") as pool:  # threads that wait on converters
        try:
            tflite_done = tflite_artifacts(ctx, inp, pool)
            for target in qcfg.targets:
                onnx_artifact(ctx, inp, target)
            tflite_done()
            qat_artifacts(ctx, inp)
        except BaseException:  # failed or interrupted (Ctrl-C, a signal to this process alone): end them too
            tflite_tools.stop()
            raise
    audit_all(ctx)
    bad = [f"{n}: {e['reason']}" for n, e in ctx.metrics["artifacts"].items() if e.get("cause") == "input"]
    if bad:
        raise UserError(f"{len(bad)} artifact(s) not written - {bad[0]}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1
                        else "") + "; the others are in " + str(ctx.dir))
    return artifacts.written(ctx)
