"""The report's table maths: one flat row per artifact and device, top-1 drop against the fp32 student,
speedup against PyTorch eager, the accuracy/latency front and the recommended artifact per device."""
from __future__ import annotations

REFERENCE = "torch_fp32"


def table(doc: dict, extras: list[dict] = ()) -> list[dict]:
    """Flat rows of every document, with drop vs fp32 and speedup vs PyTorch eager on the same device."""
    rows = [{**r, "device": d["machine"]["device"], **({"emulated": True} if d["machine"].get("emulated") else {}),
             **({"arch": d["machine"]["arch"]} if d["machine"].get("arch") else {})}
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
            row["speedup"] = p50(same[REFERENCE]) / p50(row)  # rounded where shown, once
    return rows


def p50(row: dict) -> float:
    return row["latency"]["one_thread"]["p50_ms"]


def timed(row: dict) -> bool:
    """A row whose latency means something: measured, and not under an emulator."""
    return row["status"] == "ok" and not row.get("emulated") and "latency" in row


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both latency (lower) and accuracy (higher), fastest first."""
    pts = [r for r in rows if r["status"] == "ok" and r.get("top1") is not None]
    front = [r for r in pts if not any(p50(o) <= p50(r) and o["top1"] >= r["top1"] and
                                       (p50(o) < p50(r) or o["top1"] > r["top1"]) for o in pts)]
    return sorted(front, key=p50)


def choice_drop(row: dict) -> tuple[str, float | None]:
    """(split, top-1 points lost) that the recommendation judges a row by: validation where it was measured, the
    test split otherwise (e.g. device runs); None when the row has no fp32 reference to compare with."""
    if "val_drop_pts" in row:
        return "validation", row["val_drop_pts"]
    return "test", row.get("drop_pts")


def recommended(rows: list[dict], max_drop: float) -> dict:
    """Per device: the fastest exported artifact (not a torch checkpoint) within ``max_drop`` points, judged on
    the validation split where it was measured (the test split only for rows without it, e.g. device runs)."""
    best: dict = {}
    for row in rows:
        drop = choice_drop(row)[1]
        if not timed(row) or row.get("runtime") == "torch" or drop is None or drop > max_drop:
            continue
        cur = best.get(row["device"])
        if cur is None or p50(row) < p50(cur):
            best[row["device"]] = row
    return {device: row["artifact"] for device, row in best.items()}
