"""What the benchmark stage reports: the artifact list, results.json checks, report.md, pareto.png, and the
merging of device results (``compress report --add``).

results.json (schema ``compress.results/1``, written by deploy.runner.results_doc on every machine)::

    {"schema", "run": {"run_id", "run_dir"}, "created", "machine": {"device", "cpu", "cores", "arch", "os",
     "python", "runtimes"}, "settings": {...}, "rows": [{"artifact", "format", "runtime", "precision", "bytes",
     "status": "ok" | "failed", "reason", "top1", "top5", "images", "latency": {"one_thread": {"p50_ms",
     "p90_ms", "p99_ms", "mean_ms", "runs", "threads"}, "all_cores": {...}}, "throughput": {"batch",
     "threads", "images_per_s"}, "peak_rss_mb"}]}

A device measured under an emulator (deploy/arm_check.py) has ``machine.emulated`` true and ``machine.qemu``; its
rows carry top-1 and per-image ``predictions`` but no latency: it is an accuracy-only device, kept out of speedups,
recommendations and the Pareto plot, because emulated time says nothing about the board.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline import formats
from pipeline.errors import UserError
from pipeline.store import atomic_path, atomic_write, sha256

DEVICES = "devices"  # benchmark/devices/*.json: results merged from boards and phones
# The models before export: the teacher and the student trained alone; the distilled student is torch_fp32.
EXTRA_TORCH = (("teacher_fp32", "teacher", "model.pt"), ("student_alone_fp32", "distill", "baseline.pt"))
REFERENCE = "torch_fp32"


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
        entry = (made or {}).get(item["format"])
        if entry and entry.get("status") != "ok" and item["artifact"] == item["format"]:
            out.append({**item, "status": "failed", "reason": f"{item['stage']}: {entry.get('reason', 'failed')}"})
        elif not path.is_file():
            out.append({**item, "status": "failed", "reason": f"{path.name} not written by stage '{item['stage']}'"})
        else:
            out.append({**item, "path": str(path), "bytes": path.stat().st_size})
    return out


def run_info(run_root: Path) -> dict:
    """run_id: a hash of every model file of the run, so results of other models are refused on merge."""
    files = {a["artifact"]: sha256(Path(a["path"])) for a in artifacts(run_root, {"stages": {}}) if "path" in a}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {"run_id": digest, "run_dir": str(run_root)}


# --- reading and checking results files ---------------------------------------------------------------------

def validate(doc, source: str) -> dict:
    """A results document or a UserError naming what is wrong."""
    from deploy.runner import SCHEMA

    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise UserError(f"{source} is not a compress results file (schema {found!r}, expected {SCHEMA!r}); "
                        "give the results.json written by the benchmark stage, the bundle runner or bench-android")
    for key, kind in (("run", dict), ("machine", dict), ("rows", list)):
        if not isinstance(doc.get(key), kind):
            raise UserError(f"{source}: '{key}' is missing or not a {kind.__name__}; the file is damaged")
    if not doc["run"].get("run_id") or not doc["machine"].get("device"):
        raise UserError(f"{source}: run.run_id or machine.device is missing; the file is damaged")
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or "artifact" not in row or row.get("status") not in ("ok", "failed"):
            raise UserError(f"{source}: row {i} needs 'artifact' and a status of ok or failed")
        if row["status"] != "ok":
            continue
        numbers = {k: row.get(k) for k in ("top1", "top5", "bytes", "peak_rss_mb")}
        latency = row.get("latency") or {}
        if not isinstance(latency, dict) or not all(isinstance(v, dict) for v in latency.values()):
            raise UserError(f"{source}: row {i} ({row['artifact']}) has a latency that is not a table of timings; "
                            "the file is damaged")
        numbers.update({f"latency.{k}.{m}": v.get(m) for k, v in latency.items() for m in ("p50_ms", "mean_ms")})
        bad = next((k for k, v in numbers.items() if v is not None and not _is_number(v)), None)
        if bad:
            raise UserError(f"{source}: row {i} ({row['artifact']}) has {bad} = {numbers[bad]!r}, not a number; "
                            "the file is damaged")
        if doc["machine"].get("emulated"):
            if not _is_number(row.get("top1")):
                raise UserError(f"{source}: row {i} ({row['artifact']}) is ok but has no top1")
        elif not _is_number(latency.get("one_thread", {}).get("p50_ms")):
            raise UserError(f"{source}: row {i} ({row['artifact']}) is ok but has no latency.one_thread.p50_ms")
    return doc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_results(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the results.json in it")
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the results.json a device run wrote")
    own = path.parent.name == "benchmark" and (path.parent.parent / "manifest.json").is_file()  # a run's own
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not JSON ({exc.__class__.__name__}); " + (
            "rerun 'compress all' to rebuild it" if own else "give the results.json a device run wrote")) from exc
    return validate(doc, str(path))


def device_docs(bench_dir: Path) -> list[dict]:
    return [load_results(p) for p in sorted((Path(bench_dir) / DEVICES).glob("*.json"))]


# --- the table ------------------------------------------------------------------------------------------------

def table(doc: dict, extras: list[dict] = ()) -> list[dict]:
    """Flat rows of every document, with drop vs fp32 and speedup vs PyTorch eager on the same device."""
    rows = [{**r, "device": d["machine"]["device"], **({"emulated": True} if d["machine"].get("emulated") else {})}
            for d in (doc, *extras) for r in d["rows"]]
    ok = [r for r in rows if r["status"] == "ok"]
    for row in ok:
        same = {r["artifact"]: r for r in ok if r["device"] == row["device"]}
        ref = next((same[a] for a in (REFERENCE, "tflite_fp32", "onnx_fp32") if a in same and
                    same[a].get("top1") is not None), None)
        ref = ref or next((r for r in ok if r["artifact"] == REFERENCE), None)
        if ref is not None and row.get("top1") is not None:
            row["drop_pts"] = round(100 * (ref["top1"] - row["top1"]), 2)
        if ref is not None and row.get("val_top1") is not None and ref.get("val_top1") is not None:
            row["val_drop_pts"] = round(100 * (ref["val_top1"] - row["val_top1"]), 2)
        if REFERENCE in same and timed(row) and timed(same[REFERENCE]):
            row["speedup"] = round(same[REFERENCE]["latency"]["one_thread"]["p50_ms"] / _p50(row), 2)
    return rows


def _p50(row: dict) -> float:
    return row["latency"]["one_thread"]["p50_ms"]


def timed(row: dict) -> bool:
    """A row whose latency means something: measured, and not under an emulator."""
    return row["status"] == "ok" and not row.get("emulated") and "latency" in row


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both latency (lower) and accuracy (higher), fastest first."""
    pts = [r for r in rows if r["status"] == "ok" and r.get("top1") is not None]
    front = [r for r in pts if not any(_p50(o) <= _p50(r) and o["top1"] >= r["top1"] and
                                       (_p50(o) < _p50(r) or o["top1"] > r["top1"]) for o in pts)]
    return sorted(front, key=_p50)


def recommended(rows: list[dict], max_drop: float) -> dict:
    """Per device: the fastest exported artifact (not a torch checkpoint) within ``max_drop`` points, judged on
    the validation split where it was measured (the test split only for rows without it, e.g. device runs)."""
    best: dict = {}
    for row in rows:
        drop = row.get("val_drop_pts", row.get("drop_pts", 1e9))
        if not timed(row) or row.get("runtime") == "torch" or drop > max_drop:
            continue
        cur = best.get(row["device"])
        if cur is None or _p50(row) < _p50(cur):
            best[row["device"]] = row
    return {device: row["artifact"] for device, row in best.items()}


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
    drawn from a model whose BatchNorm statistics do not match its weights (pipeline/batchnorm.py)."""
    from pipeline.batchnorm import stale_line

    got = {r["artifact"]: r for r in rows if r["device"] == device and r["status"] == "ok" and r.get("top1")}
    stale = [line for a, name in TORCH_NAMES.items() if a in got
             if (line := stale_line(name.capitalize(), got[a].get("bn_check")))]
    lines = [f"- {line}." for line in stale]
    trusted = {a: r for a, r in got.items() if not (r.get("bn_check") or {}).get("stale")}
    if {"teacher_fp32", "student_alone_fp32", REFERENCE} <= set(trusted):
        lines += distillation(*(100 * trusted[a]["top1"] for a in ("teacher_fp32", "student_alone_fp32", REFERENCE)))
    quant = [r for r in got.values() if r.get("precision", "").startswith("int8") and "drop_pts" in r and timed(r)]
    if quant and REFERENCE in trusted and timed(got[REFERENCE]):
        fast = min(quant, key=_p50)
        lines.append(f"- Quantization: the fastest INT8 model ({fast['artifact']}) costs {fast['drop_pts']:+.2f} "
                     f"points and runs {got[REFERENCE]['latency']['one_thread']['p50_ms'] / _p50(fast):.1f}x "
                     "faster than PyTorch eager (batch 1, one thread).")
    return lines


def distillation(t: float, s: float, d: float) -> list[str]:
    """The distillation line: both students are the same net trained on the same budget and seed, measured in
    PyTorch fp32 on the same test images, so the difference is what distillation did."""
    gain = d - s
    verdict = ("distillation gained" if gain > 0 else "distillation cost" if gain < 0 else "distillation changed")
    line = (f"- Distillation: distilled student {d:.2f}% against {s:.2f}% for the same student trained alone on the "
            f"same budget (test top-1, PyTorch fp32): {verdict} {abs(gain):.2f} points; the teacher scored {t:.2f}%.")
    if t <= s:
        line += (" The teacher is no better than the student alone, so it has little to teach: train it longer "
                 "(teacher.epochs) or start from a stronger one (teacher.weights with teacher.epochs: 0).")
    return [line]


def method_note(method: str | None) -> list[str]:
    """What is known of the distillation method the run used, beside what this run measured (issue #9)."""
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
    return "\n".join(out) + "\n"


# --- the plot, the files, the merge --------------------------------------------------------------------------

# Offsets (points) tried, in order, for a point's number: the first that overlaps no other number or point wins.
_OFFSETS = [(5, 4), (5, -11), (-13, 4), (-13, -11), (5, 14), (-13, 14), (5, -21), (-13, -21), (16, 4), (-24, 4)]


def _place_numbers(ax, xy: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """An offset for each point's number so that numbers overlap neither each other nor the points."""
    pix = ax.transData.transform(xy)
    scale = ax.figure.dpi / 72.0
    taken = [(px - 4, py - 4, px + 4, py + 4) for px, py in pix]  # the markers themselves

    def box(px, py, dx, dy):
        return (px + dx * scale, py + dy * scale, px + (dx + 11) * scale, py + (dy + 8) * scale)

    placed = []
    for px, py in pix:
        free = (o for o in _OFFSETS if not any(_overlap(box(px, py, *o), t) for t in taken))
        offset = next(free, _OFFSETS[0])
        taken.append(box(px, py, *offset))
        placed.append(offset)
    return placed


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def pareto_png(rows: list[dict], best: dict, path: Path) -> Path:
    """Latency (log) against top-1: one numbered point per artifact and device, the key to the numbers beside
    the plot (names do not fit beside points that nearly coincide), the front drawn, the pick starred."""
    from matplotlib.lines import Line2D  # neither picks a backend: _pyplot still sets Agg first
    from matplotlib.ticker import FuncFormatter

    from pipeline.plots import _pyplot

    plt = _pyplot()
    fig, (ax, key) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [3, 1.15]})
    pts = sorted((r for r in rows if r["status"] == "ok" and r.get("top1") is not None), key=_p50)
    markers = dict(zip(sorted({r["device"] for r in pts}), "osD^vP<>"))
    for r in pts:
        ax.scatter(_p50(r), 100 * r["top1"], marker=markers[r["device"]], s=45,
                   color="tab:red" if r["runtime"] == "torch" else "tab:blue")
    handles = []
    for device, marker in markers.items():
        front = pareto_front([r for r in pts if r["device"] == device])
        line, = ax.step([_p50(r) for r in front], [100 * r["top1"] for r in front], "--", where="post",
                        alpha=0.6)  # staircase: the faster one's accuracy holds
        handles.append(Line2D([], [], ls="--", color=line.get_color(), alpha=0.6, marker=marker, markersize=5,
                              markerfacecolor="gray", markeredgecolor="gray", label=f"Pareto front, {device}"))
        pick = next((r for r in pts if r["device"] == device and best.get(device) == r["artifact"]), None)
        if pick:
            handles.append(ax.scatter(_p50(pick), 100 * pick["top1"], marker="*", s=300, color="gold",
                                      edgecolor="black", zorder=5, label=f"recommended on {device}"))
    if pts:
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.12)
        # plain numbers (0.2, 0.5, 1, 2) instead of 2x10^-1; minor ticks labelled at 2 and 5 only, so none collide
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set(xlabel="latency p50, batch 1, one thread (ms, log scale)", ylabel="top-1 accuracy (%)",
           title="accuracy against latency (red: PyTorch eager)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    xy = [(_p50(r), 100 * r["top1"]) for r in pts]
    for i, ((x, y), offset) in enumerate(zip(xy, _place_numbers(ax, xy)), 1):
        ax.annotate(str(i), (x, y), xytext=offset, textcoords="offset points", fontsize=8, fontweight="bold")
    key.axis("off")
    several = len(markers) > 1
    lines = [f"{i:>2}  {r['artifact']}" + (f" ({r['device']})" if several else "")
             + f"  {100 * r['top1']:.2f}%  {_p50(r):.3g} ms" for i, r in enumerate(pts, 1)]
    key.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5, transform=key.transAxes)
    if handles:
        key.legend(handles=handles, fontsize=7.5, loc="lower left", frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_all(bench_dir: Path, doc: dict, max_drop: float) -> list[Path]:
    """results.json, then report.md and pareto.png with every device result already merged."""
    bench_dir = Path(bench_dir)
    results = atomic_write(bench_dir / "results.json", json.dumps(doc, indent=2) + "\n")
    return [results, *render(bench_dir, doc, max_drop)]


def render(bench_dir: Path, doc: dict, max_drop: float) -> list[Path]:
    extras = [d for d in device_docs(bench_dir) if d["run"]["run_id"] == doc["run"]["run_id"]]
    rows = table(doc, extras)
    md = atomic_write(bench_dir / "report.md", markdown(doc, extras, max_drop))
    plotted = [r for r in rows if timed(r) or r["status"] != "ok"]  # accuracy-only devices have no x
    return [md, pareto_png(plotted, recommended(rows, max_drop), bench_dir / "pareto.png")]


def add(run, files: list[Path], max_drop: float) -> list[Path]:
    """Merge device results into report.md and pareto.png; refuse files of another run or schema."""
    from pipeline.store import file_record

    bench = run.root / "benchmark"
    if not (bench / "results.json").is_file():
        raise UserError(f"{bench / 'results.json'} is missing; run 'compress benchmark' first")
    doc = load_results(bench / "results.json")
    docs = [load_results(f) for f in files]  # check them all before writing anything
    for f, d in zip(files, docs):
        if (d["machine"]["device"], d.get("created")) == (doc["machine"]["device"], doc.get("created")):
            raise UserError(f"{f} is this run's own benchmark/results.json, already in the report; give the "
                            "results.json a board or phone wrote")
        if d["run"]["run_id"] != doc["run"]["run_id"]:
            raise UserError(f"{f} was measured on the models of run {d['run']['run_id']}, not this run's "
                            f"{doc['run']['run_id']}; rebuild the bundle from this run and measure again")
    for d in docs:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in d["machine"]["device"])
        target = bench / DEVICES / f"{name}.json"
        if target.is_file():  # the same device measured again: its new rows replace the old ones
            old = load_results(target)
            if old["run"]["run_id"] == d["run"]["run_id"]:
                fresh = {r["artifact"] for r in d["rows"]}
                d = {**d, "rows": [r for r in old["rows"] if r["artifact"] not in fresh] + d["rows"]}
        atomic_write(target, json.dumps(d, indent=2) + "\n")
    outputs = render(bench, doc, max_drop)
    entry = run.manifest()["stages"].get("benchmark")
    if entry:  # the report files changed on purpose: record them so the stage stays done
        keep = [o for o in entry["outputs"] if Path(o["path"]).name not in ("report.md", "pareto.png")]
        entry["outputs"] = keep + [file_record(p, run.root) for p in outputs]
        run.record("benchmark", entry)
    return outputs


def rich_table(bench_dir: Path, max_drop: float):
    """The report table for the terminal (``compress all`` ends with it), failed artifacts' reasons under it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    doc = load_results(Path(bench_dir) / "results.json")
    extras = [d for d in device_docs(bench_dir) if d["run"]["run_id"] == doc["run"]["run_id"]]
    rows = table(doc, extras)
    best = recommended(rows, max_drop)
    # a terminal is narrow: the columns that decide, the device only when there are several
    names = ("artifact", "top-1 %", "images", "drop (pts)", "p50 ms", "p90 ms", "speedup vs eager", "size KiB")
    if len({r["device"] for r in rows}) > 1:
        names = ("artifact", "device", "top-1 %", "images", "drop (pts)", "p50 ms", "speedup vs eager", "size KiB")
    keep = [COLUMNS.index(n) for n in names]
    out = Table(title=f"benchmark (run {doc['run']['run_id']}, batch 1, 1 thread); * = recommended")
    for i in keep:
        out.add_column(SHORT.get(COLUMNS[i], COLUMNS[i]), justify="left" if i < 2 else "right", no_wrap=i == 0)
    for row in rows:
        full = cells(row, best)
        out.add_row(*(full[i] for i in keep), style=None if row["status"] == "ok" else "dim")
    return Group(out, *(Text(f"failed: {line}", style="dim") for line in failures(rows)))
