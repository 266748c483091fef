"""DINO-Twins' views: DINO's multi-crop (dino.data), unchanged. The teacher sees the 2 global crops;
the student sees every crop, and the Barlow Twins term pairs the student's crops (every pair with
`--bt-crops all`, as the original repository does, or the pair of global crops with `global`).
The original uses 2 global crops of scale (0.5, 1) and 3 local crops of scale (0.05, 0.5) on
32 px CIFAR-10 images: the defaults of dino_twins/train.py."""

from __future__ import annotations

from dino.data import DINOViews


class DINOTwinsViews(DINOViews):
    """[global1, global2, local1, …, localN] for one PIL image, from the parsed options."""
