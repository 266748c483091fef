"""Train DINO-Twins (ArthurZucker/DeepLearningProject): DINO + a weighted Barlow Twins loss.

    python dino_twins/train.py --data cifar10 --arch resnet50                 # that repository's R50 run
    python dino_twins/train.py --data cifar10 --arch vit_tiny --patch-size 4 --batch-size 128   # ViT-T/4

Every DINO option of dino/train.py is here; the defaults are the original repository's (DinoTwinConfig
and its optimiser): CIFAR-10 at 32 px, 2 global crops (scale 0.5-1) + 3 local crops (0.05-0.5) resized to
the global size (32 px, where DINO makes them 16 px), a
2048-prototype head without weight-normalised last layer and without frozen epochs, teacher
temperature 0.04 → 0.07 over 10 epochs, student 0.1, center momentum 0.9, teacher momentum 0.9995 → 1,
Adam lr 3e-4 × batch/256 (every commit of the original's results) with 10 warm-up epochs then a cosine down
to 0.1 × that (3e-5 at batch 256),
no weight decay, no gradient clipping, batch 256, 400 epochs; Barlow Twins term weight 0.0025, λ 0.005,
projector 2048-2048-2048 over every pair of crops.
Ablations: --no-centering, --no-sharpening, --bt-weight 0 (pure DINO), --dino-weight 0 (pure Barlow
Twins on this backbone, views and optimiser; barlow_twins/train.py is the paper's own recipe).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common.options import parse_cli
from dino import train as dino_train

DESCRIPTION = "\n\n".join(__doc__.split("\n\n")[i] for i in (0, 2))  # what it is, and its defaults

# Shared options as the original trained: Adam (AdamW with no decay) without clipping, 32 px images
# (global and local crops both 32 px), ViT patch 4 (the original's ViT-T/4). ResNet-18 stays the default backbone so
# that a CPU run is possible; the original's numbers are --arch resnet50 and vit_tiny. min_lr None =
# 0.1 × the peak lr (the original's eta_min), resolved in build() once the batch size is known.
DEFAULTS = dict(lr=3e-4, min_lr=None, epochs=400, warmup_epochs=10, optimizer="adamw", weight_decay=0.0,
                clip_grad=0.0, batch_size=256, drop_path=0.1, image_size=32, patch_size=4)

# DINO's options as the original repository set them: value, and where it comes from.
ORIGINAL_DINO = {
    "out_dim": (2048, "out_channels = 2048 (hidden 2048, bottleneck 256 as DINO)"),
    "norm_last_layer": (False, "the last layer is a plain Linear, so its weight norm is learned"),
    "freeze_last_layer": (0, "no frozen epochs"),
    "momentum_teacher": (0.9995, "base_value 0.9995, cosine to 1"),
    "warmup_teacher_temp": (0.04, "0.04"),
    "teacher_temp": (0.07, "0.07"),
    "warmup_teacher_temp_epochs": (10, "10"),
    "global_crops_scale": ((0.5, 1.0), "(0.5, 1)"),
    "local_crops_number": (3, "n_crops 5 = 2 global + 3 local"),
    "local_crops_scale": ((0.05, 0.5), "(0.05, 0.5)"),
    "local_crops_size": (None, "resized to the global size; unset here = --image-size"),  # resolved in build()
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dino_train.add_arguments(parser)
    parser.set_defaults(**{dest: value for dest, (value, _) in ORIGINAL_DINO.items()})
    for action in parser._actions:
        if action.dest in ORIGINAL_DINO:
            action.help += f" [DINO-Twins repository: {ORIGINAL_DINO[action.dest][1]}]"

    g = parser.add_argument_group("DINO-Twins")
    g.add_argument("--student-temp", type=float, default=0.1, help="student temperature (DINO and original: 0.1)")
    g.add_argument("--center-momentum", type=float, default=0.9,
                   help="momentum of the teacher's center (DINO and original: 0.9)")
    g.add_argument("--dino-weight", type=float, default=1.0,
                   help="weight of DINO's loss (original: 1). 0 = pure Barlow Twins on the same backbone, crops "
                        "and optimiser: no DINO head and no teacher are built and the student's backbone is "
                        "evaluated; the loss is then --bt-weight × the Barlow Twins loss, a scale that Adam nearly "
                        "ignores. barlow_twins/train.py differs by its two asymmetric views, LARS, the 8192-d "
                        "projector and λ 0.0051: use it for the paper's method, this for the ablation")
    g.add_argument("--bt-weight", type=float, default=0.0025,
                   help="weight of the Barlow Twins loss (original: bt_beta = 0.005 × 0.5 = 0.0025). 0 = pure "
                        "DINO: no projector is built")
    g.add_argument("--bt-lambda", type=float, default=0.005,
                   help="λ, weight of the off-diagonal (redundancy-reduction) terms of C (original: 0.005; "
                        "Barlow Twins paper: 0.0051)")
    g.add_argument("--bt-projector", default="2048-2048-2048",
                   help="Barlow Twins projector widths joined by '-', on the student's backbone features "
                        "(original: 3 layers of 2048; here Barlow Twins' Linear-BN-ReLU layers)")
    g.add_argument("--bt-crops", choices=("all", "global"), default="all",
                   help="crop pairs of the Barlow Twins term: 'all' = every pair of the student's crops, global "
                        "and local, averaged (original); 'global' = the two global crops only (Barlow Twins' "
                        "two views; cheaper)")
    g.add_argument("--no-centering", action="store_true",
                   help="ablation: the teacher's center stays 0 (DINO subtracts a running mean)")
    g.add_argument("--no-sharpening", action="store_true",
                   help="ablation: teacher temperature = --student-temp at every epoch (the teacher "
                        "temperatures and their warm-up are ignored)")


def check_arguments(args) -> None:
    """DINO's checks plus DINO-Twins' own; one-line errors that say how to fix them."""
    dino_train.check_arguments(args)

    def fail(msg):
        raise SystemExit(f"error: {msg}")

    for name in ("dino_weight", "bt_weight", "bt_lambda"):
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.dino_weight == 0 and args.bt_weight == 0:
        fail("--dino-weight 0 and --bt-weight 0 leave no loss; set one of them > 0")
    if args.dino_weight == 0 and (args.no_centering or args.no_sharpening):
        fail("--no-centering and --no-sharpening change DINO's teacher, which --dino-weight 0 does not build")
    if args.student_temp <= 0:
        fail(f"--student-temp must be positive, got {args.student_temp}")
    if not 0.0 <= args.center_momentum <= 1.0:
        fail(f"--center-momentum must be in [0, 1], got {args.center_momentum}")
    from barlow_twins.model import parse_projector

    try:
        parse_projector(args.bt_projector)
    except ValueError as e:
        fail(str(e).replace("--projector", "--bt-projector"))


def build(args, steps_per_epoch: int):
    from dino_twins.data import DINOTwinsViews
    from dino_twins.model import DINOTwins

    if args.local_crops_size is None:  # the original resizes its local crops to the global size
        args.local_crops_size = args.image_size
    check_arguments(args)
    if args.min_lr is None:
        args.min_lr = 0.1 * args.lr * args.batch_size / 256
    return DINOTwins(args, steps_per_epoch), DINOTwinsViews(args)


def main(argv=None):
    args = parse_cli("dino_twins", add_arguments, DEFAULTS, argv, DESCRIPTION)
    from common import engine  # torch loads only now: --help and option errors never wait for it

    return engine.train("dino_twins", args, build)


if __name__ == "__main__":
    main()
