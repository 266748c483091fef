"""The colour maths of Zhang, Isola & Efros 2016 ("Colorful Image Colorization"), in torch.

- sRGB <-> CIE Lab (D65 white, sRGB transfer curve), batched over any leading dimensions with the
  colour channels at dim -3 (C×H×W or B×C×H×W), with the constants scikit-image uses.
- The Q = 313 in-gamut ab bins (Sec. 2.1): a 10-unit grid over ab, kept where some lightness
  gives a displayable colour. Computed here, not downloaded.
- Soft-encoding of a ground-truth ab to its nearest bins with a Gaussian kernel (Sec. 2.1).
- Class rebalancing (Sec. 2.2, Eq. 3-4): weights from the smoothed empirical prior of the bins.
- Annealed-mean decoding (Sec. 2.3, Eq. 5): H(Z) = E[f_T(Z)], T = 0.38.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Linear sRGB -> XYZ (IEC 61966-2-1, the digits scikit-image uses) and the D65 reference white.
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
              (0.212671, 0.715160, 0.072169),
              (0.019334, 0.119193, 0.950227))
WHITE_D65 = (0.95047, 1.0, 1.08883)
DELTA = 6 / 29  # CIE Lab's switch between the cube root and its linear toe

GRID = 10.0          # ab bin spacing (paper: grid size 10)
GAMUT_DELTA_E = 14.0  # see ab_bins()
L_CENTER, L_NORM = 50.0, 100.0  # network input (L - 50) / 100, as the released PyTorch code
AB_MAX = 110.0        # |a|, |b| of the outermost bin centres


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.04045, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.0031308, 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * c)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > DELTA ** 3, t.clamp(min=DELTA ** 3) ** (1 / 3), t / (3 * DELTA ** 2) + 4 / 29)


def _f_inv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > DELTA, f ** 3, 3 * DELTA ** 2 * (f - 4 / 29))


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m (3×3) applied to the channel dim (-3) of x (…×3×H×W)."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (…×3×H×W) -> Lab: L in [0, 100], a and b roughly in [-110, 110]."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_lab expects 3 colour channels at dim -3, got shape {tuple(rgb.shape)}")
    xyz = _apply(_matrix(RGB_TO_XYZ, rgb), _srgb_to_linear(rgb))
    xyz = xyz / _matrix(WHITE_D65, rgb).view(3, 1, 1)
    fx, fy, fz = _f(xyz).unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab (…×3×H×W) -> sRGB; `clip` maps out-of-gamut colours to the nearest face of [0, 1]³."""
    if lab.shape[-3] != 3:
        raise ValueError(f"lab_to_rgb expects L, a, b at dim -3, got shape {tuple(lab.shape)}")
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    xyz = _f_inv(f) * _matrix(WHITE_D65, lab).view(3, 1, 1)
    linear = _apply(torch.linalg.inv(_matrix(RGB_TO_XYZ, lab).double()).to(lab.dtype), xyz)
    if clip:
        linear = linear.clamp(0.0, 1.0)
    return _linear_to_srgb(linear)


def rgb_to_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """L only (…×1×H×W), from the luminance Y alone, as rgb_to_lab computes it."""
    y = _apply(_matrix(RGB_TO_XYZ[1:2], rgb), _srgb_to_linear(rgb))
    return 116 * _f(y) - 16


class LightnessInput:
    """A fixed, parameter-free first layer: ImageNet-normalised RGB (what every loader and eval
    transform produce) -> the network input (L - 50) / 100; 1-channel input passes unchanged.

    Used as a forward pre-hook on a 1-channel backbone's first layer (conv1 / patch_embed), it
    lets the colorization encoder take the same 3-channel batches as every other backbone while
    its state dict stays that of `build_backbone(..., in_chans=1)`."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] == 1:
            return x
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        rgb = (x.float() * std + mean).clamp(0.0, 1.0)
        return ((rgb_to_lightness(rgb) - L_CENTER) / L_NORM).to(x.dtype)

    def hook(self, module: nn.Module, args: tuple) -> tuple:
        """forward pre-hook signature"""
        return (self(args[0]), *args[1:])


# --- the 313 ab bins ------------------------------------------------------------------------------

@functools.cache
def _ab_bins_np(grid: float, delta_e: float) -> np.ndarray:
    ticks = np.arange(-AB_MAX, AB_MAX + grid / 2, grid)
    ab = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    lightness = np.arange(0.0, 101.0)
    lab = torch.from_numpy(np.concatenate([np.repeat(lightness, len(ab))[:, None],
                                           np.tile(ab, (len(lightness), 1))], 1)).T.reshape(1, 3, -1, 1)
    shown = rgb_to_lab(lab_to_rgb(lab, clip=True))  # the displayable colour closest per channel
    error = (shown - lab).squeeze(-1).squeeze(0).norm(dim=0).reshape(len(lightness), len(ab))
    keep = (error.min(0).values <= delta_e).numpy()
    return ab[keep]


def ab_bins(grid: float = GRID, delta_e: float = GAMUT_DELTA_E) -> torch.Tensor:
    """The quantised ab output space, Q×2 (float32), sorted by a then b.

    The paper keeps the grid points "in gamut" without saying how it tested that. Here a centre
    (a, b) is kept when, for some integer L in 0..100, the colour (L, a, b) is within ΔE*76 =
    `delta_e` of the sRGB colour it is displayed as (its RGB clipped to [0, 1]). The count grows
    with the tolerance: a strict test (ΔE 1e-6) keeps 225 centres, and every tolerance from 13.88
    to 14.25 keeps exactly the paper's Q = 313 (the bounding box is a in [-90, 110], b in
    [-110, 100]).
    """
    return torch.from_numpy(_ab_bins_np(float(grid), float(delta_e))).float()


# --- soft-encoding, the prior and its weights -----------------------------------------------------

def _sq_dist_to_bins(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """ab B×2×H×W, bins Q×2 -> squared distances B×Q×H×W."""
    diff = ab.unsqueeze(1) - bins.to(ab).view(1, -1, 2, 1, 1)
    return diff.pow(2).sum(2)


def nearest_bin(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Index of the closest bin per pixel, B×H×W (int64)."""
    return _sq_dist_to_bins(ab, bins).argmin(1)


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, sigma: float = 5.0, neighbours: int = 5) -> torch.Tensor:
    """Z = H⁻¹(Y) (Sec. 2.1): each pixel's ab spread over its `neighbours` nearest bins with a
    Gaussian of width `sigma` (in ab units), normalised to sum to 1. B×2×H×W -> B×Q×H×W."""
    if not 1 <= neighbours <= len(bins):
        raise ValueError(f"neighbours must be in 1..{len(bins)}, got {neighbours}")
    d2 = _sq_dist_to_bins(ab.float(), bins)
    near_d2, near_idx = d2.topk(neighbours, dim=1, largest=False)
    w = torch.softmax(-near_d2 / (2 * sigma ** 2), dim=1)  # exp(-d²/2σ²), normalised
    return torch.zeros_like(d2).scatter_(1, near_idx, w)


def smooth_prior(p: torch.Tensor, bins: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """The empirical prior p smoothed by a Gaussian G_σ over ab (Eq. 4): each bin's mass is spread
    over the bins with weights exp(-d²/2σ²), normalised per source so the total stays 1."""
    b = bins.to(p)
    kernel = torch.exp(-torch.cdist(b, b).pow(2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(0, keepdim=True)
    return kernel @ p


def rebalance_weights(p_smooth: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """w ∝ ((1 - λ) p̃ + λ / Q)⁻¹, normalised so that E_p̃[w] = Σ_q p̃_q w_q = 1 (Eq. 4)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    q = p_smooth.numel()
    w = 1.0 / ((1 - lam) * p_smooth + lam / q)
    return w / (p_smooth * w).sum()


def is_grayscale(ab: torch.Tensor, threshold: float = 5.0) -> torch.Tensor:
    """Per image (B×2×H×W -> B bool): no pixel has |a| or |b| above `threshold` (the released
    code's test; such images carry no colour to learn and are left out)."""
    return ab.abs().flatten(1).amax(1) <= threshold


# --- decoding -------------------------------------------------------------------------------------

def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, T: float = 0.38) -> torch.Tensor:
    """H(Z) = E[f_T(Z)] with f_T(z) = exp(log z / T) / Σ exp(log z / T) (Eq. 5): T = 1 is the
    mean (desaturated), T -> 0 the mode (vivid but patchy); 0.38 is the paper's compromise.
    softmax(logits / T) equals f_T(softmax(logits)). B×Q×H×W -> ab B×2×H×W."""
    if T <= 0:
        raise ValueError(f"the annealing temperature must be > 0, got {T}")
    probs = torch.softmax(logits.float() / T, dim=1)
    return torch.einsum("bqhw,qc->bchw", probs, bins.to(probs))


def lab_from_l_ab(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Join L (B×1×H×W) with ab at any resolution (bilinearly resized to L's)."""
    if ab.shape[-2:] != lightness.shape[-2:]:
        ab = F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([lightness, ab], 1)
