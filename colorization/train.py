"""Train colorization as a pretext task (Zhang, Isola & Efros 2016): `python colorization/train.py`.

With no arguments: ResNet-18 (1-channel small-image stem) on the embedded `shapes` images at 64 px,
ab predicted at 16×16, a CPU-sized batch and schedule (AdamW, decoupled weight decay).

The paper's solver (ImageNet at 256 px, random 176 px crops, batch 40, Adam β1 0.9, β2 0.99, L2
weight decay 1e-3 added to the gradient as Caffe does, lr 3e-5) is reproduced by

    --optimizer adam --adam-beta2 0.99 --weight-decay 1e-3 --lr 1.92e-4 --batch-size 40 \
    --image-size 176 --warmup-epochs 0 --min-lr 3e-5

(--lr is given per 256 images and scaled by batch/256: 1.92e-4 × 40/256 = 3e-5; --min-lr is the
final lr itself, so 3e-5 keeps it constant). The paper then drops the lr by hand to 1e-5 and 3e-6 when the loss
plateaus, which a resumed run with a lower --lr and --min-lr reproduces; weight decay here skips
biases and norm parameters, as every method of this project. Before training, the empirical prior of
the 313 ab bins is estimated on the first `--prior-images` training images; its summary goes to
config.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common.options import parse_cli

DEFAULTS = dict(arch="resnet18", image_size=64, batch_size=64, epochs=30, lr=1e-3, min_lr=1e-5, warmup_epochs=2,
                optimizer="adamw", weight_decay=1e-3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Colorization")
    g.add_argument("--soft-neighbours", type=int, default=5,
                   help="soft-encode each true ab on its nearest bins: 5 as the paper (the released code uses 10)")
    g.add_argument("--soft-sigma", type=float, default=5.0, help="Gaussian width of the soft-encoding (paper 5)")
    g.add_argument("--rebalance-lambda", type=float, default=0.5,
                   help="mix of the smoothed prior with the uniform one in the class-rebalancing weights (paper "
                        "0.5; 1 = no rebalancing)")
    g.add_argument("--prior-sigma", type=float, default=5.0, help="Gaussian smoothing of the empirical prior (paper 5)")
    g.add_argument("--prior-images", type=int, default=1000,
                   help="training images on which the empirical prior of the ab bins is estimated before training "
                        "(the paper uses all of ImageNet)")
    g.add_argument("--temperature", type=float, default=0.38,
                   help="annealed-mean temperature T of the colour decoding (paper 0.38; 1 = mean, -> 0 = mode)")
    g.add_argument("--decoder-dim", type=int, default=256, help="channels of the light decoder")
    g.add_argument("--adam-beta2", type=float, default=0.999,
                   help="β2 of --optimizer adam / adamw (torch default 0.999; the paper's Caffe solver 0.99)")
    g.add_argument("--crop-scale", type=float, nargs=2, default=(0.5, 1.0), metavar=("MIN", "MAX"),
                   help="area range of the random resized crops")


def check_arguments(args) -> None:
    from colorization.data import OUTPUT_STRIDE
    from colorization.lab import ab_bins

    def fail(msg):
        raise SystemExit(f"error: {msg}")

    q = len(ab_bins())
    if not 1 <= args.soft_neighbours <= q:
        fail(f"--soft-neighbours must be in 1..{q}, got {args.soft_neighbours} (paper 5, released code 10)")
    if args.soft_sigma <= 0 or args.prior_sigma <= 0:
        fail("--soft-sigma and --prior-sigma must be positive (paper 5)")
    if not 0.0 <= args.rebalance_lambda <= 1.0:
        fail(f"--rebalance-lambda must be in [0, 1], got {args.rebalance_lambda}")
    if args.prior_images < 1:
        fail(f"--prior-images must be at least 1, got {args.prior_images}")
    if args.temperature <= 0:
        fail(f"--temperature must be positive (paper 0.38), got {args.temperature}")
    if args.image_size < 4 * OUTPUT_STRIDE:
        fail(f"--image-size must be at least {4 * OUTPUT_STRIDE} (ab is predicted at 1/{OUTPUT_STRIDE} resolution)")
    if args.decoder_dim < 1:
        fail("--decoder-dim must be at least 1")
    if not 0.0 <= args.adam_beta2 < 1.0:
        fail(f"--adam-beta2 must be in [0, 1), got {args.adam_beta2} (paper 0.99)")
    lo, hi = args.crop_scale
    if not 0 < lo <= hi <= 1:
        fail(f"--crop-scale {lo} {hi} must satisfy 0 < MIN <= MAX <= 1")


def prior_images(args, n: int) -> int:
    """The prior comes from training images only: the first ones of the `n` in the training split,
    within --max-images and before the --val-fraction tail that the engine holds out."""
    n = n - max(1, int(n * args.val_fraction)) if args.val_fraction > 0 else n
    if args.max_images is not None:
        n = min(n, args.max_images)
    return min(n, args.prior_images)


def build(args, steps_per_epoch: int):
    from colorization.data import ColorizationViews, estimate_prior
    from colorization.lab import ab_bins
    from colorization.model import Colorization
    from common.datasets import build_dataset
    from common.runtime import is_main

    check_arguments(args)
    train_set = build_dataset(args.data, args.data_root, "train", args.download)
    bins = ab_bins()
    try:
        prior, stats = estimate_prior(train_set, bins, args.image_size, prior_images(args, len(train_set)))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    args.prior_images_used, args.prior_gray_images = stats["prior_images"], stats["prior_gray_images"]
    args.prior_bins_seen = int((prior > 0).sum())
    if is_main():
        print(f"colorization: prior of the {len(bins)} ab bins from {stats['prior_images']} colour images "
              f"({stats['prior_gray_images']} grayscale left out); {args.prior_bins_seen} bins seen", flush=True)
    return Colorization(args, prior), ColorizationViews(args.image_size, args.crop_scale)


def main(argv=None):
    args = parse_cli("colorization", add_arguments, DEFAULTS, argv,
                     "Colorful Image Colorization as a pretext task (Zhang, Isola & Efros 2016)")
    from common import engine  # torch loads only now: --help and option errors never wait for it

    return engine.train("colorization", args, build)


if __name__ == "__main__":
    main()
