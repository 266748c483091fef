"""Colorization data: the training views and the empirical colour prior (Zhang et al. 2016).

The views are ImageNet-normalised RGB crops, exactly what the evaluation transform produces: the
model takes the lightness L from them itself (a fixed first layer) and uses their ab as the
target, so no colour augmentation may touch them (colour is the label).

The prior p of the ab bins (Sec. 2.2) is the histogram of the nearest bin of every target pixel
(at the ¼ resolution the loss sees) over the first `--prior-images` training images, leaving out
grayscale images, which have no colour to learn.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from colorization.lab import is_grayscale, nearest_bin, rgb_to_lab
from common.augment import CropFlip, Views, eval_transform, to_float, working_size

OUTPUT_STRIDE = 4  # the network predicts ab at ¼ of the input resolution (paper: 56 of 224)


class ColorizationViews(Views):
    """A loaded batch -> one normalised RGB crop per image (random resized crop and flip, made on
    the training device; no colour changes: colour is the label)."""

    def __init__(self, image_size: int, scale=(0.5, 1.0)):
        super().__init__(working_size(image_size))
        self.crop = CropFlip(image_size, scale)

    def __call__(self, images, g):
        return self.crop(images, g)

    def __repr__(self):
        return f"{type(self).__name__}(load={self.load}, {self.crop})"


def target_ab(lab: torch.Tensor) -> torch.Tensor:
    """The ab the loss is computed on: every OUTPUT_STRIDE-th pixel, as the reference training code
    (`ab[:, :, ::4, ::4]`), not a block average, which at a red/blue edge would be a colour of
    neither region."""
    return lab[:, 1:, ::OUTPUT_STRIDE, ::OUTPUT_STRIDE]


def estimate_prior(dataset: Dataset, bins: torch.Tensor, image_size: int, num_images: int = 1000,
                   batch_size: int = 64) -> tuple[torch.Tensor, dict]:
    """Empirical distribution of the bins over the first `num_images` images of `dataset` (centre
    crops at `image_size`), grayscale images excluded. Returns (p of length Q, counts)."""
    load = eval_transform(image_size)
    counts = torch.zeros(len(bins), dtype=torch.float64)
    n = min(num_images, len(dataset))
    used = gray = 0
    for start in range(0, n, batch_size):
        x = torch.stack([load(dataset[i][0]) for i in range(start, min(n, start + batch_size))])
        lab = rgb_to_lab(to_float(x))
        ab = target_ab(lab)
        colour = ~is_grayscale(ab)  # tested on the subsampled target, as the reference
        gray += int((~colour).sum())
        if colour.any():
            counts += torch.bincount(nearest_bin(ab[colour], bins).flatten(), minlength=len(bins)).double()
            used += int(colour.sum())
    if used == 0:
        raise ValueError(f"none of the first {n} training images has colour (all have |a|, |b| <= 5); "
                         "colorization needs colour images")
    return (counts / counts.sum()).float(), {"prior_images": used, "prior_gray_images": gray}
