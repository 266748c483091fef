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
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from colorization.lab import is_grayscale, nearest_bin, rgb_to_lab
from common.augment import ToNormalizedTensor, eval_transform

OUTPUT_STRIDE = 4  # the network predicts ab at ¼ of the input resolution (paper: 56 of 224)


class ColorizationViews:
    """PIL image -> one normalised RGB crop (random resized crop and flip; no colour changes)."""

    def __init__(self, image_size: int, scale=(0.5, 1.0)):
        self.transform = v2.Compose([
            v2.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC,
                                 antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            ToNormalizedTensor(),
        ])

    def __call__(self, image):
        return self.transform(image.convert("RGB"))

    def __repr__(self):
        return f"{type(self).__name__}({self.transform})"


def target_ab(lab: torch.Tensor) -> torch.Tensor:
    """The ab the loss is computed on: the image's ab averaged over OUTPUT_STRIDE² blocks."""
    return F.avg_pool2d(lab[:, 1:], OUTPUT_STRIDE)


def estimate_prior(dataset: Dataset, bins: torch.Tensor, image_size: int, num_images: int = 1000,
                   batch_size: int = 64) -> tuple[torch.Tensor, dict]:
    """Empirical distribution of the bins over the first `num_images` images of `dataset` (centre
    crops at `image_size`), grayscale images excluded. Returns (p of length Q, counts)."""
    transform = eval_transform(image_size)
    mean = torch.tensor(transform.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(transform.transforms[-1].std).view(1, 3, 1, 1)
    counts = torch.zeros(len(bins), dtype=torch.float64)
    n = min(num_images, len(dataset))
    used = gray = 0
    for start in range(0, n, batch_size):
        x = torch.stack([transform(dataset[i][0]) for i in range(start, min(n, start + batch_size))])
        lab = rgb_to_lab((x * std + mean).clamp(0, 1))
        ab = target_ab(lab)
        colour = ~is_grayscale(lab[:, 1:])
        gray += int((~colour).sum())
        if colour.any():
            counts += torch.bincount(nearest_bin(ab[colour], bins).flatten(), minlength=len(bins)).double()
            used += int(colour.sum())
    if used == 0:
        raise ValueError(f"none of the first {n} training images has colour (all have |a|, |b| <= 5); "
                         "colorization needs colour images")
    return (counts / counts.sum()).float(), {"prior_images": used, "prior_gray_images": gray}
