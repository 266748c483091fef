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

import torch


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


class RunLogger:
    """Writes metrics.jsonl and shows progress: a tqdm bar on a TTY, plain lines otherwise.
    Only the main process writes."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.bar = None
        self.total = total_steps
        self.t0, self.step0 = time.time(), start_step
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint's step (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def log(self, row: dict, show: bool = True) -> None:
        if not self.enabled:
            return
        row = {k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if show:
            self.show(row)

    def show(self, row: dict) -> None:
        keys = [k for k in ("epoch", "step", "loss", "lr", "img_per_s", "knn_top1", "val_loss") if k in row]
        text = " ".join(f"{k}={_fmt(row[k])}" for k in keys)
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            if "step" in row:
                self.bar.n = row["step"]
                self.bar.refresh()
        else:
            step = row.get("step")
            eta = ""
            if step and step > self.step0:
                rate = (time.time() - self.t0) / (step - self.step0)
                eta = f" eta={math.ceil(rate * (self.total - step))}s"
            print(f"[{time.strftime('%H:%M:%S')}] {text}{eta}", flush=True)

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
