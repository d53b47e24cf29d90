"""PNG plots (matplotlib with the Agg backend, written atomically)."""
from __future__ import annotations

from pathlib import Path

from pipeline.files import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def whole_epochs(ax) -> None:
    """Epoch ticks at whole numbers only (matplotlib's default puts them at 1.5, 2.5 on a short run)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(histories: dict[str, list[dict]], path: Path, title: str,
                    cross_entropy: tuple[str, ...] = ()) -> Path:
    """Loss and validation accuracy per epoch, one colour per named history.

    Validation loss is plain cross-entropy for every history, so it is the comparable one and is always drawn.
    Training loss is drawn (dashed) only for the histories named in `cross_entropy`: a distilled student's
    training loss adds its teacher's terms, and beside a plain cross-entropy it would look worse when it is not.
    """
    fig = curves_figure(histories, title, cross_entropy)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path


def curves_figure(histories: dict[str, list[dict]], title: str, cross_entropy: tuple[str, ...] = ()):
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in histories.items():
        epochs, colour = [r["epoch"] for r in rows], None
        if any("val_loss" in r for r in rows):  # none without a validation split (data.val_fraction: 0)
            line, = ax_loss.plot(epochs, [r.get("val_loss", float("nan")) for r in rows], marker="o",
                                 label=f"{name}, validation")
            colour = line.get_color()
            ax_acc.plot(epochs, [100 * r.get("val_top1", float("nan")) for r in rows], marker="o", color=colour,
                        label=name)
        if name in cross_entropy:
            ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", linestyle="--", color=colour,
                         label=f"{name}, training")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="cross-entropy on the labels")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        whole_epochs(ax)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no validation split (data.val_fraction: 0)", ha="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
