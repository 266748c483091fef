"""One checkpoint format for every method (docs/ARCHITECTURE.md), written atomically.

The backbone that evaluation should use sits under a fixed key with the kwargs that rebuild it,
so `load_backbone(path)` is all eval needs; the rest is the state that makes resuming exact.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "ssl-lab/1"
EVAL_KEYS = ("format", "method", "arch", "backbone_kwargs", "backbone", "epoch", "step", "args")
RESUME_KEYS = ("model", "optimizer", "scaler", "step", "rng")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind (one-line message)."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Save `state` in the common format, atomically (see atomic_save), as tensors and plain
    Python values only, so that it loads with weights_only=True."""
    atomic_save(plain({"format": FORMAT, **state}), path)


def plain(obj):
    """numpy scalars and arrays (e.g. a learning rate read from a numpy schedule into an optimiser's
    param group) as Python numbers and tensors; containers recursively; everything else as is."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):  # exact types: a namedtuple or torch.Size is kept as it is
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a unique temporary file in the same folder, fsync, then rename over `path`:
    a process killed during the save leaves the previous file intact, and concurrent writers of
    the same path never clash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; colleagues should read runs as with any file
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the previous checkpoint is kept" if path.exists() else "nothing was written"
            raise CheckpointError(f"no space left on device while saving {path}; {kept} (free some space and "
                                  "re-run the same command to resume)") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the `.NAME.*.tmp` files that a save killed mid-write leaves in `folder` and its
    snapshots/ (call it only while holding the run directory's lock: no save is in flight)."""
    folder = Path(folder)
    stale = [p for d in (folder, folder / "snapshots") if d.is_dir() for p in d.glob(".*.pt.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _safe_load(path: Path, map_location, trust: bool):
    """torch.load that cannot run code (weights_only) unless the user trusts the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes of the weights-only unpickler
            return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # a class or function to call: a pickle, not junk
        if "Weights only load failed" not in str(e) or not found:
            raise
        raise CheckpointError(f"{path} holds Python objects ({found.group(1)}) that only an unsafe load can "
                              "rebuild, and unpickling them could run code; refused. Pass --trust-checkpoint only "
                              "if you trust where the file came from") from None


def load_checkpoint(path: str | os.PathLike, method: str | None = None, arch: str | None = None,
                    map_location="cpu", trust: bool = False, require=("backbone_kwargs", "backbone")) -> dict:
    """Load and check a checkpoint; `method` / `arch`, when given, must match it, and every key in
    `require` must be present. Only `trust=True` (--trust-checkpoint) allows a load that can run code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint.pt of a training run")
    if path.is_dir():
        hint = " (did you mean its checkpoint.pt?)" if (path / "checkpoint.pt").exists() else ""
        raise CheckpointError(f"checkpoint {path} is a folder{hint}")
    try:
        ckpt = _safe_load(path, map_location, trust)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                              "it may be truncated or of another format") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ssl-lab checkpoint (expected format {FORMAT}); "
                              "train with one of this project's train.py scripts")
    missing = [k for k in require if k not in ckpt]
    if missing:
        resumable = "model" in require
        raise CheckpointError(f"{path} has no {', '.join(repr(k) for k in missing)}: "
                              + ("it is a snapshot or an eval-only file, which cannot resume a run; pass a run's "
                                 "checkpoint.pt or --resume never" if resumable else
                                 "it is not a complete ssl-lab checkpoint; pass a run's checkpoint.pt or snapshot"))
    if method is not None and ckpt.get("method") != method:
        raise CheckpointError(f"{path} is a {ckpt['method']} checkpoint, not {method}; "
                              f"use another --out or --resume never to start a fresh {method} run")
    if arch is not None and ckpt.get("arch") != arch:
        raise CheckpointError(f"{path} was trained with --arch {ckpt['arch']}, not {arch}; "
                              "use the same --arch or another --out")
    return ckpt


def eval_state(ckpt: dict) -> dict:
    """The subset of a checkpoint that evaluation needs (what snapshots hold)."""
    return {k: ckpt[k] for k in EVAL_KEYS if k in ckpt}


def load_backbone(path: str | os.PathLike, device="cpu", trust: bool = False):
    """(backbone in eval mode on `device`, checkpoint dict) from any method's checkpoint, or from
    released weights (official DINO files, torchvision ResNets, a name such as dino_vits16: see
    common/pretrained.py), for which the dict describes what was taken."""
    from common import pretrained

    path = pretrained.resolve(path)
    try:
        ckpt = load_checkpoint(path, trust=trust)
    except CheckpointError as error:
        try:  # not one of ours: is it a layout of released weights?
            obj = pretrained.read(path)
        except CheckpointError:
            raise error from None
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            raise error from None  # ours, but incomplete
        backbone, ckpt = pretrained.load_released(path, obj)
        return backbone.to(device), ckpt
    from common.backbones import build_backbone  # torchvision: only once the file is known to be good

    backbone = build_backbone(**ckpt["backbone_kwargs"])
    backbone.load_state_dict(ckpt["backbone"])
    return backbone.to(device).eval(), ckpt
