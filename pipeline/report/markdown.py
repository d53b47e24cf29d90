"""report.md and the terminal table: the table, what failed, validation beside test, and the sentences
the page is for."""
from __future__ import annotations

import math

from pipeline.export.int8_audit import dynamic_range
from pipeline.report.table import REFERENCE, choice_drop, p50, recommended, table, timed


def _fmt(value, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


COLUMNS = ("artifact", "device", "top-1 %", "images", "drop (pts)", "p50 ms", "p90 ms", "speedup vs eager",
           "p50 all cores", "img/s", "size KiB", "peak RSS MB")


SHORT = {"top-1 %": "top-1 %", "drop (pts)": "drop", "speedup vs eager": "x eager", "size KiB": "KiB"}


def cells(row: dict, best: dict) -> list[str]:
    """One table row; a failed artifact says only "failed" (its reason goes under the table, see failures)."""
    name = row["artifact"] + (" *" if best.get(row["device"]) == row["artifact"] else "")
    if row["status"] != "ok":
        return [name, row["device"], "failed"] + ["-"] * (len(COLUMNS) - 3)
    lat, allc = row.get("latency", {}).get("one_thread", {}), row.get("latency", {}).get("all_cores", {})
    return [name, row["device"], _fmt(100 * row["top1"] if row.get("top1") is not None else None, ".2f"),
            _fmt(row.get("images"), "d"), _fmt(row.get("drop_pts"), "+.2f"), _fmt(lat.get("p50_ms")),
            _fmt(lat.get("p90_ms")),
            _fmt(row.get("speedup"), ".1f", "x"), _fmt(allc.get("p50_ms")),
            _fmt(row.get("throughput", {}).get("images_per_s"), ".0f"),
            _fmt(row["bytes"] / 1024 if row.get("bytes") else None, ".1f"), _fmt(row.get("peak_rss_mb"), ".0f")]


def failures(rows: list[dict]) -> list[str]:
    """Why each failed artifact failed, one line each, for under the table."""
    return [f"{r['artifact']} ({r['device']}): {r.get('reason') or 'no reason recorded'}"
            for r in rows if r["status"] != "ok"]


TORCH_NAMES = {"teacher_fp32": "the teacher", "student_alone_fp32": "the student trained alone",
               REFERENCE: "the distilled student"}


def story(rows: list[dict], device: str) -> list[str]:
    """The sentences the page is for: what distillation gained, what quantization cost and bought; none of them
    drawn from a model whose BatchNorm statistics do not match its weights (pipeline/train/batchnorm.py)."""
    from pipeline.train.batchnorm import stale_line

    got = {r["artifact"]: r for r in rows if r["device"] == device and r["status"] == "ok" and r.get("top1")}
    stale = [line for a, name in TORCH_NAMES.items() if a in got
             if (line := stale_line(name.capitalize(), got[a].get("bn_check")))]
    lines = [f"- {line}." for line in stale]
    trusted = {a: r for a, r in got.items() if not (r.get("bn_check") or {}).get("stale")}
    if {"teacher_fp32", "student_alone_fp32", REFERENCE} <= set(trusted):
        lines += distillation(*(100 * trusted[a]["top1"] for a in ("teacher_fp32", "student_alone_fp32", REFERENCE)),
                              images=trusted[REFERENCE].get("images"))
    quant = [r for r in got.values() if r.get("precision", "").startswith("int8") and "drop_pts" in r and timed(r)]
    if quant and REFERENCE in trusted and timed(got[REFERENCE]):
        fast = min(quant, key=p50)
        drop = round(fast["drop_pts"], 2)  # test top-1 points against the fp32 student
        effect = (f"costs {drop:.2f} points" if drop > 0 else f"scores {-drop:.2f} points above fp32" if drop < 0
                  else "costs no accuracy")
        lines.append(f"- Quantization: the fastest INT8 model ({fast['artifact']}) {effect} and runs "
                     f"{p50(got[REFERENCE]) / p50(fast):.1f}x faster than PyTorch eager (batch 1, one thread).")
    return lines


FP32_OF = {"tflite_int8": "tflite_fp32", "onnx_int8_x86": "onnx_simplified", "onnx_int8_arm": "onnx_simplified",
           "onnx_int8_dynamic": "onnx_simplified"}


X86 = ("x86_64", "AMD64", "i686", "i386")  # platform.machine() of an x86 CPU
LITTLE_GAIN = 0.8  # an int8 file above this share of its fp32 counterpart's latency gets a reason too


def int8_lines(rows: list[dict]) -> list[str]:
    """One line per int8 file: what its runtime runs in int8 (the quantize stage's audit on this machine), and,
    on each device where it is not faster than its fp32 counterpart or saves less than a fifth of its latency,
    why."""
    audits = {r["artifact"]: r["audit"] for r in rows if r.get("audit") and r["artifact"] in FP32_OF}
    audited_on = {r["device"] for r in rows if r.get("audit")}  # the machine whose runtimes the audit ran
    lines = [f"- {name}: {a['line']}." for name, a in audits.items()] + partition_lines(rows)
    for r in rows:
        ref = next((x for x in rows if x["device"] == r["device"] and x["artifact"] == FP32_OF.get(r["artifact"])
                    and x["status"] == "ok" and timed(x)), None)
        if not (r["artifact"] in audits and r["status"] == "ok" and timed(r) and ref):
            continue
        ratio = p50(r) / p50(ref)
        if ratio > LITTLE_GAIN:
            how = "is not faster than" if ratio >= 1 else "is only a little faster than"
            why = why_slow(audits[r["artifact"]]) if r["device"] in audited_on else why_slow_there(r, audited_on)
            if r["artifact"] == "onnx_int8_arm" and r.get("arch") in X86:
                why += "; this file is made for ARM's int8 kernels, and onnx_int8_x86 is the one for an x86 CPU"
            lines.append(f"- {r['artifact']} {how} {ref['artifact']} on {r['device']} ({ratio:.2f}x its latency): "
                         f"{why}.")
    return lines


def why_slow_there(row: dict, audited_on: set) -> str:
    """The reason for a device the audit did not run on (a board, a phone): its own TFLite runtime's partition
    count where it reported one, else only that this machine's audit does not describe that runtime."""
    n, package = row.get("xnnpack_partitions"), row.get("tflite_package", "its TFLite runtime")
    if n == 0:
        return f"{package} there hands none of its ops to XNNPACK, so it runs on TFLite's builtin kernels only"
    if n is not None and n > 1:
        return f"{package} there splits it into {n} XNNPACK partitions, with a hand-off at every boundary"
    return (f"the int8 audit ran on {', '.join(sorted(audited_on)) or 'the host'}, whose runtimes may differ from "
            f"{row['device']}'s, so it cannot say which ops cost there")


def partition_lines(rows: list[dict]) -> list[str]:
    """Per device: how many XNNPACK partitions the device's own TFLite runtime made of each int8 file, and which
    runtime that was (a board may run another one than the host: tflite-runtime 2.14 delegates no int8 file)."""
    out = []
    for r in rows:
        n = r.get("xnnpack_partitions")
        if r["status"] == "ok" and n is not None and r.get("precision", "").startswith("int8"):
            where = "on TFLite's builtin kernels only" if n == 0 else f"in {n} XNNPACK partition{'s' * (n != 1)}"
            out.append(f"- {r['artifact']} on {r['device']} ({r.get('tflite_package', 'TFLite')}): runs {where}.")
    return out


def why_slow(audit: dict) -> str:
    """The reason an audited int8 file loses to fp32, in words."""
    if audit["format"] == "tflite":
        if audit.get("outside"):
            ops = ", ".join(f"{n} {op}" for op, n in audit["outside"].items())
            return (f"{ops} run outside XNNPACK on TFLite's builtin kernels, which split the graph into "
                    f"{audit['partitions']} XNNPACK partitions with a hand-off at every boundary")
        return "every op runs in XNNPACK, so its int8 kernels gain little over fp32 for this net and size"
    if dynamic_range(audit):
        return ("it is quantized with dynamic ranges: ONNX Runtime quantizes each activation at run time and runs "
                "the convolutions as ConvInteger, slower kernels than its fp32 ones, with the bias, activation and "
                "pooling in float between them; a static int8 file (onnx_int8_x86) avoids both")
    if audit.get("int8_mac_share") is None:
        return "the audit recognises no conv or gemm kernel in its optimized graph, so it cannot say which ops cost"
    if audit.get("float_ops"):
        ops = ", ".join(f"{n} {op}" for op, n in list(audit["float_ops"].items())[:3])
        return (f"ONNX Runtime keeps {ops} in float, with a quantize/dequantize pair around each "
                f"({audit['quantize']} Q, {audit['dequantize']} DQ)")
    return "its int8 kernels gain little over fp32 for this net and size"


def distillation(t: float, s: float, d: float, images: int | None = None) -> list[str]:
    """The distillation line: both students are the same net trained on the same budget and seed, measured in
    PyTorch fp32 on the same test images, so the difference is what distillation did, up to the noise of one seed
    on ``images`` test images (the binomial standard error of a difference of two top-1 rates: an upper bound for
    two models scored on the same images, whose errors overlap)."""
    gain = d - s
    verdict = ("distillation gained" if gain > 0 else "distillation cost" if gain < 0 else "distillation changed")
    line = (f"- Distillation: distilled student {d:.2f}% against {s:.2f}% for the same student trained alone on the "
            f"same budget (test top-1, PyTorch fp32): {verdict} {abs(gain):.2f} points; the teacher scored {t:.2f}%.")
    if t <= s:
        line += (" The teacher is no better than the student alone, so it has little to teach: train it longer "
                 "(teacher.epochs) or start from a stronger one (teacher.weights with teacher.epochs: 0).")
    if images:
        se = math.sqrt((d * (100 - d) + s * (100 - s)) / images)  # in points: rates in percent
        if abs(gain) < 2 * se:
            line += (f" On {images} test images one standard error of this difference is about {se:.2f} points, so "
                     "one seed cannot tell it from chance: `compress compare` trains several "
                     "(`--set compare.seeds=3`).")
    return [line]


def method_note(method: str | None) -> list[str]:
    """What is known of the distillation method the run used, beside what this run measured."""
    if method != "ama":
        return []
    return ["- Method: the adaptive module (`ama`) has not beaten plain Hinton KD in our measurements: on "
            "Fashion-MNIST it ties KD on every budget, teacher and student tried (docs/method.md). "
            "`compress compare` measures both on your data: "
            "`--set 'compare.methods=[student,kd,ama]'`."]


def splits(rows: list[dict]) -> list[str]:
    """Validation beside test top-1 for the rows measured on both: the recommendation reads the first, the
    table above shows the second."""
    both = [r for r in rows if r["status"] == "ok" and r.get("val_top1") is not None and r.get("top1") is not None]
    if not both:
        return []
    out = ["", "Validation (used to choose) and test (reported) top-1 %:", "",
           "| artifact | device | validation top-1 % | val drop (pts) | test top-1 % |", "|---|---|---|---|---|"]
    return out + [f"| {r['artifact']} | {r['device']} | {100 * r['val_top1']:.2f} | "
                  f"{_fmt(r.get('val_drop_pts'), '+.2f')} | {100 * r['top1']:.2f} |" for r in both]


def passed_over(rows: list[dict], best: dict, max_drop: float) -> list[str]:
    """Why a faster file than the recommended one was not recommended: it lost more than ``max_drop`` points on
    the split the choice is made on. For a post-training int8 file, the way to try winning them back."""
    out, qat_ran = [], any(r["artifact"].endswith("_qat") for r in rows)
    for device, name in best.items():
        chosen = next(r for r in rows if r["device"] == device and r["artifact"] == name)
        for r in rows:
            if not (r["device"] == device and r.get("runtime") != "torch" and timed(r) and p50(r) < p50(chosen)):
                continue
            split, drop = choice_drop(r)
            if drop is None or drop <= max_drop:
                continue
            qat = (" `--set quantize.qat=on` fine-tunes an int8 file with the teacher that may win them back."
                   if r.get("precision", "").startswith("int8") and not qat_ran else "")
            out.append(f"- {r['artifact']} is faster on {device} ({p50(r):.3f} ms against {p50(chosen):.3f}) but "
                       f"loses {drop:.2f} {split} points, more than benchmark.max_drop {max_drop}, so {name} is "
                       f"recommended.{qat}")
    return out


def markdown(doc: dict, extras: list[dict], max_drop: float) -> str:
    rows = table(doc, extras)
    best = recommended(rows, max_drop)
    m = doc["machine"]
    out = [f"# Benchmark report - run {doc['run']['run_id']}", "",
           f"Host: {m['device']}, {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}; runtimes "
           + ", ".join(f"{k} {v}" for k, v in m.get("runtimes", {}).items()) + ".",
           f"Latency: batch 1, warm-up then at least {doc['settings'].get('min_runs')} runs and "
           f"{doc['settings'].get('min_seconds')} s; drop is top-1 points against the fp32 distilled student; "
           f"* marks the recommended artifact per device (fastest within {max_drop} points).", ""]
    for d in extras:
        dm = d["machine"]
        out.append(f"Device {dm['device']}: {dm.get('cpu', '?')}, {dm.get('cores', '?')} cores, {dm.get('os', '?')}."
                   + (f" Emulated by qemu {dm.get('qemu', '?')}: accuracy only, no latency (emulated time says "
                      "nothing about a board)." if dm.get("emulated") else ""))
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cells(r, best)) + " |" for r in rows]
    if failed := failures(rows):
        out += ["", "Failed:", ""] + [f"- {line}" for line in failed]
    out += splits(rows)
    out += ["", "## What it says", ""] + story(rows, m["device"]) + method_note(doc["run"].get("method"))
    out += [f"- Recommended on {dev}: **{art}**." for dev, art in best.items()] or ["- No artifact is within "
                                                                                   f"{max_drop} points."]
    out += passed_over(rows, best, max_drop)
    if lines := int8_lines(rows):
        out += ["", "INT8 kernels (what each int8 file runs in int8 on this machine's runtimes):", ""] + lines
    return "\n".join(out) + "\n"


