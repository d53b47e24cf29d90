"""results.json: checking a document (from this machine, a board or a phone), reading it, and merging device
results into the run's report."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError

DEVICES = "devices"  # benchmark/devices/*.json: results merged from boards and phones


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


