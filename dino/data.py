"""DINO's views: multi-crop (Caron et al. 2021, Sec. 3.1) — two global crops at the training
image size, which the teacher sees, and `--local-crops-number` small local crops that only the
student sees, so that the student learns "local-to-global" correspondences."""

from __future__ import annotations

from common.augment import MultiCrop, check_color


class DINOViews(MultiCrop):
    """[global1, global2, local1, …, localN] of a loaded batch (made on the training device), from
    the parsed options (`--local-crops-size` 0 = crop_sizes' default)."""

    def __init__(self, args):
        jitter, gray_p = check_color(args)
        super().__init__(args.image_size, global_scale=tuple(args.global_crops_scale),
                         local_scale=tuple(args.local_crops_scale), n_local=args.local_crops_number,
                         local_size=getattr(args, "local_crops_size", 0) or None, jitter=jitter, gray_p=gray_p)
