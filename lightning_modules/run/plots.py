"""PNG pictures of a run for its folder: training curves (one run or several overlaid) and the confusion
matrix. matplotlib's Agg backend: no display needed on a cluster node."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .summary import StageSummary

#: panel title → how the metric is found in a run's curves
CURVES = (("train/loss", "train/loss"), ("val/mIoU", "val/mIoU"), ("learning rate", "lr-"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(summary: StageSummary, key: str) -> list[tuple[int, float]]:
    """The run's curve named `key`; for the learning rate (`lr-<optimizer>/<group>` from Lightning's
    LearningRateMonitor) the first parameter group's, which every other group follows by a constant factor."""
    if not key.endswith("-"):
        return summary.curves.get(key, [])
    return next((points for name, points in sorted(summary.curves.items()) if name.startswith(key)), [])


def plot_curves(summaries: list[StageSummary], labels: list[str], path: str | Path) -> Path:
    """Train loss, val mIoU and learning rate against the trainer step, the runs overlaid."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4), layout="constrained")
    for ax, (title, key) in zip(axes, CURVES):
        for summary, label in zip(summaries, labels):
            points = _curve(summary, key)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 12 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[-1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if len(summaries) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(3, len(summaries)),
                   fontsize="small")
    return _save(fig, plt, path)


def share_label(share: float) -> str:
    """A confusion-matrix cell's share in two digits without the leading zero (".97"); "1" once it rounds to
    1.00 (a 0.996 share is "1", not ".00")."""
    text = f"{share:.2f}"
    return "1" if text == "1.00" else text[1:]


def plot_confusion_matrix(confmat: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised (each true class sums to 1: its pixels' share per predicted class); a class with no
    labelled pixel stays an empty row."""
    plt = _pyplot()
    confmat = np.asarray(confmat, dtype=np.float64)
    totals = confmat.sum(axis=1, keepdims=True)
    shares = np.divide(confmat, totals, out=np.zeros_like(confmat), where=totals > 0)
    n = len(class_names)
    size = max(4.0, 0.32 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize="small")
    ax.set_yticks(range(n), class_names, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:  # the share in each cell while it stays readable
        for (i, j), value in np.ndenumerate(shares):
            if value >= 0.005:
                ax.text(j, i, share_label(value), ha="center", va="center", fontsize=6,
                        color="white" if value > 0.5 else "black")
    ax.set_title(title or "confusion matrix (rows sum to 1)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, plt, path)


def trimap_curve(metrics: dict[str, float], prefix: str = "val") -> list[tuple[int, float]]:
    """(band width, mIoU in %) of a run's `<prefix>/trimap_mIoU/<w>` metrics, narrowest first."""
    head = f"{prefix}/trimap_mIoU/"
    return sorted((int(key[len(head):]), 100 * value) for key, value in metrics.items()
                  if key.startswith(head) and key[len(head):].isdigit())


def plot_trimap(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "",
                errors: dict[str, list[float]] | None = None) -> Path:
    """mIoU against trimap band width, one curve per label (paper Figure 5(a)); `errors`: a ± bar per point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    for label, points in curves.items():
        if points:
            widths, values = zip(*points)
            ax.errorbar(widths, values, yerr=(errors or {}).get(label), marker="o", markersize=3, capsize=3,
                        label=label)
    ax.set_xlabel("trimap width (pixels)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "mIoU within the band around label changes", fontsize=9)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
