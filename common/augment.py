"""Views for self-supervised training and evaluation, from torchvision.transforms.v2.

PIL image in, normalised float32 C×H×W tensors out. Every random choice is drawn from torch's
global RNG (never python's `random` or numpy), so the loader can make each view a function of
(seed, epoch, sample index) by seeding torch per sample.

Order matters for speed on small images: crop and resize the 8-bit image first, then the colour
operations on the small 8-bit crop, and only then convert to float and normalise.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

# ImageNet statistics, used by every method and by eval so that features are comparable.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# (global, local) crop sizes: DINO's 224/96 and the small-image sizes the reports use.
_CROP_SIZES = {224: (224, 96), 96: (96, 48), 64: (64, 32), 32: (32, 16)}


def _check_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image size must be an integer >= 8, got {image_size!r}")
    return image_size


def crop_sizes(image_size: int) -> tuple[int, int]:
    """(global, local) crop sizes. Sizes outside the table keep DINO's local/global ratio 96/224
    (about 0.43), rounded to an even number and at least 8 pixels."""
    image_size = _check_size(image_size)
    if image_size in _CROP_SIZES:
        return _CROP_SIZES[image_size]
    return image_size, max(8, 2 * round(0.43 * image_size / 2))


class ToNormalizedTensor:
    """v2.ToImage + v2.ToDtype(float32, scale=True) + v2.Normalize(MEAN, STD) in one step: on a
    32 px image the per-transform overhead of three v2 calls costs three times the arithmetic."""

    def __init__(self, mean=MEAN, std=STD):
        self.mean = mean
        self.std = std
        self._shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self._scale = 1 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255)

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, Image.Image):
            x = np.asarray(image, dtype=np.float32)
            x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1) if x.ndim == 3 else x[None]))
            # A 1-channel image broadcasts against the 3 means: it becomes 3 equal grey channels.
            return (x - self._shift) * self._scale
        x = v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True)
        return v2.functional.normalize(x, list(self.mean), list(self.std))

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class GaussianBlur:
    """v2.GaussianBlur's maths (odd kernel, reflect padding, sigma ~ U(sigma) from torch's RNG,
    rounded back to 8 bits) computed separably with numpy on the PIL image: on small images the
    PIL -> tensor -> PIL round trip of v2.GaussianBlur costs ten times the filter itself."""

    def __init__(self, kernel_size: int, sigma=(0.1, 2.0)):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.sigma = tuple(sigma)

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        r = self.kernel_size // 2
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
        w /= w.sum()
        x = np.asarray(image, dtype=np.float32)
        h, wd = x.shape[:2]
        x = np.pad(x, ((r, r), (r, r)) + ((0, 0),) * (x.ndim - 2), mode="reflect")
        x = sum(w[i] * x[i:i + h] for i in range(self.kernel_size))  # vertical pass
        x = sum(w[i] * x[:, i:i + wd] for i in range(self.kernel_size))  # horizontal pass
        return Image.fromarray(np.round(x).clip(0, 255).astype(np.uint8), image.mode)

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, sigma={self.sigma})"


def eval_transform(image_size: int) -> v2.Compose:
    """Resize the short side, centre-crop. From 96 px up the usual 256/224 margin is kept; below,
    the image is resized straight to the crop so that a tiny image loses nothing. Smaller images
    are resized up."""
    image_size = _check_size(image_size)
    resize = round(image_size * 256 / 224) if image_size >= 96 else image_size
    return v2.Compose([
        v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(image_size),
        ToNormalizedTensor(),
    ])


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel of about 10% of the image side (SimCLR / BYOL: 23 px at 224), at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def blur_sigma(image_size: int) -> tuple[float, float]:
    """The papers' sigma ~ U(0.1, 2.0) is in pixels of a 224 px crop; scaled to the crop side so
    that a small image is blurred as much, relative to its size, as the papers blur ImageNet. An
    unscaled sigma of 2 px on a 16 px crop is a box filter over a fifth of the image, which wipes
    out the shapes the network should learn (and SimCLR trains CIFAR-10 without blur)."""
    return 0.1 * image_size / 224, 2.0 * image_size / 224


# Below this largest sigma (in pixels) the 3-tap kernel's side weights are < 0.4 %: the blur moves
# an 8-bit pixel by a level or two at most, so it is left out (32 px and smaller crops) and costs
# nothing.
MIN_BLUR_SIGMA = 1 / 3


# The papers' random-resized-crop area range of the two-view methods (BYOL, Barlow Twins).
CROP_SCALE = (0.08, 1.0)


def byol_view(image_size: int, blur_p: float, solarize_p: float, scale=CROP_SCALE) -> v2.Compose:
    """One random view of BYOL (Grill et al. 2020, Table 6) / DINO: crop, flip, colour jitter,
    grayscale, blur with probability `blur_p`, solarize with probability `solarize_p`."""
    image_size = _check_size(image_size)
    ops = [
        v2.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    sigma = blur_sigma(image_size)
    if blur_p > 0 and sigma[1] >= MIN_BLUR_SIGMA:
        ops.append(v2.RandomApply([GaussianBlur(blur_kernel_size(image_size), sigma)], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # the image is still 8-bit here
    return v2.Compose(ops + [ToNormalizedTensor()])


def add_crop_scale_argument(parser) -> None:
    """--crop-scale of the two-view methods (BYOL, Barlow Twins)."""
    parser.add_argument("--crop-scale", type=float, nargs=2, default=CROP_SCALE, metavar=("MIN", "MAX"),
                        help="area range of both random resized crops, relative to the image (papers: 0.08 1). "
                             "A larger MIN makes the two views share more of the image: easier to match, "
                             "which short runs on tiny images learn from sooner")


def check_crop_scale(option: str, scale) -> tuple[float, float]:
    """(MIN, MAX) of a crop-scale option, or a one-line error naming the option."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise SystemExit(f"error: {option} {lo} {hi} must satisfy 0 < MIN <= MAX <= 1")
    return lo, hi


class TwoViews:
    """BYOL's asymmetric pair: view 1 always blurred and never solarized, view 2 blurred with
    p 0.1 and solarized with p 0.2."""

    def __init__(self, image_size: int, scale=CROP_SCALE):
        self.view1 = byol_view(image_size, blur_p=1.0, solarize_p=0.0, scale=scale)
        self.view2 = byol_view(image_size, blur_p=0.1, solarize_p=0.2, scale=scale)

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.view1(image), self.view2(image)]

    def __repr__(self):
        return f"{type(self).__name__}(\n  view1={self.view1},\n  view2={self.view2})"


class MultiCrop:
    """DINO's multi-crop (Caron et al. 2021, DataAugmentationDINO): two global crops (one always
    blurred; one rarely blurred and sometimes solarized) and `n_local` small local crops."""

    def __init__(self, image_size: int, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), n_local: int = 8):
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        global_size, local_size = crop_sizes(image_size)
        self.n_local = n_local
        self.global1 = byol_view(global_size, blur_p=1.0, solarize_p=0.0, scale=global_scale)
        self.global2 = byol_view(global_size, blur_p=0.1, solarize_p=0.2, scale=global_scale)
        self.local = byol_view(local_size, blur_p=0.5, solarize_p=0.0, scale=local_scale)

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.n_local)]

    def __repr__(self):
        return (f"{type(self).__name__}(n_local={self.n_local},\n  global1={self.global1},\n"
                f"  global2={self.global2},\n  local={self.local})")
