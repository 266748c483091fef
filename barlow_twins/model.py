"""Barlow Twins: self-supervised learning via redundancy reduction (Zbontar et al. 2021).

Two distorted views of a batch go through the same network (backbone → projector). The
embeddings are standardised along the batch, and their cross-correlation matrix

    C_ij = Σ_b z1_bi · z2_bj / N        (N = the GLOBAL batch)

is pushed towards the identity (Eq. 1):

    L = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,   λ = 0.0051.

The invariance term makes the two views agree; the redundancy-reduction term decorrelates the
dimensions, which is what prevents collapse without negatives, predictor or momentum encoder.

Under DDP the embeddings of every process are gathered with a gradient-carrying all-gather
(common.runtime.all_gather_with_grad), so C and its normalisation are those of the global batch,
as SyncBatchNorm + all_reduce(C) in facebookresearch/barlowtwins, and after DDP's gradient
averaging the parameters receive exactly the single-process gradient on the same global batch
(some re-implementations all-reduce C without the matching gradient and end up 1/world_size too
small). Validation (eval mode) computes C per process, without collectives.

Loss scale: the first release of the official code multiplied the loss by --scale-loss (0.024 for
the 8192-d projector; "196 / projector_dim" to match the authors' research code). LARS normalises
the weights' updates, so the scale only reaches the biases and BatchNorm parameters, which LARS
excludes; the authors found that it matters in practice and later folded it into a separate
learning rate for those parameters (0.0048 = 0.2 × 0.024), which is what --lr-biases does here.
With both, keep --loss-scale 1; with SGD or AdamW a loss scale is the same as a learning-rate
change (facebookresearch/barlowtwins issues #7, #9, #23).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.engine import SSLMethod
from common.runtime import all_gather_with_grad

HEATMAP_DIMS = 64  # the top-left block of C kept for the figure (all of C can be 8192²)


def parse_projector(spec: str) -> list[int]:
    """'8192-8192-8192' → [8192, 8192, 8192]."""
    try:
        sizes = [int(s) for s in spec.split("-")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--projector must be layer widths joined by '-', e.g. 8192-8192-8192; got {spec!r}")
    return sizes


def build_projector(in_dim: int, sizes: list[int]) -> nn.Sequential:
    """Linear layers without bias, BatchNorm + ReLU between them (the paper's 3 × 8192)."""
    sizes = [in_dim] + list(sizes)
    layers = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False), nn.BatchNorm1d(sizes[i + 1]),
                   nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


def at_least_fp32(z: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 activations (AMP) to fp32; fp32 and fp64 stay as they are."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


def full_precision(device: torch.device):
    """A region where autocast (if any) is off."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def batch_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Affine-free BatchNorm1d in training mode: each dimension to zero mean and unit (biased)
    variance along the batch. Always batch statistics, also in validation, because C is defined
    on the batch."""
    return F.batch_norm(z, None, None, training=True, eps=eps)


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = c.shape[0]
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """C = bn(z1)ᵀ·bn(z2) / N: the cross-correlation of the embedding dimensions over the batch."""
    return batch_standardise(z1).T @ batch_standardise(z2) / z1.shape[0]


def barlow_twins_loss(c: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Σ(1 − C_ii)² + λ·Σ_{i≠j} C_ij² (Eq. 1)."""
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwins(SSLMethod):
    name = "barlow_twins"
    nan_hint = "lower --lr or --lr-biases, raise --warmup-epochs, or use --amp bf16 instead of fp16"

    def __init__(self, backbone: nn.Module, projector: str = "8192-8192-8192", lambd: float = 0.0051,
                 loss_scale: float = 1.0, bias_lr_scale: float = 0.0048 / 0.2, epochs: int = 1000):
        super().__init__()
        if lambd < 0:
            raise ValueError(f"--lambd must be >= 0, got {lambd}")
        if loss_scale <= 0:
            raise ValueError(f"--loss-scale must be > 0, got {loss_scale}")
        self.backbone = backbone
        self.projector = build_projector(backbone.embed_dim, parse_projector(projector))
        self.lambd, self.loss_scale, self.bias_lr_scale = lambd, loss_scale, bias_lr_scale
        self.epochs = epochs
        self.last_c: torch.Tensor | None = None  # top-left block of the last training C

    def forward(self, batch, step: int) -> dict:
        (y1, y2), _ = batch
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        # The global batch: normalisation and C over all processes, gradients back to each slice.
        if self.training:
            z1, z2 = all_gather_with_grad(z1), all_gather_with_grad(z2)
        with full_precision(z1.device):  # C sums N products: keep it in fp32 under AMP
            c = cross_correlation(at_least_fp32(z1), at_least_fp32(z2))
            loss = self.loss_scale * barlow_twins_loss(c, self.lambd)
        c = c.detach()
        if self.training:
            k = min(HEATMAP_DIMS, c.shape[0])
            self.last_c = c[:k, :k].clone()
        return {"loss": loss,
                "z_std": F.normalize(z1.detach().float(), dim=-1).std(dim=0).mean(),
                "c_on_diag": torch.diagonal(c).mean(),  # → 1: the views agree
                "c_off_diag": off_diagonal(c).abs().mean()}  # mean |C_ij|, i ≠ j → 0: decorrelated

    def param_groups(self) -> list[dict]:
        """The official two learning rates: weights at lr, biases and BatchNorm parameters (all
        1-D tensors) at lr·0.0048/0.2, without weight decay and without LARS adaptation."""
        weights, biases = [], []
        for p in self.parameters():
            if p.requires_grad:
                (biases if p.ndim == 1 else weights).append(p)
        return [{"params": weights},
                {"params": biases, "lr_scale": self.bias_lr_scale, "apply_wd": False, "lars_exclude": True}]

    @property
    def eval_backbone(self) -> nn.Module:
        return self.backbone

    def heatmap_epochs(self) -> set[int]:
        """First, middle and last epoch (1-based)."""
        return {1, max(1, self.epochs // 2), self.epochs}

    def on_epoch_end(self, epoch: int, run_dir) -> dict:
        if self.last_c is None or epoch not in self.heatmap_epochs():
            return {}
        save_heatmap(self.last_c.cpu(), run_dir, epoch)
        return {}


def save_heatmap(c: torch.Tensor, run_dir, epoch: int) -> Path:
    """The cross-correlation matrix as a heat map on [−1, 1]; the identity is the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run_dir) / f"cross_correlation_epoch{epoch:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(c.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    k = c.shape[0]
    ax.set_title(f"Barlow Twins C (first {k} dims), epoch {epoch}")
    ax.set_xlabel("z2 dimension")
    ax.set_ylabel("z1 dimension")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
