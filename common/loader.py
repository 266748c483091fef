"""Data loading that can resume in the middle of an epoch and see exactly the same views.

The sampler's order is a function of (seed, epoch); the loader only decodes and resizes (nothing
random), and the views of each batch are made on the training device from a generator seeded by
(seed, epoch, batch, rank) (`view_generator`): no random state lives in the DataLoader workers,
so the number of workers, a restart, or the position a run resumes from change nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.runtime import seed_worker


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def view_generator(seed: int, epoch: int, batch: int, rank: int = 0) -> torch.Generator:
    """The CPU generator the views of one batch draw their random parameters from. `epoch` -1 is
    the held-out (validation) pass, which sees the same views at every epoch."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch + 1, batch, rank))


class Loaded(Dataset):
    """Wraps a registry dataset; `__getitem__((epoch, index))` → (load(image), label), where
    `load` decodes and resizes (common.augment.LoadImage): nothing random happens here."""

    def __init__(self, dataset, load):
        self.dataset, self.load = dataset, load

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        _, index = key
        image, label = self.dataset[index]
        return self.load(image), label


class ResumableSampler(Sampler):
    """Yields (epoch, index) keys for this process's share of each global batch.

    shuffle=True: a permutation seeded by (seed, epoch), cut into global batches (drop_last),
    each split evenly across processes; `set_epoch(epoch, start_batch)` starts mid-epoch.
    shuffle=False: every index in order, strided across processes (for evaluation); under DDP
    the last indices wrap around so that every process runs the same number of batches (as
    DistributedSampler), which methods with collectives in their forward need.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if shuffle and global_batch % world_size:
            raise SystemExit(f"error: --batch-size {global_batch} is not divisible by the "
                             f"{world_size} processes; choose a multiple of {world_size}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            padded = -(-self.n // self.world_size) * self.world_size
            return [i % self.n for i in range(self.rank, padded, self.world_size)]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        per = self.global_batch // self.world_size
        out = []
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * per
            out.extend(order[start:start + per].tolist())
        return out

    def __iter__(self):
        return iter([(self.epoch, i) for i in self._indices()])

    def __len__(self):
        if not self.shuffle:
            return -(-self.n // self.world_size)
        return (self.batches_per_epoch - self.start_batch) * (self.global_batch // self.world_size)


def build_loader(dataset, load, batch_size: int, seed: int, workers: int, runtime,
                 shuffle: bool = True) -> DataLoader:
    """`batch_size` is the global batch; each process loads its share of uint8 images."""
    sampler = ResumableSampler(len(dataset), batch_size, seed, runtime.rank, runtime.world_size, shuffle)
    per_process = batch_size // runtime.world_size if shuffle else max(1, batch_size // runtime.world_size)
    return DataLoader(
        Loaded(dataset, load), batch_size=per_process, sampler=sampler,
        num_workers=workers, pin_memory=runtime.device.type == "cuda", drop_last=False,
        persistent_workers=workers > 0, worker_init_fn=seed_worker,
        prefetch_factor=4 if workers > 0 else None,
        # The iterator draws its base seed from this generator, not from the global RNG, which
        # would otherwise shift the dropout / drop-path stream of a run resumed mid-epoch.
        generator=torch.Generator().manual_seed(seed),
    )
