"""Views for self-supervised training, made on the training device a whole batch at a time.

The DataLoader only decodes each image and resizes it to a fixed working size (`LoadImage`: uint8
C×H×W, so batches stack and pin). Every view is then made here, on the device the network trains
on (CPU or GPU), one group of views at a time, in a few batched tensor operations with random
parameters drawn per sample from a `torch.Generator` that the engine seeds from (seed, epoch,
batch, rank): a run resumed in the middle of an epoch sees exactly the same views, whatever the
device, the number of workers or the restart point.

The distributions are torchvision's (tests compare them on fixed seeds):
- random resized crop: `RandomResizedCrop.get_params` (10 tries of area ~ U(scale), log aspect
  ratio ~ U(log ratio), then the central fallback), resampled for the whole group by one
  `roi_align` call (bilinear with as many samples per output pixel as the crop is larger than
  the output, i.e. antialiased when shrinking; torchvision's default is bilinear too);
- horizontal flip with p 0.5;
- colour jitter (applied with p 0.8 in the SSL recipes): brightness, contrast, saturation ~
  U[max(0, 1 - s), 1 + s], hue ~ U[-h, h], in a random order per sample, each op with
  torchvision's formula on float images in [0, 1];
- random greyscale (ITU-R 601 luma, torchvision's weights);
- Gaussian blur with per-sample σ ~ U(σ_min, σ_max), separable, reflect padding;
- solarization of pixels >= 128/255 (PIL's threshold of 128 on 8-bit images);
- normalisation with the ImageNet statistics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.options import COLOR_JITTER, CROP_SCALE  # the CLI's defaults

# ImageNet statistics, used by every method and by eval so that features are comparable.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
SOLARIZE_THRESHOLD = 128 / 255

# (global, local) crop sizes: DINO's 224/96 and the small-image sizes the reports use.
_CROP_SIZES = {224: (224, 96), 96: (96, 48), 64: (64, 32), 32: (32, 16)}

RATIO = (3 / 4, 4 / 3)

# Below this largest sigma (in pixels) the 3-tap kernel's side weights are < 0.4 %: the blur moves
# an 8-bit pixel by a level or two at most, so it is left out (32 px and smaller crops).
MIN_BLUR_SIGMA = 1 / 3


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


def working_size(image_size: int) -> int:
    """The side the loader resizes every image to before views are cut from it. Small images
    (<= 64 px) are used at the training size; larger ones keep the 256/224 margin of ImageNet
    pipelines, so that crops of the whole image stay possible."""
    image_size = _check_size(image_size)
    return image_size if image_size <= 64 else round(image_size * 256 / 224)


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel of about 10% of the image side (SimCLR / BYOL: 23 px at 224), at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def blur_sigma(image_size: int) -> tuple[float, float]:
    """The papers' sigma ~ U(0.1, 2.0) is in pixels of a 224 px crop; scaled to the crop side so
    that a small image is blurred as much, relative to its size, as the papers blur ImageNet. An
    unscaled sigma of 2 px on a 16 px crop is a box filter over a fifth of the image, which wipes
    out the shapes the network should learn (and SimCLR trains CIFAR-10 without blur)."""
    return 0.1 * image_size / 224, 2.0 * image_size / 224


# --- the loader side: decode and resize, nothing random ------------------------------------------

class LoadImage:
    """PIL image -> uint8 3×size×size tensor: short side resized to `size` (bilinear, antialiased)
    and centre-cropped; what every DataLoader does before the views (training and evaluation)."""

    def __init__(self, size: int):
        self.size = _check_size(size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        w, h = image.size
        s = self.size
        if (w, h) != (s, s):
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            image = image.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - s) // 2, (nh - s) // 2
            image = image.crop((left, top, left + s, top + s))
        return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size})"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float) B×3×H×W -> float32 in [0, 1]."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> ImageNet-normalised (a new tensor)."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def as_input(images: torch.Tensor) -> torch.Tensor:
    """The evaluation view of a loaded batch: the loader's uint8 centre crop, normalised on the
    device (a float batch is taken as already normalised)."""
    return normalize(to_float(images)) if images.dtype == torch.uint8 else images


class CropFlip:
    """Random resized crop and horizontal flip, normalised: the augmentation of supervised
    training on top of a frozen or fine-tuned backbone (and of Colorization, where colour is the
    label and must not be touched)."""

    def __init__(self, size: int, scale=(0.08, 1.0)):
        self.size, self.scale = _check_size(size), tuple(scale)

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = to_float(images)
        boxes = crop_boxes(len(x), x.shape[-2], x.shape[-1], self.scale, RATIO, g)
        return normalize(random_flip(resized_crop(x, boxes, self.size), g).clamp_(0, 1))

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, flip p 0.5)"


def eval_transform(image_size: int) -> LoadImage:
    """The loader transform of evaluation: resize the short side to `image_size` and centre-crop;
    `normalize(to_float(batch))` on the device finishes the view."""
    return LoadImage(image_size)


# --- random parameters (on the CPU generator, then moved: identical on every device) -----------

def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _bernoulli(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def crop_boxes(n: int, height: int, width: int, scale, ratio, g: torch.Generator) -> torch.Tensor:
    """n boxes (x1, y1, x2, y2) in pixels with torchvision's RandomResizedCrop.get_params: up to
    10 tries per sample, each accepted when the crop fits; otherwise the central crop whose aspect
    ratio is clamped to `ratio`."""
    tries = 10
    area = height * width
    target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, tries, generator=g, dtype=torch.float64)
    aspect = log_ratio.exp()
    w = (target_area * aspect).sqrt().round()
    h = (target_area / aspect).sqrt().round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)  # the position inside the room left
    rows = torch.arange(n)
    w, h = w[rows, first.clamp(min=0)], h[rows, first.clamp(min=0)]
    # fallback: the whole image, cropped centrally to the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    fallback = first < 0
    w = torch.where(fallback, torch.full_like(w, fw), w)
    h = torch.where(fallback, torch.full_like(h, fh), h)
    # torch.randint(0, room + 1) as a floor of a uniform draw: every offset equally likely
    top = torch.floor(u[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1)).clamp(max=width - w)
    top = torch.where(fallback, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(fallback, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([left, top, left + w, top + h], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop every box of `boxes` (one per image of `x`, or one per image repeated) and resample it
    to size×size, for the whole batch in one roi_align call."""
    from torchvision.ops import roi_align

    n = len(boxes)
    index = torch.arange(n, dtype=boxes.dtype) % len(x)
    rois = torch.cat([index[:, None], boxes], 1).to(device=x.device, dtype=x.dtype)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


# --- the colour operations: torchvision's formulas, one factor per sample -----------------------

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """B×3×H×W -> B×1×H×W luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend: (f·x + (1 - f)·other) clamped to [0, 1], one factor per sample."""
    return torch.lerp(other.expand_as(x), x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_brightness(x, factor):
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x):
    """torchvision's _rgb2hsv, computed through the max channel: hue = (the difference of the two
    other channels, in cyclic order) / chroma + 2·(index of the max channel), in sixths of a turn.
    torch.max returns the first maximal channel, the r > g > b priority of torchvision's formula."""
    maxc, argmax = x.max(1, keepdim=True)
    chroma = maxc - x.min(1, keepdim=True).values
    s = chroma / torch.where(maxc == 0, 1.0, maxc)
    diff = (x[:, [1, 2, 0]] - x[:, [2, 0, 1]]).gather(1, argmax)
    h = torch.remainder((diff / torch.where(chroma == 0, 1.0, chroma) + 2.0 * argmax) / 6.0, 1.0)
    h = torch.where(chroma == 0, 0.0, h)  # grey pixels: hue 0, as torchvision (and s = 0 ignores it)
    return h.squeeze(1), s.squeeze(1), maxc.squeeze(1)


def _hsv_to_rgb(h, s, v):
    """The closed form of torchvision's six-sector table: channel n (5, 3, 1 for r, g, b) is
    v - v·s·clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6."""
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
                        + 6.0 * h.unsqueeze(1), 6.0)
    return v.unsqueeze(1) * (1 - s.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1))


def adjust_hue(x, factor):
    """torchvision's adjust_hue: rotate the hue by `factor` turns (in [-0.5, 0.5])."""
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + factor.view(-1, 1, 1), 1.0), s, v)


COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.to(x.device).view(-1, 1, 1, 1)


def _apply_where(x: torch.Tensor, mask: torch.Tensor, op, *params) -> torch.Tensor:
    """x with op applied to the samples where `mask` (a CPU bool vector) is set, computed on those
    samples only; x is updated in place (the views own their tensors)."""
    if not bool(mask.any()):
        return x
    if bool(mask.all()):
        return op(x, *[p.to(x.device, x.dtype) for p in params])
    idx = mask.nonzero().squeeze(1)
    dev_idx = idx.to(x.device)
    return x.index_copy_(0, dev_idx, op(x.index_select(0, dev_idx), *[p[idx].to(x.device, x.dtype) for p in params]))


def jitter_params(n: int, brightness, contrast, saturation, hue, p: float, g: torch.Generator):
    """ColorJitter.get_params per sample, applied with probability p: (applied n, order n×4 (a
    uniform random permutation of the four ops), factors [brightness, contrast, saturation, hue])."""
    apply = _bernoulli(n, p, g)
    order = torch.argsort(torch.rand(n, 4, generator=g), 1)
    strengths = (brightness, contrast, saturation)
    factors = [_uniform(n, max(0.0, 1 - s), 1 + s, g) for s in strengths] + [_uniform(n, -hue, hue, g)]
    return apply, order, factors


def color_jitter(x, brightness, contrast, saturation, hue, p: float, g: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter applied with probability p, per sample: the four factors and a
    random order of the four operations are drawn for each image; at each of the four positions
    every op runs on the samples that have it there."""
    apply, order, factors = jitter_params(len(x), brightness, contrast, saturation, hue, p, g)
    active = [apply & (s > 0) for s in (brightness, contrast, saturation, hue)]
    x = x.clone()  # updated in place below; the caller's batch stays as it was
    for position in range(4):
        for k, op in enumerate(COLOR_OPS):
            x = _apply_where(x, active[k] & (order[:, position] == k), op, factors[k])
    return x


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.where(_mask(_bernoulli(len(x), p, g), x), grayscale(x), x)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's gaussian_blur (odd kernel, reflect padding) with one sigma per sample, as one
    separable grouped convolution for the batch."""
    n, c, h, w = x.shape
    r = kernel_size // 2
    t = torch.linspace(-r, r, kernel_size, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.to(x.device, x.dtype)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c)×K
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)  # vertical
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)  # horizontal
    return y.view(n, c, h, w)


def blur_params(n: int, p: float, sigma_range, g: torch.Generator):
    """(applied n, sigma n ~ U(sigma_range)) of GaussianBlur applied with probability p."""
    return _bernoulli(n, p, g), _uniform(n, sigma_range[0], sigma_range[1], g)


def random_blur(x: torch.Tensor, p: float, sigma_range, kernel_size: int, g: torch.Generator) -> torch.Tensor:
    apply, sigma = blur_params(len(x), p, sigma_range, g)
    return _apply_where(x, apply, lambda t, s: gaussian_blur(t, kernel_size, s), sigma)


def solarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= SOLARIZE_THRESHOLD, 1.0 - x, x)


def random_solarize(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.where(_mask(_bernoulli(len(x), p, g), x), solarize(x), x)


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return torch.where(_mask(_bernoulli(len(x), p, g), x), x.flip(-1), x)


# --- the views -----------------------------------------------------------------------------------

class SSLView:
    """One group of the SSL views (BYOL Table 6, SimCLR, DINO): random resized crop, flip, colour
    jitter with p `jitter_p`, greyscale with p `gray_p`, blur with p `blur_p`, solarization with
    p `solarize_p`, normalisation. `copies` crops are cut from every image (DINO's local crops)."""

    def __init__(self, size: int, scale=CROP_SCALE, blur_p: float = 0.0, solarize_p: float = 0.0,
                 jitter=COLOR_JITTER, jitter_p: float = 0.8, gray_p: float = 0.2, copies: int = 1):
        self.size = _check_size(size)
        self.scale, self.jitter, self.jitter_p, self.gray_p = tuple(scale), tuple(jitter), jitter_p, gray_p
        self.solarize_p, self.copies = solarize_p, copies
        self.sigma = blur_sigma(size)
        # a blur too small to move an 8-bit pixel is skipped (and draws nothing)
        self.blur_p = blur_p if self.sigma[1] >= MIN_BLUR_SIGMA else 0.0
        self.kernel_size = blur_kernel_size(size)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x: B×3×H×W float in [0, 1] -> (copies·B)×3×size×size normalised, copy-major."""
        n = len(x) * self.copies
        boxes = crop_boxes(n, x.shape[-2], x.shape[-1], self.scale, RATIO, g)
        v = random_flip(resized_crop(x, boxes, self.size), g)
        v = color_jitter(v, *self.jitter, p=self.jitter_p, g=g)
        v = random_grayscale(v, self.gray_p, g)
        if self.blur_p > 0:
            v = random_blur(v, self.blur_p, self.sigma, self.kernel_size, g)
        if self.solarize_p > 0:
            v = random_solarize(v, self.solarize_p, g)
        return normalize(v)

    def __repr__(self):
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, jitter={self.jitter} p {self.jitter_p}, "
                f"gray_p={self.gray_p}, blur_p={self.blur_p} sigma={tuple(round(s, 3) for s in self.sigma)}, "
                f"solarize_p={self.solarize_p}, copies={self.copies})")


class Views:
    """What a method hands the engine: `load` (the DataLoader's per-image decode and resize) and
    `__call__(images, generator)`, the batched views of a uint8 batch on the training device."""

    def __init__(self, work_size: int):
        self.load = LoadImage(work_size)

    def __call__(self, images: torch.Tensor, g: torch.Generator):
        raise NotImplementedError


class TwoViews(Views):
    """BYOL's asymmetric pair (also Barlow Twins'): view 1 always blurred and never solarized,
    view 2 blurred with p 0.1 and solarized with p 0.2."""

    def __init__(self, image_size: int, scale=CROP_SCALE, jitter=COLOR_JITTER, gray_p: float = 0.2):
        super().__init__(working_size(image_size))
        self.view1 = SSLView(image_size, scale, blur_p=1.0, solarize_p=0.0, jitter=jitter, gray_p=gray_p)
        self.view2 = SSLView(image_size, scale, blur_p=0.1, solarize_p=0.2, jitter=jitter, gray_p=gray_p)

    def __call__(self, images, g):
        x = to_float(images)
        return [self.view1(x, g), self.view2(x, g)]

    def __repr__(self):
        return f"{type(self).__name__}(load={self.load},\n  view1={self.view1},\n  view2={self.view2})"


class MultiCrop(Views):
    """DINO's multi-crop (Caron et al. 2021, DataAugmentationDINO): two global crops (one always
    blurred; one rarely blurred and sometimes solarized) and `n_local` small local crops (blur p
    0.5), each group made in one pass. `local_size` defaults to crop_sizes(image_size)[1]."""

    def __init__(self, image_size: int, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), n_local: int = 8,
                 local_size: int | None = None, jitter=COLOR_JITTER, gray_p: float = 0.2):
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        super().__init__(working_size(image_size))
        global_size, default_local = crop_sizes(image_size)
        self.n_local = n_local
        self.global1 = SSLView(global_size, global_scale, blur_p=1.0, jitter=jitter, gray_p=gray_p)
        self.global2 = SSLView(global_size, global_scale, blur_p=0.1, solarize_p=0.2, jitter=jitter, gray_p=gray_p)
        self.local = SSLView(local_size or default_local, local_scale, blur_p=0.5, jitter=jitter, gray_p=gray_p,
                             copies=max(n_local, 1))

    def __call__(self, images, g):
        x = to_float(images)
        views = [self.global1(x, g), self.global2(x, g)]
        if self.n_local:
            views += list(self.local(x, g).chunk(self.n_local))
        return views

    def __repr__(self):
        return (f"{type(self).__name__}(load={self.load}, n_local={self.n_local},\n  global1={self.global1},\n"
                f"  global2={self.global2},\n  local={self.local})")


def check_color(args) -> tuple[tuple[float, ...], float]:
    b, c, s, h = args.color_jitter
    if min(b, c, s) < 0 or not 0 <= h <= 0.5:
        raise SystemExit(f"error: --color-jitter {b} {c} {s} {h}: B, C, S must be >= 0 and H in [0, 0.5]")
    if not 0 <= args.gray_p <= 1:
        raise SystemExit(f"error: --gray-p {args.gray_p} must be in [0, 1]")
    return (b, c, s, h), args.gray_p


def check_crop_scale(option: str, scale) -> tuple[float, float]:
    """(MIN, MAX) of a crop-scale option, or a one-line error naming the option."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise SystemExit(f"error: {option} {lo} {hi} must satisfy 0 < MIN <= MAX <= 1")
    return lo, hi
