"""A small but complete method for testing the engine: a ResNet-18 student, an EMA teacher,
dropout (so the RNG state matters) and random two-view augmentation.

Fault injection by environment variable, for the tests: TOY_KILL_AT (SIGKILL itself before that
step), TOY_SIGTERM_AT (SIGTERM itself), TOY_NAN_AT (a NaN loss from that step on).
"""

from __future__ import annotations

import os
import signal

import torch
import torch.nn.functional as F
from torch import nn

from common import engine
from common.augment import TwoViews
from common.backbones import build_backbone
from common.ema import copy_params_and_buffers, ema_update


class Toy(engine.SSLMethod):
    name = "toy"
    nan_hint = "toy hint"

    def __init__(self, args):
        super().__init__()
        self.student = build_backbone(args.arch, image_size=args.image_size)
        self.head = nn.Sequential(nn.Linear(self.student.embed_dim, 32), nn.Dropout(0.5), nn.Linear(32, 16))
        self.teacher = build_backbone(args.arch, image_size=args.image_size)
        copy_params_and_buffers(self.teacher, self.student)
        self.teacher.requires_grad_(False)
        self.kill_at = int(os.environ.get("TOY_KILL_AT", -1))
        self.term_at = int(os.environ.get("TOY_SIGTERM_AT", -1))
        self.nan_at = int(os.environ.get("TOY_NAN_AT", -1))

    def forward(self, batch, step):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        (v1, v2_), _ = batch
        p = self.head(self.student(v1))
        with torch.no_grad():
            t = self.teacher(v2_)[:, :16]
        loss = 2 - 2 * F.cosine_similarity(p, t, dim=-1).mean()
        if 0 <= self.nan_at <= step:
            loss = loss * float("nan")
        return {"loss": loss, "feature_std": F.normalize(p.detach(), dim=-1).std(0).mean()}

    def after_step(self, step):
        ema_update(self.teacher, self.student, 0.9)

    @property
    def eval_backbone(self):
        return self.teacher


class Views(TwoViews):
    """Two random views made a batch at a time on the device (common.augment): crops, flips and
    colour drawn per sample from the engine's generator."""

    def __init__(self, size):
        super().__init__(size, scale=(0.3, 1.0))


def add_arguments(parser):
    parser.add_argument("--toy-option", type=int, default=1, help="a method option")


def build(args, steps_per_epoch):
    return Toy(args), Views(args.image_size)


DEFAULTS = dict(arch="resnet18", image_size=16, batch_size=8, epochs=2, lr=0.05, warmup_epochs=1,
                optimizer="adamw", weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, workers=0,
                log_every=1, eval_every=0, device="cpu")


def main(argv=None):
    return engine.main("toy", add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    main()
