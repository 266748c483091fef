"""The curves every run draws from its metrics.jsonl: loss, kNN accuracy, collapse diagnostics."""

from __future__ import annotations

import math
from pathlib import Path

from common.logging import read_metrics

BOOKKEEPING = {"step", "epoch", "lr", "wd", "img_per_s", "event", "reason", "wall_time_s"}


def _series(rows, key):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def plot_metrics(run_dir: Path) -> list[Path]:
    """Writes loss.png, knn.png (when monitored) and diagnostics.png into the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    step_rows = [r for r in rows if "loss" in r]
    epoch_rows = [r for r in rows if "loss" not in r and "event" not in r]
    written = []
    if step_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*_series(step_rows, "loss"), label="training loss")
        if any("val_loss" in r for r in epoch_rows):
            ax.plot(*_series(epoch_rows, "val_loss"), "o-", label="validation loss (per epoch)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.set_title(f"{run_dir.parent.name} — {run_dir.name}: loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "loss.png", dpi=110)
        plt.close(fig)
        written.append(run_dir / "loss.png")
    knn_rows = [r for r in epoch_rows if "knn_top1" in r]
    if knn_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["epoch"] for r in knn_rows], [r["knn_top1"] for r in knn_rows], "o-")
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN top-1 (%)")
        ax.set_title(f"{run_dir.parent.name} — {run_dir.name}: kNN monitor (k=20, T=0.07)")
        fig.tight_layout()
        fig.savefig(run_dir / "knn.png", dpi=110)
        plt.close(fig)
        written.append(run_dir / "knn.png")
    keys = sorted({k for r in step_rows for k, v in r.items()
                   if k not in BOOKKEEPING and k != "loss" and isinstance(v, (int, float))})
    if keys:
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            ax.plot(*_series(step_rows, key))
            ax.set_title(key)
            ax.set_xlabel("step")
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{run_dir.parent.name} — {run_dir.name}: diagnostics")
        fig.tight_layout()
        fig.savefig(run_dir / "diagnostics.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "diagnostics.png")
    return written
