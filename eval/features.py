"""Frozen backbone features, extracted once and cached.

A cache entry is keyed by the checkpoint's identity (resolved path, size and modification time:
a new checkpoint at the same path is a new key), the dataset, its split, the image size and the
subset of images, so kNN, the linear probe, t-SNE and retrieval on one checkpoint share one
forward pass over the data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.augment import as_input, eval_transform
from common.checkpoint import atomic_save


def subset_indices(n: int, max_n: int | None) -> list[int]:
    """All indices, or `max_n` evenly spaced ones (deterministic, and every part of a split that
    is sorted by class keeps its share)."""
    if max_n is None or max_n >= n:
        return list(range(n))
    return np.unique(np.linspace(0, n - 1, max_n).round().astype(int)).tolist()


class Transformed(Dataset):
    """`dataset[indices[i]]` with `transform` applied to the image: (tensor, label)."""

    def __init__(self, dataset, indices, transform):
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, label = self.dataset[self.indices[i]]
        return self.transform(image), label


@torch.no_grad()
def extract_features(backbone, dataset, indices, transform, batch_size=256, workers=0, device="cpu"):
    """(N × D float32 features on the CPU, N labels) of `dataset[indices]` through `backbone`
    in eval mode; the backbone's train/eval mode is restored afterwards."""
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(Transformed(dataset, indices, transform), batch_size=batch_size,
                        shuffle=False, num_workers=workers, pin_memory=torch.device(device).type == "cuda")
    feats, labels = [], []
    try:
        for images, targets in loader:
            feats.append(backbone(as_input(images.to(device, non_blocking=True))).float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long))
    finally:
        backbone.train(was_training)
    if not feats:
        return torch.zeros(0, getattr(backbone, "embed_dim", 0)), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def raw_pixel_features(train_set, test_set, train_idx, test_idx, image_size: int, batch_size=256, workers=0,
                       device="cpu"):
    """(train features, train labels, test features, test labels) of the raw-pixels baseline: the eval
    view (resize + centre crop to `image_size`) flattened, each colour channel standardised with the
    mean / std of the train images' pixels, so that no channel's brightness dominates the cosine.
    No network and no cache: a pass over the images costs less than reading a cache entry's key."""
    transform = eval_transform(image_size)
    args = (transform, batch_size, workers, device)
    train, train_y = extract_features(nn.Identity(), train_set, train_idx, *args)
    test, test_y = extract_features(nn.Identity(), test_set, test_idx, *args)
    if train.shape[0] == 0:
        raise ValueError("raw-pixel features need at least one train image")
    channels = train.shape[1]
    per_channel = train.transpose(0, 1).reshape(channels, -1)
    mean, std = per_channel.mean(1), per_channel.std(1, unbiased=False).clamp_min(1e-6)
    scale = lambda x: ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).flatten(1)  # noqa: E731
    return scale(train), train_y, scale(test), test_y


def checkpoint_identity(path) -> dict:
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(checkpoint_path, data: str, data_root, split: str, image_size: int, indices) -> str:
    """A short hash of everything the features depend on."""
    ident = {"checkpoint": checkpoint_identity(checkpoint_path), "data": str(data),
             "data_root": None if data_root is None else str(Path(data_root).resolve()),
             "split": split, "image_size": int(image_size),
             "indices": hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def cached_features(backbone, checkpoint_path, dataset, data: str, data_root, split: str, image_size: int,
                    cache_dir, indices=None, batch_size=256, workers=0, device="cpu"):
    """`extract_features` of the eval transform, read from / written to `cache_dir`.
    Returns (features, labels, hit) where `hit` says whether the cache answered."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    key = cache_key(checkpoint_path, data, data_root, split, image_size, indices)
    path = Path(cache_dir) / f"{Path(checkpoint_path).stem}-{split}-{key}.pt"
    if path.exists():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            return entry["features"], entry["labels"], True
        except Exception:  # a truncated cache file is recomputed, never fatal
            path.unlink(missing_ok=True)
    feats, labels = extract_features(backbone, dataset, indices, eval_transform(image_size),
                                     batch_size, workers, device)
    atomic_save({"features": feats, "labels": labels}, path)
    return feats, labels, False
