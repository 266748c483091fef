"""DINO-Twins: DINO's self-distillation plus a Barlow Twins redundancy-reduction loss in one network
(ArthurZucker/DeepLearningProject, "Combining Self-Supervised Objective Functions in
Computer Vision").

One student/teacher pair, exactly DINO's (dino.model: backbone + DINO head, the teacher an EMA of
the student whose momentum rises to 1 on a cosine, centering and sharpening of the teacher's
output). On the student's backbone features sits a second head, a Barlow Twins projector
(barlow_twins.model), whose embeddings of two crops of the same images give a cross-correlation
matrix C that is pushed towards the identity. The loss is

    L = w_DINO · L_DINO + w_BT · mean over crop pairs (a, b) of L_BT(C(z_a, z_b); λ)

with w_DINO = 1, w_BT = 0.0025 and λ = 0.005 in the original repository. Its choices, kept here:
- the pairs are every pair of the student's crops, global and local (`--bt-crops all`); the
  original averages over ordered pairs a ≠ b, which is the same number because
  L_BT(C(z_b, z_a)) = L_BT(C(z_a, z_b)ᵀ) = L_BT(C(z_a, z_b)); `--bt-crops global` keeps the pair of
  global crops only (Barlow Twins' two views);
- the projector runs on the student's backbone features of each crop; it is the teacher's
  backbone (DINO's evaluation network) that is evaluated.
Where this differs from the original code, on purpose: C is the parents' (barlow_twins.model: both
embeddings standardised by their own batch statistics, squared off-diagonal terms); the original
standardised z_b with z_a's statistics and summed |C_ij| off the diagonal. The projector is Barlow
Twins' (Linear–BatchNorm–ReLU), not the original's Linear–GELU without BatchNorm.

Ablations (that repository's secondary claim, that the Barlow term makes some of DINO's hyper-parameters
unnecessary): `no_centering` fixes the center at 0, `no_sharpening` sets the teacher temperature to
the student's, `bt_weight = 0` is pure DINO (no projector is built, so DDP sees no unused
parameters) and `dino_weight = 0` is pure Barlow Twins on the same backbone, views and optimiser (no
DINO head and no teacher are built; the student's backbone is evaluated).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from barlow_twins.model import (
    HEATMAP_DIMS,
    at_least_fp32,
    barlow_twins_loss,
    build_projector,
    cross_correlation,
    full_precision,
    off_diagonal,
    parse_projector,
    save_heatmap,
)
from common.backbones import build_backbone
from common.engine import SSLMethod
from common.runtime import all_gather_with_grad
from dino.model import DINO, DINOLoss, MultiCropNetwork


class UncenteredDINOLoss(DINOLoss):
    """DINO's loss with the center fixed at 0 (`--no-centering`): the teacher is only sharpened."""

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        pass


def build_dino_loss(args, ncrops: int) -> DINOLoss:
    """DINO's loss with the ablation switches applied. Without sharpening the teacher's temperature
    equals the student's at every epoch, so neither output is sharper than the other."""
    student_temp = args.student_temp
    if args.no_sharpening:
        warmup_teacher_temp = teacher_temp = student_temp
    else:
        warmup_teacher_temp, teacher_temp = args.warmup_teacher_temp, args.teacher_temp
    loss_cls = UncenteredDINOLoss if args.no_centering else DINOLoss
    return loss_cls(args.out_dim, ncrops, warmup_teacher_temp, teacher_temp, args.warmup_teacher_temp_epochs,
                    args.epochs, student_temp=student_temp, center_momentum=args.center_momentum)


def crop_pairs(ncrops: int) -> list[tuple[int, int]]:
    """Unordered pairs (a, b), a < b, of crop indices; (0, 1) = the two global crops comes first."""
    return list(itertools.combinations(range(ncrops), 2))


class DINOTwins(SSLMethod):
    """DINO (student, teacher, head, loss) + a Barlow Twins projector on the student's features."""

    name = "dino_twins"
    nan_hint = ("try --amp off, a lower --teacher-temp, a smaller --out-dim, or a smaller --bt-weight "
                "(the Barlow Twins term grows with the projector width)")

    def __init__(self, args, steps_per_epoch: int):
        super().__init__()
        if args.dino_weight < 0 or args.bt_weight < 0 or args.bt_lambda < 0:
            raise ValueError("--dino-weight, --bt-weight and --bt-lambda must be >= 0")
        if args.dino_weight == 0 and args.bt_weight == 0:
            raise ValueError("--dino-weight 0 and --bt-weight 0 leave no loss; set one of them > 0")
        self.dino_weight, self.bt_weight, self.bt_lambda = args.dino_weight, args.bt_weight, args.bt_lambda
        self.ncrops = 2 + args.local_crops_number
        self.epochs = args.epochs
        self.bt_pairs = crop_pairs(self.ncrops if args.bt_crops == "all" else 2)

        if self.dino_weight > 0:
            self.dino = DINO(args, steps_per_epoch)
            self.dino.loss_fn = build_dino_loss(args, self.ncrops)
        else:
            # Pure Barlow Twins: the same backbone, fed the same crops, without head or teacher.
            self.dino = None
            self.backbone_only = MultiCropNetwork(
                build_backbone(args.arch, image_size=args.image_size, patch_size=args.patch_size,
                               drop_path_rate=args.drop_path), nn.Identity())
        # Pure DINO builds no projector: nothing unused for DDP, nothing extra in the optimiser.
        self.projector = (build_projector(self.student.backbone.embed_dim, parse_projector(args.bt_projector))
                          if self.bt_weight > 0 else None)
        self.last_c: torch.Tensor | None = None  # top-left block of the last training C (global pair)

    @property
    def student(self) -> MultiCropNetwork:
        return self.dino.student if self.dino is not None else self.backbone_only

    @property
    def teacher(self) -> MultiCropNetwork | None:
        return self.dino.teacher if self.dino is not None else None

    def forward(self, batch, step: int) -> dict:
        crops, _ = batch
        if len(crops) != self.ncrops:
            raise ValueError(f"DINO-Twins expects {self.ncrops} crops per image, got {len(crops)}")
        logs = {}
        if self.dino is not None:
            with torch.no_grad():
                teacher_output, _ = self.dino.teacher(crops[:2])  # the teacher sees the global crops only
            student_output, features = self.dino.student(crops)
            dino_loss, stats = self.dino.loss_fn(student_output, teacher_output, self.dino.epoch_of(step))
            loss = self.dino_weight * dino_loss
            logs.update(stats, dino_loss=dino_loss.detach(), momentum=self.dino.momentum(step))
        else:
            _, features = self.backbone_only(crops)
            loss = 0.0
        if self.projector is not None:
            bt_loss, stats = self.barlow_twins_term(features.chunk(self.ncrops))
            loss = loss + self.bt_weight * bt_loss
            logs.update(stats, bt_loss=bt_loss.detach())
        with torch.no_grad():
            # DINO's collapse diagnostic on the student's global-crop features: about 1/√d when
            # they spread over the sphere, 0 when they collapse to a point.
            global_features = F.normalize(features[:2 * crops[0].shape[0]].float(), dim=-1)
            logs["feature_std"] = global_features.std(dim=0).mean()
        return {"loss": loss, **logs}

    def barlow_twins_term(self, features: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        """Barlow Twins' loss averaged over `self.bt_pairs`, each C over the global batch."""
        used = sorted({i for pair in self.bt_pairs for i in pair})
        # The projector sees one crop at a time, so its BatchNorm statistics are per view, as in
        # Barlow Twins (crops of different resolutions have different feature statistics).
        z = {i: self.projector(features[i]) for i in used}
        if self.training:
            z = {i: all_gather_with_grad(zi) for i, zi in z.items()}
        with full_precision(features[0].device):  # C sums N products: fp32 under AMP
            losses = []
            for a, b in self.bt_pairs:
                c = cross_correlation(at_least_fp32(z[a]), at_least_fp32(z[b]))
                losses.append(barlow_twins_loss(c, self.bt_lambda))
                if (a, b) == (0, 1):
                    c_global = c.detach()
            loss = torch.stack(losses).mean()
        if self.training:
            k = min(HEATMAP_DIMS, c_global.shape[0])
            self.last_c = c_global[:k, :k].clone()
        return loss, {"z_std": F.normalize(z[0].detach().float(), dim=-1).std(dim=0).mean(),
                      "c_on_diag": torch.diagonal(c_global).mean(),         # → 1: the crops agree
                      "c_off_diag": off_diagonal(c_global).abs().mean()}    # → 0: decorrelated

    def before_optimizer_step(self, step: int) -> None:
        if self.dino is not None:
            self.dino.before_optimizer_step(step)

    def after_step(self, step: int) -> None:
        if self.dino is not None:
            self.dino.after_step(step)

    @property
    def eval_backbone(self) -> nn.Module:
        return self.dino.eval_backbone if self.dino is not None else self.backbone_only.backbone

    def on_epoch_end(self, epoch: int, run_dir: Path) -> dict:
        # C of the two global crops at the first, middle and last epoch, as Barlow Twins draws it.
        if self.last_c is not None and epoch in {1, max(1, (self.epochs + 1) // 2), self.epochs}:
            save_heatmap(self.last_c.cpu(), run_dir, epoch)
        return {}
