"""Backbones shared by every method: torchvision ResNets and a DINO-style Vision Transformer.

One builder serves training and evaluation: `build_backbone(**m.kwargs)` rebuilds any backbone,
which is how a checkpoint's `backbone_kwargs` turns back into the network eval uses. Every
backbone maps B×C×H×W to B×embed_dim (ResNet: globally pooled features; ViT: the CLS token after
the final LayerNorm).

ResNet notes: `drop_path_rate` does not apply to ResNets and is ignored (it is still recorded in
`.kwargs` so that every backbone has the same five keys). The last BatchNorm of every residual
block starts with gamma = 0 (`zero_init_residual=True`, Goyal et al. 2017, as Barlow Twins does),
so each block starts as the identity, which makes training from scratch more stable.

The ViT follows facebookresearch/dino's vision_transformer.py (Dosovitskiy et al. 2021): conv
patch embedding, CLS token, learned position embedding (bicubically interpolated for other input
sizes), pre-norm blocks, stochastic depth rising linearly to `drop_path_rate`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.options import ARCH_CHOICES as ARCHS  # noqa: E402  (the one list, torch-free for --help)

# (embed_dim, depth, num_heads) from DeiT (tiny) and ViT (small, base), as in DINO. The CPU-sized
# members keep 4 blocks: vit_mini has DeiT-Tiny's width and heads (1.8 M parameters), vit_micro half
# its width with heads of the same 32 channels (0.46 M, 2.5x faster: the one a 2-core CPU trains).
VIT_CONFIGS = {"vit_micro": (96, 4, 3), "vit_mini": (192, 4, 3), "vit_tiny": (192, 12, 3),
               "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}

# Stage widths of the CPU-sized CNNs (4 stages, each a residual pair of 3x3 convs, 2x2 max-pooling
# between stages): 0.3 M and 1.2 M parameters.
CNN_WIDTHS = {"cnn_tiny": (16, 32, 64, 128), "cnn_small": (32, 64, 128, 256)}


class BackboneError(ValueError):
    """A backbone was asked for with options that cannot work."""


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * mask  # rescale so the expectation matches eval mode


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob:.3f}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, return_attention: bool = False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if return_attention:
            # Explicit softmax only when the attention map itself is wanted (attention figures).
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            out = attn @ v
        else:
            # Fused kernel: same maths, far less memory and time.
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return out, attn


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, return_attention: bool = False):
        y, attn = self.attn(self.norm1(x), return_attention)
        if return_attention:
            return attn
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches, each linearly projected (a conv with stride = kernel = patch)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # B × N × D


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = image_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        # Deeper blocks are dropped more: 0 for the first block rising linearly to drop_path_rate.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, n_patches: int, h: int, w: int) -> torch.Tensor:
        """Position embedding for an h×w input (see interpolate_pos_embed)."""
        h0, w0 = h // self.patch_size, w // self.patch_size
        if n_patches == self.pos_embed.shape[1] - 1 and h == w:
            return self.pos_embed
        return interpolate_pos_embed(self.pos_embed, h0, w0)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        B, _, h, w = x.shape
        x = self.patch_embed(x)
        pos = self.interpolate_pos_encoding(x.shape[1], h, w)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        return x + pos.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """The normalised tokens (B × (1+N) × D) of the last `n` blocks, as DINO's ViT (its linear
        protocol concatenates their CLS tokens)."""
        x = self.prepare_tokens(x)
        output = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                output.append(self.norm(x))
        return output

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention of the last block, B × heads × (1+N) × (1+N); row 0 is the CLS query."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1](x, return_attention=True)


def interpolate_pos_embed(pos_embed: torch.Tensor, h0: int, w0: int) -> torch.Tensor:
    """1 × (1+N) × D position embedding (CLS first, a square grid of N patches) → 1 × (1+h0·w0) × D,
    exactly as facebookresearch/dino's vision_transformer.py: bicubic with `scale_factor` (h0 + 0.1) /
    side, not a target size. The +0.1 keeps floor(side · scale) = h0 despite rounding (dino issue #8),
    and since the scale, not the size, sets the sampling positions, this differs from `size=(h0, w0)`
    (by 5.9 % on a 14 → 30 grid): released DINO weights were evaluated with this one."""
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise BackboneError(f"the position embedding has {n} patch positions, not a square grid")
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = F.interpolate(patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2),
                              scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic")
    assert patch_pos.shape[-2:] == (h0, w0), patch_pos.shape  # what the +0.1 guarantees
    return torch.cat((cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)), dim=1)


class ResidualPair(nn.Module):
    """Two 3x3 conv + BatchNorm with a shortcut (a 1x1 conv + BN where the width changes), as a
    ResNet basic block. Its BNs start at gamma = 1: with a zero-initialised last gamma (as the
    torchvision ResNets here) these shallow nets learned measurably slower in short runs
    (supervised on 3000 shapes images, 4 epochs: 17 % test accuracy against 31 % with gamma = 1)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class SmallCNN(nn.Module):
    """The CPU-sized CNN: a 3x3 stem, then 4 residual stages with 2x2 max-pooling between them
    (32 px in, a 4x4 map out), global average pooling. Sized so that a 2-core CPU runs a two-view
    SSL step at 32 px in a few hundred images per second (docs/benchmarks.md)."""

    def __init__(self, widths, in_chans: int = 3):
        super().__init__()
        self.embed_dim = widths[-1]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*([nn.MaxPool2d(2)] if i else []), ResidualPair(c, w)))
            c = w
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W -> B×embed_dim×H/8×W/8, before pooling (Colorization, Jigsaw)."""
        return self.stages(F.relu(self.bn1(self.conv1(x)), inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean((2, 3))


def _resnet(arch: str, image_size: int, in_chans: int) -> nn.Module:
    import torchvision  # here: its import costs seconds that the CNNs and ViTs never need

    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    small = image_size <= 64
    if small or in_chans != 3:
        # Small images: a 7×7/2 conv + max-pool would throw away 3/4 of a 32 px image's resolution
        # before the first block (the CIFAR stem of SimCLR / Barlow Twins).
        kernel, stride, padding = (3, 1, 1) if small else (7, 2, 3)
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=kernel, stride=stride, padding=padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small:
        net.maxpool = nn.Identity()
    net.embed_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def build_backbone(arch: str, image_size: int = 224, patch_size: int = 16, drop_path_rate: float = 0.0,
                   in_chans: int = 3, input_mode: str = "rgb") -> nn.Module:
    """The one backbone builder for training and evaluation (see module docstring).

    input_mode="lab_l" (with in_chans=1) is the colorization encoder: a parameter-free first step
    turns the normalised RGB that every loader produces into Lab lightness, so eval feeds it the
    same batches as any other backbone; its state dict is that of the plain 1-channel network."""
    if input_mode not in ("rgb", "lab_l"):
        raise BackboneError(f"unknown input_mode {input_mode!r}; choose rgb or lab_l")
    if input_mode == "lab_l" and in_chans != 1:
        raise BackboneError("input_mode lab_l needs in_chans=1")
    if arch not in ARCHS:
        raise BackboneError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    for name, value in (("image_size", image_size), ("patch_size", patch_size), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BackboneError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise BackboneError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if arch in CNN_WIDTHS:
        model = SmallCNN(CNN_WIDTHS[arch], in_chans)
    elif arch.startswith("resnet"):
        model = _resnet(arch, image_size, in_chans)
    else:
        if image_size % patch_size:
            raise BackboneError(f"image size {image_size} is not a multiple of patch size {patch_size}; "
                                "pick a --patch-size that divides --image-size")
        dim, depth, heads = VIT_CONFIGS[arch]
        model = VisionTransformer(image_size, patch_size, in_chans, dim, depth, heads,
                                  mlp_ratio=4.0, qkv_bias=True, drop_path_rate=float(drop_path_rate))
    model.kwargs = dict(arch=arch, image_size=image_size, patch_size=patch_size,
                        drop_path_rate=float(drop_path_rate), in_chans=in_chans)
    if input_mode == "lab_l":
        from common.color import LightnessInput

        first = model.patch_embed if hasattr(model, "patch_embed") else model.conv1  # every CNN has conv1
        first.register_forward_pre_hook(LightnessInput().hook)  # also on the attention path
        model.kwargs["input_mode"] = input_mode
    return model
