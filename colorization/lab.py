"""The colour maths of Zhang, Isola & Efros 2016 ("Colorful Image Colorization"), in torch.

- sRGB <-> CIE Lab and the encoder's lightness input come from common/color.py (shared with the
  backbones, which import no method); they are re-exported here.
- The Q = 313 in-gamut ab bins (Sec. 2.1): the published centres (pts_in_hull.npy of
  richzhang/colorization) in the published order, written out here rather than downloaded.
- Soft-encoding of a ground-truth ab to its nearest bins with a Gaussian kernel (Sec. 2.1).
- Class rebalancing (Sec. 2.2, Eq. 3-4): weights from the smoothed empirical prior of the bins.
- Annealed-mean decoding (Sec. 2.3, Eq. 5): H(Z) = E[f_T(Z)], T = 0.38.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from common.color import L_CENTER, L_NORM, LightnessInput, lab_to_rgb, rgb_to_lab, rgb_to_lightness  # noqa: F401

GRID = 10.0          # ab bin spacing (paper: grid size 10)
AB_MAX = 110.0        # |a|, |b| of the outermost grid points the gamut test looks at

# The published Q = 313 bin centres, richzhang/colorization resources/pts_in_hull.npy, row by row:
# a (step 10) -> the first and last b (step 10) of its run of centres. The file lists them sorted by
# a, then by b, which is the order of every published per-bin array (prior_probs.npy, the 313
# logits of the released models).
PTS_IN_HULL_B_RANGE = {
    -90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100), -40: (-40, 100),
    -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100), 10: (-80, 90), 20: (-80, 90),
    30: (-90, 90), 40: (-100, 90), 50: (-100, 80), 60: (-110, 80), 70: (-110, 80), 80: (-110, 70),
    90: (-110, 70), 100: (-90, 0),
}


# --- the 313 ab bins ------------------------------------------------------------------------------

def ab_bins() -> torch.Tensor:
    """The quantised ab output space: the published 313 centres in the published order, Q×2
    (float32), so that the published prior and released decoders index the same colours."""
    return torch.tensor([(a, b) for a, (lo, hi) in PTS_IN_HULL_B_RANGE.items() for b in range(lo, hi + 1, 10)],
                        dtype=torch.float32)


@functools.cache
def _gamut_grid_np(grid: float, delta_e: float) -> np.ndarray:
    ticks = np.arange(-AB_MAX, AB_MAX + grid / 2, grid)
    ab = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    lightness = np.arange(0.0, 101.0)
    lab = torch.from_numpy(np.concatenate([np.repeat(lightness, len(ab))[:, None],
                                           np.tile(ab, (len(lightness), 1))], 1)).T.reshape(1, 3, -1, 1)
    shown = rgb_to_lab(lab_to_rgb(lab, clip=True))  # the displayable colour closest per channel
    error = (shown - lab).squeeze(-1).squeeze(0).norm(dim=0).reshape(len(lightness), len(ab))
    keep = (error.min(0).values <= delta_e).numpy()
    return ab[keep]


def gamut_grid(delta_e: float, grid: float = GRID) -> torch.Tensor:
    """Grid centres that an sRGB gamut test keeps, sorted by a then b: (a, b) is kept when, for
    some integer L in 0..100, (L, a, b) is within ΔE*76 = `delta_e` of the sRGB colour it is
    displayed as (its RGB clipped to [0, 1]). The paper does not say how its gamut was computed;
    this test with ΔE 14 also keeps 313 centres, but 3 of them differ from the published set
    (it has (-60, 100), (80, 80), (110, -60) where pts_in_hull has (40, 90), (100, -90), (100, 0)),
    which is why ab_bins() uses the published set."""
    return torch.from_numpy(_gamut_grid_np(float(grid), float(delta_e))).float()


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
