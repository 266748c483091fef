"""One checkpoint format for every method (docs/ARCHITECTURE.md), written atomically.

The backbone that evaluation should use sits under a fixed key with the kwargs that rebuild it,
so `load_backbone(path)` is all eval needs; the rest is the state that makes resuming exact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

FORMAT = "ssl-lab/1"
EVAL_KEYS = ("format", "method", "arch", "backbone_kwargs", "backbone", "epoch", "step", "args")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind (one-line message)."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Save `state` in the common format, atomically (see atomic_save)."""
    atomic_save({"format": FORMAT, **state}, path)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a unique temporary file in the same folder, fsync, then rename over `path`:
    a process killed during the save leaves the previous file intact, and concurrent writers of
    the same path never clash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, method: str | None = None, arch: str | None = None,
                    map_location="cpu") -> dict:
    """Load and check a checkpoint; `method` / `arch`, when given, must match it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint.pt of a training run")
    if path.is_dir():
        hint = " (did you mean its checkpoint.pt?)" if (path / "checkpoint.pt").exists() else ""
        raise CheckpointError(f"checkpoint {path} is a folder{hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                              "it may be truncated or of another format") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ssl-lab checkpoint (expected format {FORMAT}); "
                              "train with one of this project's train.py scripts")
    if method is not None and ckpt["method"] != method:
        raise CheckpointError(f"{path} is a {ckpt['method']} checkpoint, not {method}; "
                              f"use another --out or --resume never to start a fresh {method} run")
    if arch is not None and ckpt["arch"] != arch:
        raise CheckpointError(f"{path} was trained with --arch {ckpt['arch']}, not {arch}; "
                              "use the same --arch or another --out")
    return ckpt


def eval_state(ckpt: dict) -> dict:
    """The subset of a checkpoint that evaluation needs (what snapshots hold)."""
    return {k: ckpt[k] for k in EVAL_KEYS if k in ckpt}


def load_backbone(path: str | os.PathLike, device="cpu"):
    """(backbone in eval mode on `device`, checkpoint dict) from any method's checkpoint."""
    from common.backbones import build_backbone

    ckpt = load_checkpoint(path)
    backbone = build_backbone(**ckpt["backbone_kwargs"])
    backbone.load_state_dict(ckpt["backbone"])
    return backbone.to(device).eval(), ckpt
