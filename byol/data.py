"""BYOL's views (Grill et al. 2020, Table 6): two random crops of the same image with flip,
colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8) and grayscale (p 0.2), made asymmetric on purpose —
view 1 is always blurred and never solarized, view 2 is blurred with p 0.1 and solarized with
p 0.2."""

from __future__ import annotations

from common.augment import TwoViews, check_color, check_crop_scale


class BYOLViews(TwoViews):
    """[view1, view2] of a loaded batch, at the training image size (made on the training device)."""

    def __init__(self, args):
        jitter, gray_p = check_color(args)
        super().__init__(args.image_size, check_crop_scale("--crop-scale", args.crop_scale), jitter, gray_p)
