"""Train Barlow Twins (Zbontar et al. 2021) on the shared engine.

    python barlow_twins/train.py --data shapes --image-size 32 --projector 512-512-512 --epochs 20

Defaults are the paper's and facebookresearch/barlowtwins main.py's: LARS with two learning rates
(weights 0.2, biases and BatchNorm parameters 0.0048, both × batch/256; the paper's batch is 2048),
weight decay 1.5e-6 (the paper's value; main.py's default is 1e-6), 10 warm-up epochs, then a cosine
down to 0.001 × the peak lr (--min-lr left unset), λ = 0.0051, projector 8192-8192-8192, 1000 epochs.
Smaller projectors (e.g. 512-512-512 or 2048-2048-2048) suit small images and CPU runs; the paper shows
accuracy grows with its width.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common.options import add_color_arguments, add_crop_scale_argument, parse_cli

DESCRIPTION = __doc__.split("\n\n")[0]

# min_lr None = 0.001 × the peak lr, resolved in build() once the batch size is known.
DEFAULTS = dict(optimizer="lars", lr=0.2, min_lr=None, weight_decay=1.5e-6, warmup_epochs=10, epochs=1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Barlow Twins")
    add_crop_scale_argument(g)
    add_color_arguments(g)
    g.add_argument("--projector", default="8192-8192-8192",
                   help="projector widths joined by '-' (paper: 8192-8192-8192; 3 linear layers, BN + ReLU "
                        "between them)")
    g.add_argument("--lambd", type=float, default=0.0051,
                   help="λ, the weight of the redundancy-reduction (off-diagonal) term (paper: 0.0051)")
    g.add_argument("--lr-biases", type=float, default=0.0048,
                   help="base learning rate of biases and BatchNorm parameters, × batch/256 like --lr (official "
                        "code: 0.0048 with 0.2 for the weights); they get no weight decay and no LARS adaptation")
    g.add_argument("--loss-scale", type=float, default=1.0,
                   help="multiplies the loss. The first official release used 0.024 (= 196 / projector width) "
                        "with a single lr; the authors found it matters because biases and BN parameters escape "
                        "LARS's normalisation, and later folded it into --lr-biases (0.0048 = 0.2 × 0.024). "
                        "Keep 1 with --lr-biases; with SGD/AdamW it only rescales the learning rate")


def build(args, steps_per_epoch: int):
    from barlow_twins.data import BarlowTwinsViews
    from barlow_twins.model import BarlowTwins, parse_projector
    from common.backbones import build_backbone

    try:
        parse_projector(args.projector)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.lambd < 0:
        raise SystemExit(f"error: --lambd must be >= 0, got {args.lambd}")
    if args.loss_scale <= 0:
        raise SystemExit(f"error: --loss-scale must be > 0, got {args.loss_scale}")
    if args.lr <= 0 or args.lr_biases < 0:
        raise SystemExit("error: --lr must be > 0 and --lr-biases >= 0")
    if args.min_lr is None:  # the official schedule ends at 0.001 × the peak lr
        args.min_lr = 0.001 * args.lr * args.batch_size / 256
    backbone = build_backbone(args.arch, args.image_size, args.patch_size, args.drop_path)
    method = BarlowTwins(backbone, projector=args.projector, lambd=args.lambd, loss_scale=args.loss_scale,
                         bias_lr_scale=args.lr_biases / args.lr, epochs=args.epochs)
    return method, BarlowTwinsViews(args)


def main(argv=None):
    args = parse_cli("barlow_twins", add_arguments, DEFAULTS, argv, DESCRIPTION)
    from common import engine  # torch loads only now: --help and option errors never wait for it

    return engine.train("barlow_twins", args, build)


if __name__ == "__main__":
    main()
