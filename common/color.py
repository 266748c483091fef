"""sRGB <-> CIE Lab (D65 white, sRGB transfer curve) in torch, with the constants scikit-image uses.

Batched over any leading dimensions with the colour channels at dim -3 (C×H×W or B×C×H×W). The
colorization method (Zhang, Isola & Efros 2016) predicts ab from L; `LightnessInput` lets its
encoder take the same normalised RGB batches as every other backbone (common/backbones.py), so
this lives in common/ rather than in the method.
"""

from __future__ import annotations

import torch
from torch import nn

# Linear sRGB -> XYZ (IEC 61966-2-1, the digits scikit-image uses) and the D65 reference white.
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
              (0.212671, 0.715160, 0.072169),
              (0.019334, 0.119193, 0.950227))
WHITE_D65 = (0.95047, 1.0, 1.08883)
DELTA = 6 / 29  # CIE Lab's switch between the cube root and its linear toe

L_CENTER, L_NORM = 50.0, 100.0  # network input (L - 50) / 100, as the released PyTorch code


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
