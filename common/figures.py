"""The curves every run draws from its metrics.jsonl: loss, kNN accuracy, collapse diagnostics.

The diagnostics get readable titles, y-labels and the reference line a reader judges them by:
1/√d for the per-dimension std of L2-normalised vectors (Chen & He 2021: that value when they
spread over the sphere, 0 when they collapse to a point), ln K for the entropy of DINO's teacher
over K prototypes (ln K = uniform, 0 = one-hot: the two collapses of Caron et al. 2021, Sec. 5.3),
0 for KL(teacher ‖ student), and the identity for Barlow Twins' cross-correlation C (diagonal 1,
off-diagonal 0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from common.logging import read_metrics

BOOKKEEPING = {"step", "epoch", "lr", "wd", "img_per_s", "event", "reason", "wall_time_s"}

# key: (panel title, y-label)
DIAGNOSTICS = {
    "feature_std": ("backbone feature std (L2-normalised)", "std per dimension"),
    "z_std": ("embedding std (L2-normalised)", "std per dimension"),
    "teacher_entropy": ("entropy of DINO's teacher output", "entropy (nats)"),
    "kl": ("KL(teacher ‖ student)", "KL (nats)"),
    "c_on_diag": ("Barlow Twins C: mean diagonal", "mean C_ii"),
    "c_off_diag": ("Barlow Twins C: mean |off-diagonal|", "mean |C_ij|, i ≠ j"),
    "teacher_temp": ("DINO teacher temperature", "temperature"),
    "momentum": ("teacher EMA momentum", "momentum"),
    "tau": ("target EMA momentum τ", "τ"),
    "dino_loss": ("DINO term of the loss", "loss"),
    "bt_loss": ("Barlow Twins term of the loss", "loss"),
    "perm_acc": ("permutation accuracy (training batch)", "accuracy"),
}


def title_and_label(key: str) -> tuple[str, str]:
    return DIAGNOSTICS.get(key, (key.replace("_", " "), key.replace("_", " ")))


def run_config(run_dir: Path) -> dict:
    """config.json of a run ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _last_width(widths) -> int | None:
    try:
        return int(str(widths).split("-")[-1])
    except ValueError:
        return None


def diagnostic_dim(key: str, config: dict) -> int | None:
    """d of the vectors whose std `key` is (the backbone's features or the method's embedding)."""
    args, method = config.get("args", {}), config.get("method")
    if key == "feature_std":
        return config.get("embed_dim")
    if key == "z_std":
        if method == "byol":
            return args.get("out_dim")
        return _last_width(args.get("bt_projector" if method == "dino_twins" else "projector", ""))
    return None


def reference(key: str, config: dict) -> tuple[float, str] | None:
    """(y, label) of the line that says what healthy or collapsed means for `key`, or None."""
    if key in ("feature_std", "z_std"):
        d = diagnostic_dim(key, config)
        return (1 / math.sqrt(d), f"1/√d, d = {d} (spread out)") if d else None
    if key == "teacher_entropy" and config.get("args", {}).get("out_dim"):
        k = config["args"]["out_dim"]
        return math.log(k), f"ln K = {math.log(k):.2f}, K = {k} (uniform: collapse)"
    if key == "kl":
        return 0.0, "0 (collapse)"
    if key == "c_on_diag":
        return 1.0, "identity: 1"
    if key == "c_off_diag":
        return 0.0, "identity: 0"
    return None


def _series(rows, key):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def draw_reference(ax, ref, color="k") -> None:
    if ref is not None:
        ax.axhline(ref[0], color=color, ls="--", lw=0.9, label=ref[1])


def plot_metrics(run_dir: Path) -> list[Path]:
    """Writes loss.png, knn.png (when monitored) and diagnostics.png into the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    config = run_config(run_dir)
    step_rows = [r for r in rows if "loss" in r]
    epoch_rows = [r for r in rows if "loss" not in r and "event" not in r]
    name = f"{run_dir.parent.name} — {run_dir.name}"
    written = []
    if step_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*_series(step_rows, "loss"), label="training loss")
        if any("val_loss" in r for r in epoch_rows):
            ax.plot(*_series(epoch_rows, "val_loss"), "o-", label="validation loss (per epoch)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.set_title(f"{name}: loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "loss.png", dpi=110)
        plt.close(fig)
        written.append(run_dir / "loss.png")
    knn_rows = [r for r in epoch_rows if "knn_top1" in r]
    if knn_rows:
        # the network at initialisation (the engine's step-0 row) starts the curve: the baseline
        init = [{"epoch": 0, "knn_top1": r["knn_init_top1"]} for r in epoch_rows if "knn_init_top1" in r]
        knn_rows = init[:1] + knn_rows
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["epoch"] for r in knn_rows], [r["knn_top1"] for r in knn_rows], "o-")
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN top-1 (%)")
        queries = knn_rows[-1].get("knn_queries")
        ax.set_title(f"{name}: kNN monitor (k=20, T=0.07" + (f", {queries} test queries)" if queries else ")"))
        fig.tight_layout()
        fig.savefig(run_dir / "knn.png", dpi=110)
        plt.close(fig)
        written.append(run_dir / "knn.png")
    keys = sorted({k for r in step_rows for k, v in r.items()
                   if k not in BOOKKEEPING and k != "loss" and isinstance(v, (int, float))})
    if keys:
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.2 * nrows), squeeze=False,
                                 layout="constrained")  # room for the suptitle
        for ax, key in zip(axes.flat, keys):
            title, ylabel = title_and_label(key)
            ax.plot(*_series(step_rows, key), label=key)
            draw_reference(ax, reference(key, config))
            ax.set(title=title, xlabel="optimiser step", ylabel=ylabel)
            ax.grid(alpha=0.3)
            if len(ax.get_lines()) > 1:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{name}: diagnostics")
        fig.savefig(run_dir / "diagnostics.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "diagnostics.png")
    return written
