"""Per-iteration schedules, precomputed once (as facebookresearch/dino's `cosine_scheduler`)."""

from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: float = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """One value per optimiser step: linear warm-up from `start_warmup_value` to `base` over
    `warmup_epochs`, then a half cosine from `base` to `final` over the remaining steps."""
    total = int(epochs * steps_per_epoch)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    ramp = np.linspace(start_warmup_value, base, warmup, endpoint=False) if warmup else np.array([])
    n = total - warmup
    t = np.arange(n)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(n, 1)))
    schedule = np.concatenate([ramp, cosine])
    assert len(schedule) == total
    return schedule
