"""Writing the report: results.json, report.md and pareto.png for this machine's results and every device merged
so far, the terminal table, and compress report --add merging a board's or a phone's results."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import atomic_write
from pipeline.report.markdown import COLUMNS, SHORT, cells, failures, markdown
from pipeline.report.pareto import pareto_png
from pipeline.report.results import DEVICES, device_docs, load_results
from pipeline.report.table import recommended, table, timed


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
    from pipeline.files import file_record

    bench = run.root / "benchmark"
    if not (bench / "results.json").is_file():
        raise UserError(f"{bench / 'results.json'} is missing; run 'compress benchmark' first")
    doc = load_results(bench / "results.json")
    docs = [load_results(f) for f in files]  # check them all before writing anything
    for f, d in zip(files, docs):
        if (d["machine"]["device"], d.get("created")) == (doc["machine"]["device"], doc.get("created")):
            raise UserError(f"{f} is this run's own benchmark/results.json, already in the report; give the "
                            "results.json a board or phone wrote")
        if d["machine"]["device"] == doc["machine"]["device"]:  # its rows would pass for the host's
            raise UserError(f"{f}: device '{d['machine']['device']}' is the host's name; rerun runner.py --device "
                            "NAME on the board")
        if d["run"]["run_id"] != doc["run"]["run_id"]:
            raise UserError(f"{f} was measured on the models of run {d['run']['run_id']}, not this run's "
                            f"{doc['run']['run_id']}; rebuild the bundle from this run and measure again")
        measured(d["rows"], str(f))
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


def measured(rows: list[dict], where: str) -> None:
    """A device result in which no model was measured is refused with the first reason: merged, it would add
    a device of 'failed' rows to the report as if it were a result."""
    if not any(r["status"] == "ok" for r in rows):
        first = next((f"{r['artifact']}: {r.get('reason', 'failed')}" for r in rows), "it has no rows")
        raise UserError(f"{where}: no model was measured ({first}); fix that and measure again (nothing merged)")


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
        # Text, not markup: a device's name is free text from the board ('pi [x]', 'bench[/i]')
        out.add_row(*(Text(full[i]) for i in keep), style=None if row["status"] == "ok" else "dim")
    return Group(out, *(Text(f"failed: {line}", style="dim") for line in failures(rows)))
