"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020).

An online network (encoder f_θ → projector g_θ → predictor q_θ) predicts the projection that a
target network (encoder f_ξ → projector g_ξ) gives for another view of the same image. The
target gets no gradient; it is an exponential moving average of the online weights,
ξ ← τ·ξ + (1 − τ)·θ, with τ rising from τ_base to 1 on a cosine over the whole run (Section 3.2):
τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2.

Loss (Eq. 2), on L2-normalised vectors: ‖q̄ − z̄′‖² = 2 − 2·⟨q, z′⟩/(‖q‖·‖z′‖), symmetrised by
feeding each view to both networks (Eq. 3): L = L(v → v′) + L(v′ → v).

Under DDP the loss is a per-sample mean, so DDP's gradient averaging already gives the gradient of
the global batch; the paper's BatchNorm statistics span the whole batch, which `--sync-bn` gives
on GPUs (without it each process normalises with its own share).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.ema import ema_update
from common.engine import SSLMethod
from common.schedules import cosine_schedule


class MLP(nn.Sequential):
    """Projector and predictor of BYOL (Section 3.3): Linear(4096) → BN → ReLU → Linear(256)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def regression_loss(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 − 2·cos(q, z) per sample, averaged over the batch; z is a target, so no gradient.
    fp16/bf16 inputs (AMP) are computed in fp32."""
    q = F.normalize(q.to(torch.promote_types(q.dtype, torch.float32)), dim=-1)
    z = F.normalize(z.detach().to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
    return (2 - 2 * (q * z).sum(dim=-1)).mean()


def byol_loss(q1: torch.Tensor, q2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised BYOL loss (Eq. 3): the online prediction of each view regresses the target
    projection of the other view. Its range is [0, 8]."""
    return regression_loss(q1, z2) + regression_loss(q2, z1)


def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of L2-normalised vectors (Chen & He 2021): ≈ 1/√d
    for healthy, spread-out embeddings, 0 when every image maps to the same point (collapse)."""
    return F.normalize(z.detach().float(), dim=-1).std(dim=0).mean()


def tau_schedule(tau_base: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """τ for every optimiser step: a cosine from τ_base to 1 (BYOL Section 3.2)."""
    return cosine_schedule(tau_base, 1.0, epochs, steps_per_epoch)


class BYOL(SSLMethod):
    name = "byol"
    nan_hint = "lower --lr (LARS: the base lr is per 256 images) or raise --warmup-epochs"

    def __init__(self, backbone: nn.Module, hidden_dim: int = 4096, out_dim: int = 256,
                 tau: float = 0.996, epochs: int = 1000, steps_per_epoch: int = 1):
        super().__init__()
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"the target decay rate tau must lie in [0, 1], got {tau}")
        self.backbone = backbone
        self.projector = MLP(backbone.embed_dim, hidden_dim, out_dim)
        self.predictor = MLP(out_dim, hidden_dim, out_dim)
        # The target starts as an exact copy of the online encoder and projector (Algorithm 1).
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_parameters():
            p.requires_grad_(False)
        self.taus = tau_schedule(tau, epochs, steps_per_epoch)

    def target_parameters(self):
        yield from self.target_backbone.parameters()
        yield from self.target_projector.parameters()

    def online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projection z, prediction q) of the online network."""
        z = self.projector(self.backbone(x))
        return z, self.predictor(z)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(x))

    def forward(self, batch, step: int) -> dict:
        (v1, v2), _ = batch
        z1, q1 = self.online(v1)
        z2, q2 = self.online(v2)
        z1_target, z2_target = self.target(v1), self.target(v2)
        loss = byol_loss(q1, q2, z1_target, z2_target)
        return {"loss": loss, "z_std": normalised_std(z1), "tau": self.tau_at(step)}

    def tau_at(self, step: int) -> float:
        """τ_k of step k (0-based); steps past the schedule keep its last value."""
        return float(self.taus[min(step, len(self.taus) - 1)])

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """ξ ← τ_k·ξ + (1 − τ_k)·θ after the k-th optimiser step."""
        tau = self.tau_at(step)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)

    @property
    def eval_backbone(self) -> nn.Module:
        # The paper evaluates the online encoder f_θ (Section 3.3: "we only keep the encoder f_θ").
        return self.backbone
