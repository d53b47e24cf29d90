"""pareto.png: latency against top-1 per device, numbered points, the front drawn and the recommended
artifact starred."""
from __future__ import annotations

from pathlib import Path

from pipeline.files import atomic_path
from pipeline.report.table import p50, pareto_front

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
    from matplotlib.lines import (
        Line2D,  # neither picks a backend: pyplot still sets Agg first
    )
    from matplotlib.ticker import FuncFormatter

    from pipeline.report.plots import pyplot

    plt = pyplot()
    fig, (ax, key) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [3, 1.15]})
    pts = sorted((r for r in rows if r["status"] == "ok" and r.get("top1") is not None), key=p50)
    shapes = "osD^vP<>"  # reused past the eighth device; the key names each point's device
    markers = {d: shapes[i % len(shapes)] for i, d in enumerate(sorted({r["device"] for r in pts}))}
    for r in pts:
        ax.scatter(p50(r), 100 * r["top1"], marker=markers[r["device"]], s=45,
                   color="tab:red" if r["runtime"] == "torch" else "tab:blue")
    handles = []
    for device, marker in markers.items():
        front = pareto_front([r for r in pts if r["device"] == device])
        line, = ax.step([p50(r) for r in front], [100 * r["top1"] for r in front], "--", where="post",
                        alpha=0.6)  # staircase: the faster one's accuracy holds
        handles.append(Line2D([], [], ls="--", color=line.get_color(), alpha=0.6, marker=marker, markersize=5,
                              markerfacecolor="gray", markeredgecolor="gray", label=f"Pareto front, {device}"))
        pick = next((r for r in pts if r["device"] == device and best.get(device) == r["artifact"]), None)
        if pick:
            handles.append(ax.scatter(p50(pick), 100 * pick["top1"], marker="*", s=300, color="gold",
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
    xy = [(p50(r), 100 * r["top1"]) for r in pts]
    for i, ((x, y), offset) in enumerate(zip(xy, _place_numbers(ax, xy)), 1):
        ax.annotate(str(i), (x, y), xytext=offset, textcoords="offset points", fontsize=8, fontweight="bold")
    key.axis("off")
    several = len(markers) > 1
    lines = [f"{i:>2}  {r['artifact']}" + (f" ({r['device']})" if several else "")
             + f"  {100 * r['top1']:.2f}%  {p50(r):.3g} ms" for i, r in enumerate(pts, 1)]
    key.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5, transform=key.transAxes)
    if handles:
        key.legend(handles=handles, fontsize=7.5, loc="lower left", frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
