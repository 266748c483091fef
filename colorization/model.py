"""Colorful Image Colorization (Zhang, Isola & Efros 2016) as a pretext task.

Given the lightness L of an image, predict a distribution Ẑ over Q = 313 quantised ab colours
for every pixel (at ¼ resolution). Classification rather than regression keeps the multimodal
uncertainty of colour (a car may be red or blue) instead of averaging it to grey; the loss is a
cross-entropy against soft-encoded ground truth (Eq. 2), each pixel weighted by how rare its
colour is (class rebalancing, Eq. 3-4), so that the frequent desaturated colours do not win.
Colour images come back by the annealed mean of Ẑ (Eq. 5).

Encoder: the shared backbone with a 1-channel stem, whose first layer converts RGB to L itself
(colorization.lab.LightnessInput), so that evaluation can feed it RGB like any other backbone.
ResNets give their layer4 map and ViTs their patch tokens; a light decoder (1×1 conv, ×2
upsampling stages with 3×3 convs, 1×1 classifier) brings it to Q logits at ¼ resolution.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from colorization.data import OUTPUT_STRIDE, target_ab
from colorization.lab import (
    ab_bins,
    annealed_mean,
    is_grayscale,
    lab_from_l_ab,
    lab_to_rgb,
    rebalance_weights,
    rgb_to_lab,
    smooth_prior,
    soft_encode,
)
from common.augment import MEAN, STD
from common.backbones import build_backbone
from common.engine import SSLMethod

AUC_MAX = 150  # ab error thresholds 0..150 for the AuC metric (Sec. 3.1)
FIGURE_IMAGES = 6


def lightness_backbone(arch: str, image_size: int, patch_size: int = 16, drop_path_rate: float = 0.0) -> nn.Module:
    """build_backbone(..., in_chans=1) whose first layer takes normalised RGB and converts it to L.

    Its state dict is exactly that of `build_backbone(**kwargs without input_mode)`; `kwargs`
    carries `input_mode="lab_l"` so that a builder that knows the mode can rebuild the
    conversion (it has no parameters)."""
    return build_backbone(arch, image_size=image_size, patch_size=patch_size, drop_path_rate=drop_path_rate,
                          in_chans=1, input_mode="lab_l")


def spatial_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map before pooling: the CNNs' last stage, ResNet layer4, ViT patch
    tokens (B×D×h×w)."""
    if hasattr(net, "prepare_tokens"):
        B, _, H, W = x.shape
        tokens = net.prepare_tokens(x)
        for blk in net.blocks:
            tokens = blk(tokens)
        tokens = net.norm(tokens)[:, 1:]
        return tokens.transpose(1, 2).reshape(B, -1, H // net.patch_size, W // net.patch_size)
    if hasattr(net, "feature_map"):  # the CPU-sized CNNs
        return net.feature_map(x)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class ColorDecoder(nn.Module):
    """1×1 reduction, then ×2 bilinear upsampling + 3×3 conv stages up to ¼ of the input size,
    then a 1×1 classifier over the Q bins (a light stand-in for the paper's dilated conv5-conv8,
    which keep the ¼ resolution throughout)."""

    def __init__(self, in_dim: int, feature_size: int, out_size: int, num_bins: int, width: int = 256):
        super().__init__()
        layers = [nn.Conv2d(in_dim, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        size = feature_size
        while size * 2 <= out_size:
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            size *= 2
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_bins, 1)

    def forward(self, features: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        x = self.body(features)
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
        return self.classifier(x)


def ab_auc(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> torch.Tensor:
    """Area under the cumulative curve of per-pixel ab error, thresholds 0..150, in % (Sec. 3.1).
    The fraction of integer thresholds t with error <= t is (151 - ceil(error)) / 151, clipped."""
    err = (pred_ab - true_ab).norm(dim=1)
    return ((AUC_MAX + 1 - err.ceil()).clamp(0, AUC_MAX + 1) / (AUC_MAX + 1)).mean() * 100


def psnr(pred_rgb: torch.Tensor, true_rgb: torch.Tensor) -> torch.Tensor:
    """Mean over images of 10·log10(1 / MSE), RGB in [0, 1]."""
    mse = (pred_rgb - true_rgb).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return (10 * torch.log10(1 / mse)).mean()


class Colorization(SSLMethod):
    name = "colorization"
    nan_hint = "lower --lr"

    def __init__(self, args, prior: torch.Tensor):
        super().__init__()
        self.encoder = lightness_backbone(args.arch, args.image_size, args.patch_size, args.drop_path)
        bins = ab_bins()
        if prior.shape != (len(bins),):
            raise ValueError(f"the prior must have one entry per ab bin ({len(bins)}), got shape {tuple(prior.shape)}")
        self.register_buffer("bins", bins)
        self.register_buffer("prior", prior.float())
        self.register_buffer("weights", rebalance_weights(smooth_prior(prior.float(), bins, args.prior_sigma),
                                                          args.rebalance_lambda))
        self.sigma, self.neighbours, self.temperature = args.soft_sigma, args.soft_neighbours, args.temperature
        self.decoder = ColorDecoder(self.encoder.embed_dim, self._feature_size(args.image_size),
                                    args.image_size // OUTPUT_STRIDE, len(bins), args.decoder_dim)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self._figure_batch = None

    @torch.no_grad()
    def _feature_size(self, image_size: int) -> int:
        was_training = self.encoder.training
        self.encoder.eval()
        size = spatial_features(self.encoder, torch.zeros(1, 1, image_size, image_size)).shape[-1]
        self.encoder.train(was_training)
        return size

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB (or L input) B×C×H×W -> Q logits at ¼ resolution."""
        H, W = x.shape[-2:]
        return self.decoder(spatial_features(self.encoder, x), (H // OUTPUT_STRIDE, W // OUTPUT_STRIDE))

    def forward(self, batch, step: int) -> dict:
        x, _ = batch
        logits = self.logits(x)
        with torch.autocast(x.device.type, enabled=False):  # colour maths in float32
            rgb = (x.float() * self.std + self.mean).clamp(0, 1)
            lab = rgb_to_lab(rgb)
            ab = target_ab(lab)
            z = soft_encode(ab, self.bins, self.sigma, self.neighbours)
            log_p = F.log_softmax(logits.float(), dim=1)
            v = self.weights[z.argmax(1)]  # v(Z_h,w) = w_q* of the most likely true bin (Eq. 3)
            per_image = (-(z * log_p).sum(1) * v).flatten(1).mean(1)
            colour = ~is_grayscale(ab)  # the reference tests the subsampled target, not the full image
            loss = (per_image * colour).sum() / colour.sum().clamp(min=1)
            out = {"loss": loss, "colour_images": colour.float().mean() * 100}
            if not self.training:
                out.update(self.evaluate(logits.detach(), lab, rgb))
        stash = self._figure_batch
        if (stash is None) if self.training else (stash is None or stash[1]):
            # a few images for the epoch figure: the first held-out batch, else the first training one
            self._figure_batch = (x[:FIGURE_IMAGES].detach().float().cpu(), self.training)
        return out

    @torch.no_grad()
    def evaluate(self, logits: torch.Tensor, lab: torch.Tensor, rgb: torch.Tensor) -> dict:
        """Held-out colour error of the annealed-mean colourisation against the truth."""
        pred_lab = lab_from_l_ab(lab[:, :1], annealed_mean(logits, self.bins, self.temperature))
        pred_rgb = lab_to_rgb(pred_lab)
        gray_rgb = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1))
        return {"ab_auc": ab_auc(pred_lab[:, 1:], lab[:, 1:]), "psnr": psnr(pred_rgb, rgb),
                "ab_auc_gray": ab_auc(torch.zeros_like(lab[:, 1:]), lab[:, 1:]), "psnr_gray": psnr(gray_rgb, rgb)}

    @torch.no_grad()
    def colorize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB or L input -> RGB colourisation in [0, 1] at the input's resolution."""
        L = (x * 100 + 50) if x.shape[1] == 1 else rgb_to_lab((x.float() * self.std + self.mean).clamp(0, 1))[:, :1]
        return lab_to_rgb(lab_from_l_ab(L.float(), annealed_mean(self.logits(x), self.bins, self.temperature)))

    @property
    def eval_backbone(self) -> nn.Module:
        return self.encoder

    def on_epoch_end(self, epoch: int, run_dir: Path) -> dict:
        if self._figure_batch is not None:
            x, from_training = self._figure_batch
            x = x.to(self.bins.device)
            was_training = self.training
            self.eval()
            predicted = self.colorize(x).cpu()
            self.train(was_training)
            truth = (x * self.std + self.mean).clamp(0, 1)
            lab = rgb_to_lab(truth)
            gray = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1))
            split = "training" if from_training else "held-out"
            plot_colorizations(gray.cpu(), predicted, truth.cpu(), Path(run_dir) / "colorizations.png",
                               title=f"({split}) epoch {epoch}, annealed mean T = {self.temperature}")
            self._figure_batch = None
        return {}


def plot_colorizations(gray: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor, path: Path,
                       title: str = "") -> Path:
    """Rows: grayscale input, predicted colourisation, ground truth; one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(gray)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n + 0.8, 5.2), squeeze=False)
    for row, (images, name) in enumerate([(gray, "input L"), (predicted, "predicted"), (truth, "ground truth")]):
        for i in range(n):
            ax = axes[row][i]
            ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"Colorization {title}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
