"""Train DINO (Caron et al. 2021): `python dino/train.py --data coco --batch-size 64`.

DINO's own options carry the paper's defaults (facebookresearch/dino main_dino.py). The backbone
defaults are the shared ones (ResNet-18 with its small-image stem at 64 px, 512-d features), which
train on a CPU; the paper's ViT-S/16 at 224 px is `--arch vit_small --patch-size 16 --image-size 224`.
Shared optimisation defaults follow the paper: AdamW, lr 5e-4 × batch/256 after a 10-epoch linear
warm-up, cosine to 1e-6, weight decay cosine 0.04 → 0.4, per-parameter gradient clipping at 3.0,
drop-path 0.1 on the student, 100 epochs, batch 64 (the official per-GPU batch).

With a ResNet `--arch`, the official ResNet-50 recipe (facebookresearch/dino README) replaces the
ViT one, option by option, wherever the command line does not set that option: SGD (momentum 0.9),
lr 0.03 × batch/256, weight decay 1e-4 held constant, global crops of scale 0.14-1 and local crops
of 0.05-0.14. The run prints which options it took from the recipe; config.json records them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common.options import add_color_arguments, base_parser, parse_cli

DEFAULTS = dict(lr=5e-4, min_lr=1e-6, epochs=100, warmup_epochs=10, optimizer="adamw", weight_decay=0.04,
                weight_decay_end=0.4, clip_grad=3.0, batch_size=64, drop_path=0.1)

# main_dino.py --arch resnet50 --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4
# --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14 (the official README's ResNet-50 run)
RESNET_RECIPE = dict(optimizer="sgd", lr=0.03, weight_decay=1e-4, weight_decay_end=1e-4,
                     global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.14))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("DINO")
    g.add_argument("--out-dim", type=int, default=65536,
                   help="prototypes K of the DINO head's last layer (paper 65536; 4096 or less is enough for "
                        "small data and much cheaper)")
    g.add_argument("--use-bn-in-head", action=argparse.BooleanOptionalAction, default=False,
                   help="BatchNorm in the head's MLP (paper: off for ViT)")
    g.add_argument("--norm-last-layer", action=argparse.BooleanOptionalAction, default=True,
                   help="fix the weight norm of the last layer to 1 (more stable; paper ViT-S/16 uses "
                        "--no-norm-last-layer for its best result)")
    g.add_argument("--momentum-teacher", type=float, default=0.996,
                   help="teacher EMA momentum at step 0, raised to 1 on a per-step cosine (official advice: "
                        "0.9995 for small batches such as 256)")
    g.add_argument("--warmup-teacher-temp", type=float, default=0.04,
                   help="teacher temperature at the start of its linear warm-up")
    g.add_argument("--teacher-temp", type=float, default=0.04,
                   help="teacher temperature after the warm-up (paper 0.04-0.07; raise slightly if needed)")
    g.add_argument("--warmup-teacher-temp-epochs", type=int, default=0,
                   help="epochs of teacher temperature warm-up (official code default 0; the paper's long "
                        "runs use 30 with --teacher-temp 0.07)")
    g.add_argument("--freeze-last-layer", type=int, default=1,
                   help="epochs during which the head's last layer gets no update")
    g.add_argument("--global-crops-scale", type=float, nargs=2, default=(0.4, 1.0), metavar=("MIN", "MAX"),
                   help="area range of the 2 global crops (relative to the image)")
    g.add_argument("--local-crops-number", type=int, default=8,
                   help="small local crops seen by the student only (0 = the 2 global crops only)")
    g.add_argument("--local-crops-scale", type=float, nargs=2, default=(0.05, 0.4), metavar=("MIN", "MAX"),
                   help="area range of the local crops")
    g.add_argument("--local-crops-size", type=int, default=0,
                   help="side of the local crops in pixels (0 = 96 at 224, 16 at 32: about 0.43 of the global size)")
    add_color_arguments(g)


def check_arguments(args) -> None:
    """Combinations argparse cannot see; one-line errors that say how to fix them."""
    def fail(msg):
        raise SystemExit(f"error: {msg}")

    if args.out_dim < 1:
        fail(f"--out-dim must be at least 1, got {args.out_dim}")
    if args.local_crops_number < 0:
        fail(f"--local-crops-number must be >= 0, got {args.local_crops_number}")
    if args.freeze_last_layer < 0:
        fail(f"--freeze-last-layer must be >= 0, got {args.freeze_last_layer}")
    if not 0.0 <= args.momentum_teacher <= 1.0:
        fail(f"--momentum-teacher must be in [0, 1], got {args.momentum_teacher}")
    if args.teacher_temp <= 0 or args.warmup_teacher_temp <= 0:
        fail("--teacher-temp and --warmup-teacher-temp must be positive (paper: 0.04-0.07)")
    if not 0 <= args.warmup_teacher_temp_epochs <= args.epochs:
        fail(f"--warmup-teacher-temp-epochs {args.warmup_teacher_temp_epochs} must be between 0 and "
             f"--epochs {args.epochs}; lower it or train longer")
    if args.local_crops_size < 0 or 0 < args.local_crops_size < 8:
        fail(f"--local-crops-size must be 0 (automatic) or at least 8 pixels, got {args.local_crops_size}")
    from common.augment import check_crop_scale

    for name in ("global_crops_scale", "local_crops_scale"):
        check_crop_scale("--" + name.replace("_", "-"), getattr(args, name))


def build(args, steps_per_epoch: int):
    from dino.data import DINOViews
    from dino.model import DINO

    check_arguments(args)
    return DINO(args, steps_per_epoch), DINOViews(args)


def given_options(argv) -> set[str]:
    """The option dests the command line itself sets (parsed again with every default suppressed)."""
    parser = base_parser("dino", **DEFAULTS)
    add_arguments(parser)
    parser._defaults.clear()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def apply_resnet_recipe(args, argv) -> dict:
    """The official ResNet-50 recipe for a ResNet --arch, where the command line is silent; returns
    what it set."""
    if not args.arch.startswith("resnet"):
        return {}
    given = given_options(argv)
    taken = {k: v for k, v in RESNET_RECIPE.items() if k not in given}
    if "weight_decay" in given and "weight_decay_end" in taken:  # the user's decay, held constant as the recipe's
        taken["weight_decay_end"] = args.weight_decay
    for k, v in taken.items():
        setattr(args, k, v)
    if taken:
        words = [f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                 for k, v in taken.items()]
        print(f"dino: the official ResNet-50 recipe for {', '.join(words)}", flush=True)
    return taken


def main(argv=None):
    args = parse_cli("dino", add_arguments, DEFAULTS, argv,
                     "DINO: self-distillation with no labels (Caron et al. 2021). The defaults shown are the "
                     "ViT recipe; with a ResNet --arch the official ResNet-50 recipe (SGD, lr 0.03, weight decay "
                     "1e-4 constant, global crops 0.14-1, local crops 0.05-0.14) replaces every option not given")
    apply_resnet_recipe(args, argv)
    from common import engine  # torch loads only now: --help and option errors never wait for it

    return engine.train("dino", args, build)


if __name__ == "__main__":
    main()
