"""Barlow Twins' views (Zbontar et al. 2021, Appendix; facebookresearch/barlowtwins `Transform`):
the same asymmetric pair as BYOL — random resized crop, flip, colour jitter (0.4, 0.4, 0.2, 0.1;
p 0.8), grayscale (p 0.2), then blur with p 1.0 / 0.1 and solarization with p 0.0 / 0.2 for the
first / second view."""

from __future__ import annotations

from common.augment import TwoViews, check_color, check_crop_scale


class BarlowTwinsViews(TwoViews):
    """[y1, y2] of a loaded batch, at the training image size (made on the training device)."""

    def __init__(self, args):
        jitter, gray_p = check_color(args)
        super().__init__(args.image_size, check_crop_scale("--crop-scale", args.crop_scale), jitter, gray_p)
