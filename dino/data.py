"""DINO's views: multi-crop (Caron et al. 2021, Sec. 3.1) — two global crops at the training
image size, which the teacher sees, and `--local-crops-number` small local crops that only the
student sees, so that the student learns "local-to-global" correspondences."""

from __future__ import annotations

from common.augment import MultiCrop


class DINOViews(MultiCrop):
    """[global1, global2, local1, …, localN] for one PIL image, from the parsed options."""

    def __init__(self, args):
        super().__init__(args.image_size, global_scale=tuple(args.global_crops_scale),
                         local_scale=tuple(args.local_crops_scale), n_local=args.local_crops_number)
