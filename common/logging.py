"""Run records: config.json (airbench's habit: the exact config with every result),
metrics.jsonl (one JSON object per logged step or epoch), and progress on the terminal."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import numpy
    import torch
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(), "processor": platform.machine(),
           "cpu_threads": torch.get_num_threads(), "git_commit": git_commit()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_config(run_dir: Path, args, extra: dict | None = None) -> dict:
    config = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "args": vars(args),
              "environment": environment(), **(extra or {})}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return config


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def duration(seconds: float) -> str:
    """3h02m, 4m05s, 12s: what a reader takes in at a glance."""
    seconds = max(0, round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class RunLogger:
    """Writes metrics.jsonl and shows progress on the terminal (main process only): a start banner,
    a tqdm bar on a TTY (plain step lines otherwise) whose ETA counts to `stop_at` (the run's last
    step, --max-steps included), one line per epoch that stays on screen, and optionally the same
    scalars as TensorBoard events in <run_dir>/tensorboard."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int,
                 stop_at: int | None = None, tensorboard: bool = False):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.bar = self.writer = None
        self.total, self.stop_at = total_steps, total_steps if stop_at is None else stop_at
        self.t0, self.step0 = time.time(), start_step
        self.last_step_row: dict = {}
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # parse_args checks first; this is the last line of defence
                raise SystemExit("error: --tensorboard needs the tensorboard package; pip install tensorboard "
                                 "or leave out --tensorboard") from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.stop_at, initial=start_step, dynamic_ncols=True, unit="step")

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint's step (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def banner(self, title: str, fields: dict) -> None:
        """The run at a glance, before the first step: one `name: value` line per field."""
        width = max(map(len, fields))
        self.info("\n".join([title, *(f"  {k.ljust(width)}  {v}" for k, v in fields.items())]))

    def log(self, row: dict, show: bool = True) -> None:
        if not self.enabled:
            return
        row = {k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if self.writer is not None and "step" in row:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["step"])
        if "loss" in row:
            self.last_step_row = row
        if show:
            self.show(row)

    def eta(self, step: int) -> str:
        if step <= self.step0:
            return "?"
        rate = (time.time() - self.t0) / (step - self.step0)
        return duration(rate * (self.stop_at - step))

    def show(self, row: dict) -> None:
        keys = [k for k in ("epoch", "step", "loss", "lr", "img_per_s", "knn_top1", "val_loss") if k in row]
        text = " ".join(f"{k}={_fmt(row[k])}" for k in keys)
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            if "step" in row:
                self.bar.n = row["step"]
                self.bar.refresh()
        else:
            eta = f" eta={self.eta(row['step'])}" if row.get("step") else ""
            print(f"[{time.strftime('%H:%M:%S')}] {text}{eta}", flush=True)

    def end_epoch(self, row: dict, epochs: int) -> None:
        """Records the epoch's row (validation loss, kNN, method extras) and prints the epoch line,
        which stays on screen above the bar: loss, kNN, val loss, img/s, elapsed and ETA."""
        if not self.enabled:
            return
        if len(row) > 2:  # more than step and epoch
            self.log(row, show=False)
        last, step = self.last_step_row, row["step"]
        parts = [f"epoch {row['epoch']}/{epochs}", f"step {step}/{self.stop_at}"]
        if "loss" in last:
            parts.append(f"loss {last['loss']:.4g}")
        if "val_loss" in row:
            parts.append(f"val loss {row['val_loss']:.4g}")
        if "knn_top1" in row:
            queries = f" on {row['knn_queries']} queries" if "knn_queries" in row else ""
            parts.append(f"kNN {row['knn_top1']:.1f} %{queries}")
        if "img_per_s" in last:
            parts.append(f"{last['img_per_s']:.0f} img/s")
        parts.append(f"elapsed {duration(time.time() - self.t0)}")
        if step < self.stop_at:
            parts.append(f"eta {self.eta(step)}")
        self.info(" | ".join(parts))

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
