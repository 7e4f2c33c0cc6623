"""Matplotlib figures of a run's history (PNG files) and of a confusion matrix (for TensorBoard)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, and no GUI toolkit to import
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from trainlab.analysis.fonts import drawable_labels  # noqa: E402

CURVES = {
    "loss.png": ("loss (mean cross-entropy per sample)", ["train/loss", "val/loss"]),
    "accuracy.png": ("accuracy (fraction correct)", ["train/acc1", "val/acc1", "train/acc5", "val/acc5"]),
    "metrics.png": ("score (macro average)", ["val/precision", "val/recall", "val/f1", "val/kappa", "val/auroc"]),
    "lr.png": ("learning rate", ["lr"]),
    "grad_norm.png": ("global L2 gradient norm", ["grad_norm", "grad_norm_max"]),
    "time.png": ("seconds per epoch", ["time/train_s", "time/val_s"]),
    "throughput.png": ("training images per second", ["throughput/train_ips"]),
}


def overlay_figure(curves: dict[str, pd.DataFrame], column: str, ylabel: str):
    """One line per run (label -> its metrics.csv rows) of `column` against the epoch."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for label, history in curves.items():
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker="o", markersize=3, label=label)
    return _per_epoch(fig, ax, ylabel)


def seed_band(curves: dict[str, list[pd.DataFrame]], column: str, ylabel: str):
    """One line per group of seeds (their mean per epoch) with a band of ± one std; a lone job is a plain line."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for label, histories in curves.items():
        frames = [h[["epoch", column]] for h in histories if column in h and h[column].notna().any()]
        if not frames:
            continue
        stacked = pd.concat(frames).groupby("epoch")[column]
        mean, std = stacked.mean(), stacked.std()
        line, = ax.plot(mean.index, mean.values, marker="o", markersize=3,
                        label=f"{label} (n={len(frames)})" if len(frames) > 1 else label)
        if len(frames) > 1:
            ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=line.get_color(), alpha=0.2)
    return _per_epoch(fig, ax, ylabel)


def _per_epoch(fig, ax, ylabel: str):
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 1.25
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (ylabel, columns) in CURVES.items():
        present = [c for c in columns if c in history and history[c].notna().any()]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for column in present:
            ax.plot(history["epoch"], history[column], marker="o", markersize=3, label=column)
        ax.xaxis.get_major_locator().set_params(integer=True)  # a two-epoch run has ticks 1 and 2, not 1.0, 1.2, ...
        ax.set_xlabel("epoch")
        values = history[present].to_numpy(dtype=float)
        values = values[(values > 0) & (values < float("inf"))]
        if filename == "loss.png" and values.size and values.max() / values.min() > 30:
            ax.set_yscale("log")  # an early spike would flatten every later epoch on a linear axis
            ylabel += ", log scale"
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        # Fixed margins: the axis labels are short and known, and tight_layout would double the drawing time.
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.96)
        path = out_dir / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def confusion_figure(confusion: torch.Tensor, labels: list[str], title: str):
    """Row-normalised heat-map (each row: where the images of one true class went). Class names no installed font
    can draw become their indices (analysis.fonts; classes.csv maps them)."""
    labels = drawable_labels(labels)
    cm = confusion.double()
    cm = cm / cm.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(labels)
    size = min(12.0, 3.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    image = ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 30:  # beyond that the names overlap; the CSV carries them
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    return fig


def search_curves(curves: dict[int, pd.DataFrame], states: dict[int, str], column: str):
    """A search's trials: `column` per epoch, one line per trial; a pruned trial ends in an x where it stopped."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for number, history in sorted(curves.items()):
        if column not in history or not history[column].notna().any():
            continue
        pruned = states.get(number) == "pruned"
        line, = ax.plot(history["epoch"], history[column], marker="o", markersize=2, linewidth=1,
                        alpha=0.45 if pruned else 0.9, label=f"trial {number}" + (" (pruned)" if pruned else ""))
        if pruned:
            ax.plot(history["epoch"].iloc[-1], history[column].iloc[-1], marker="x", markersize=8,
                    color=line.get_color())
    ax.set_title("each trial's monitored value; x: where the pruner stopped it", fontsize=9)
    fig = _per_epoch(fig, ax, column)
    if len(curves) > 12:
        ax.legend().remove()
    return fig


def value_against_parameters(table: pd.DataFrame, params: list[str], ylabel: str):
    """One panel per parameter: each trial's value against the parameter's value (log axis for a positive
    parameter spanning more than a factor of 100); pruned trials (their last reported value) hollow."""
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.2), dpi=100, squeeze=False)
    finished = table[table["state"].isin(["complete", "pruned"])]
    for ax, param in zip(axes[0], params):
        for state, style in (("complete", {"color": "C0"}), ("pruned", {"facecolors": "none", "edgecolors": "C1"})):
            rows = finished[finished["state"] == state]
            x = pd.to_numeric(rows[param], errors="coerce")
            ax.scatter(x if x.notna().all() else rows[param].astype(str), rows["value"], s=18, label=state, **style)
        numbers = pd.to_numeric(finished[param], errors="coerce")
        if numbers.notna().all() and len(numbers) and numbers.min() > 0 and numbers.max() / numbers.min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel(param, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
