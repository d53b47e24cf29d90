"""Draw docs/method.png, the diagram of the activation-map adaptive module (see docs/method.md).

    .venv/bin/python docs/method_figure.py
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

GREY, BLUE, ORANGE, GREEN = "#d9d9d9", "#9ecae1", "#fdae6b", "#a1d99b"


def box(ax, x, y, w, h, text, colour, style="round,pad=0.02"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=colour, ec="black", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def arrow(ax, a, b, colour="black", style="-|>", ls="-"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color=colour, lw=1.2, ls=ls))


def main(path: Path = Path(__file__).with_name("method.png")) -> Path:
    fig, ax = plt.subplots(figsize=(11, 4.6))
    ax.set(xlim=(0, 11), ylim=(0, 4.9))
    ax.axis("off")
    ty, sy, h = 3.2, 0.5, 0.7
    ax.text(0.1, ty + 1.3, "adapted teacher (frozen, bf16, no gradients; outputs cached)", fontsize=10,
            weight="bold")
    box(ax, 0.2, ty, 1.1, h, "stem", GREY)
    box(ax, 1.6, ty, 1.3, h, "stage 0", GREY)
    box(ax, 3.3, ty - 0.15, 2.1, h + 0.3, "adaptive module\n3x3 conv-BN-ReLU x2\n(student's shape)", ORANGE)
    box(ax, 5.8, ty, 1.2, h, "1x1 proj.\nto teacher", ORANGE)
    box(ax, 7.3, ty, 1.3, h, "stage 2", GREY)
    box(ax, 8.9, ty, 1.0, h, "head", GREY)
    for a, b in [((1.3, ty + h / 2), (1.6, ty + h / 2)), ((2.9, ty + h / 2), (3.3, ty + h / 2)),
                 ((5.4, ty + h / 2), (5.8, ty + h / 2)), ((7.0, ty + h / 2), (7.3, ty + h / 2)),
                 ((8.6, ty + h / 2), (8.9, ty + h / 2))]:
        arrow(ax, a, b)
    ax.text(3.45, ty + 0.95, "replaces teacher stage 1", fontsize=8, style="italic")
    ax.text(0.1, sy + 0.95, "student (trains)", fontsize=10, weight="bold")
    box(ax, 0.2, sy, 1.1, h, "stem", BLUE)
    box(ax, 1.6, sy, 1.3, h, "stage 0", BLUE)
    box(ax, 3.6, sy, 1.5, h, "stage 1", BLUE)
    box(ax, 7.3, sy, 1.3, h, "stage 2", BLUE)
    box(ax, 8.9, sy, 1.0, h, "head", BLUE)
    for a, b in [((1.3, sy + h / 2), (1.6, sy + h / 2)), ((2.9, sy + h / 2), (3.6, sy + h / 2)),
                 ((5.1, sy + h / 2), (7.3, sy + h / 2)), ((8.6, sy + h / 2), (8.9, sy + h / 2))]:
        arrow(ax, a, b)
    arrow(ax, (4.35, ty - 0.15), (4.35, sy + h + 0.05), GREEN, "<|-|>", "--")
    box(ax, 4.5, 1.75, 2.2, 0.55, "hint loss (MSE)\nsame C x H x W", GREEN)
    arrow(ax, (9.4, ty), (9.4, sy + h + 0.05), GREEN, "-|>", "--")
    box(ax, 9.55, 1.75, 1.4, 0.55, "KL(T=4)\nsoft logits", GREEN)
    box(ax, 9.95, sy, 0.95, h, "CE\nlabels", GREEN)
    arrow(ax, (9.9, sy + h / 2), (9.95, sy + h / 2))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
