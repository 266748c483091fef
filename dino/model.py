"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"), following facebookresearch/dino (main_dino.py and
vision_transformer.py's DINOHead).

A student network is trained to match the output distribution of a teacher network of the same
architecture over different views of one image. The teacher is not trained by gradient: its
weights are an exponential moving average of the student's. Collapse is avoided by centering
the teacher's output (a running mean subtracted before the softmax, which stops one dimension
from dominating) and sharpening it (a low temperature, which stops the output from becoming
uniform).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import build_backbone
from common.ema import copy_params_and_buffers, ema_update
from common.engine import SSLMethod
from common.runtime import all_reduce_mean
from common.schedules import cosine_schedule


class DINOHead(nn.Module):
    """Projection head: an MLP (GELU) to a `bottleneck_dim` bottleneck, L2 normalisation, and a
    weight-normalised linear layer to `out_dim` prototypes (Sec. 3.1 and Appendix). With
    `norm_last_layer` the weight norm g is fixed to 1, so every prototype is a unit vector and
    the output is a cosine similarity, which the paper found to stabilise training."""

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(nlayers - 2):
                layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
            layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # Parametrised weight norm: weight = g · v / ‖v‖ per output row, state-dict keys
        # last_layer.parametrizations.weight.original0 (g) and .original1 (v).
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad = not norm_last_layer

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropNetwork(nn.Module):
    """Backbone + head applied to a list of crops. Consecutive crops of one resolution go through
    the backbone as one batch (one forward per resolution, as the official MultiCropWrapper); the
    head then sees all crops at once. Outputs are concatenated in crop order: rows
    [k·B, (k+1)·B) belong to crop k."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features = [self.backbone(torch.cat(list(group)))
                    for _, group in itertools.groupby(crops, key=lambda c: tuple(c.shape[-2:]))]
        features = torch.cat(features)
        return self.head(features), features


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher distribution of each global crop q and
    the student distribution of every other crop v ≠ q, averaged over those pairs (Algorithm 1).

    The teacher temperature warms up linearly from `warmup_teacher_temp` to `teacher_temp` over
    `warmup_teacher_temp_epochs` epochs and then stays constant; like the official code, the
    schedule is per EPOCH (one value per epoch, looked up with the current epoch).
    The center is a buffer, so it is saved with the model and resumes exactly.
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, epochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"DINO needs at least the 2 global crops, got ncrops={ncrops}")
        if not 0 <= warmup_teacher_temp_epochs <= epochs:
            raise ValueError(f"warmup_teacher_temp_epochs={warmup_teacher_temp_epochs} must be in [0, epochs={epochs}]")
        if min(warmup_teacher_temp, teacher_temp, student_temp) <= 0:
            raise ValueError("temperatures must be positive")
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        # A high teacher temperature early on makes training unstable (official comment).
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(epochs - warmup_teacher_temp_epochs) * teacher_temp,
        ))

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor,
                epoch: int) -> tuple[torch.Tensor, dict]:
        """student_output: (ncrops·B)×K, teacher_output: (2·B)×K, crops stacked in order.
        Returns the loss and the collapse diagnostics of Sec. 5.3 (teacher entropy and
        KL(teacher ‖ student)). The center moves only in training mode."""
        # Softmax over 65536 prototypes is done in float32 even under autocast.
        student_output, teacher_output = student_output.float(), teacher_output.float()
        student_logp = F.log_softmax(student_output / self.student_temp, dim=-1).chunk(self.ncrops)

        temp = self.teacher_temp(epoch)
        teacher_logits = (teacher_output - self.center) / temp
        teacher_logq = F.log_softmax(teacher_logits.detach(), dim=-1)
        teacher_q = teacher_logq.exp()

        total, n_terms = 0.0, 0
        for iq, q in enumerate(teacher_q.chunk(2)):
            for v in range(self.ncrops):
                if v == iq:
                    continue  # the student never predicts the teacher's output for the very same view
                total = total + torch.sum(-q * student_logp[v], dim=-1).mean()
                n_terms += 1
        loss = total / n_terms

        if self.training:
            self.update_center(teacher_output)

        with torch.no_grad():
            entropy = -(teacher_q * teacher_logq).sum(-1).mean()
            # Every q is paired with ncrops − 1 views, so the mean over pairs of H(q) is the mean
            # teacher entropy and KL(q ‖ p) = CE(q, p) − H(q) averages to loss − entropy.
            kl = loss.detach() - entropy
        return loss, {"teacher_entropy": entropy, "kl": kl, "teacher_temp": temp}

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """center ← m·center + (1 − m)·mean of the teacher output over the global batch."""
        batch_center = all_reduce_mean(teacher_output.mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class DINO(SSLMethod):
    """Student and teacher (backbone + DINO head); the teacher is the student's EMA."""

    name = "dino"
    nan_hint = "try --amp off, a lower --teacher-temp, or a smaller --out-dim"

    def __init__(self, args, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.freeze_last_layer = args.freeze_last_layer
        self.ncrops = 2 + args.local_crops_number

        def network(drop_path_rate: float) -> MultiCropNetwork:
            backbone = build_backbone(args.arch, image_size=args.image_size, patch_size=args.patch_size,
                                      drop_path_rate=drop_path_rate)
            head = DINOHead(backbone.embed_dim, args.out_dim, use_bn=args.use_bn_in_head,
                            norm_last_layer=args.norm_last_layer)
            return MultiCropNetwork(backbone, head)

        # Stochastic depth regularises the student only; the teacher is built the same way
        # without it and starts as an exact copy of the student.
        self.student = network(args.drop_path)
        self.teacher = network(0.0)
        copy_params_and_buffers(self.teacher, self.student)
        self.teacher.requires_grad_(False)

        self.loss_fn = DINOLoss(args.out_dim, self.ncrops, args.warmup_teacher_temp, args.teacher_temp,
                                args.warmup_teacher_temp_epochs, args.epochs)
        # Teacher momentum rises from momentum_teacher to 1 on a per-step cosine.
        self.momentum_schedule = cosine_schedule(args.momentum_teacher, 1.0, args.epochs, self.steps_per_epoch)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def momentum(self, step: int) -> float:
        return float(self.momentum_schedule[min(step, len(self.momentum_schedule) - 1)])

    def forward(self, batch, step: int) -> dict:
        crops, _ = batch
        if len(crops) != self.ncrops:
            raise ValueError(f"DINO expects {self.ncrops} crops per image, got {len(crops)}")
        with torch.no_grad():
            teacher_output, _ = self.teacher(crops[:2])  # the teacher only sees the global views
        student_output, features = self.student(crops)
        loss, stats = self.loss_fn(student_output, teacher_output, self.epoch_of(step))
        with torch.no_grad():
            # Per-dimension std of the L2-normalised global-crop features: about 1/√d when they
            # spread over the sphere, 0 when they collapse to one point (Chen & He 2021).
            global_features = F.normalize(features[:2 * crops[0].shape[0]].float(), dim=-1)
            feature_std = global_features.std(dim=0).mean()
        return {"loss": loss, **stats, "feature_std": feature_std, "momentum": self.momentum(step)}

    def before_optimizer_step(self, step: int) -> None:
        # Freezing the prototypes in the first epoch(s) helps optimisation (official code).
        if self.epoch_of(step) < self.freeze_last_layer:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.student, self.momentum(step))

    @property
    def eval_backbone(self) -> nn.Module:
        return self.teacher.backbone
