"""The options every train.py shares; each method adds its own and passes its paper's defaults."""

from __future__ import annotations

import argparse
import os

from common.optim import OPTIMIZERS
from common.runtime import AMP_CHOICES

ARCH_CHOICES = ("resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")


def default_data_root() -> str:
    return os.environ.get("SSL_DATA", "./data")


def base_parser(method: str, description: str = "", **defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python {method}/train.py", description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default="shapes",
                   help="dataset name from the registry (shapes, digits, cifar10, cifar100, stl10, imagenette, "
                        "tiny-imagenet, imagefolder, coco, voc2012, places365) or a path to an image folder")
    d.add_argument("--data-root", default=default_data_root(), help="where datasets live ($SSL_DATA or ./data)")
    d.add_argument("--train-split", default="train",
                   help="split to train on (e.g. train+unlabeled for stl10 and coco)")
    d.add_argument("--download", action="store_true", help="download the dataset where torchvision can")
    d.add_argument("--eval-data", default=None,
                   help="labelled dataset for the periodic kNN monitor (default: the training data when it "
                        "has labels; 'none' disables)")
    d.add_argument("--max-images", type=int, default=None, help="train on the first N images only (smoke runs)")
    d.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1) if os.cpu_count() else 0,
                   help="DataLoader worker processes (0 = load in the main process)")

    m = p.add_argument_group("model")
    m.add_argument("--arch", default="resnet18", choices=ARCH_CHOICES, help="backbone")
    m.add_argument("--patch-size", type=int, default=16, help="ViT patch size (e.g. 16 at 224 px, 4 at 32 px)")
    m.add_argument("--image-size", type=int, default=64, help="training image size (global crop size)")
    m.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (ViT)")
    m.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    m.add_argument("--compile", action="store_true", help="torch.compile the training module")

    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=256, help="GLOBAL batch size over all processes")
    o.add_argument("--epochs", type=int, default=100, help="epochs; every schedule follows this")
    o.add_argument("--lr", type=float, default=0.05,
                   help="base learning rate for a batch of 256: the peak lr is lr × batch/256")
    o.add_argument("--min-lr", type=float, default=0.0, help="final learning rate of the cosine schedule")
    o.add_argument("--warmup-epochs", type=float, default=10, help="linear learning-rate warm-up")
    o.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="optimiser")
    o.add_argument("--momentum", type=float, default=0.9, help="momentum of SGD and LARS")
    o.add_argument("--lars-eta", type=float, default=0.001,
                   help="LARS trust coefficient η (0.001 in the BYOL and Barlow Twins code): an adapted weight "
                        "moves by lr·η·‖w‖/‖g + wd·w‖ times its update, so η and lr act together on weights "
                        "while biases and norms (not adapted) see lr alone")
    o.add_argument("--weight-decay", type=float, default=0.0, help="weight decay at the start")
    o.add_argument("--weight-decay-end", type=float, default=None,
                   help="weight decay at the end of a cosine schedule (default: constant)")
    o.add_argument("--clip-grad", type=float, default=0.0, help="clip each parameter's gradient norm (0 = off)")

    r = p.add_argument_group("run")
    r.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 on GPUs that have it, fp16 on older GPUs, off on CPU")
    r.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help="device")
    r.add_argument("--seed", type=int, default=0, help="seed of python, numpy, torch and the data order")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    r.add_argument("--out", default=None, help="run directory (default runs/<method>/<data>-<arch>)")
    r.add_argument("--resume", default="auto",
                   help="auto: resume from <out>/checkpoint.pt if it exists; never: start afresh (the old "
                        "checkpoint is replaced); or a path to a checkpoint to resume from")
    r.add_argument("--max-steps", type=int, default=None,
                   help="stop after N optimiser steps in total (resumed ones included); schedules still "
                        "follow --epochs")
    r.add_argument("--eval-every", type=int, default=1, help="kNN monitor every N epochs (0 = never)")
    r.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0 = epochs only)")
    r.add_argument("--log-every", type=int, default=10, help="log every N steps")
    r.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of the training images for a per-epoch validation loss when "
                        "the dataset has no test split")
    p.set_defaults(**defaults)
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse and check combinations that argparse cannot see; errors are one line."""
    args = parser.parse_args(argv)
    problems = []
    if args.batch_size < 1:
        problems.append("--batch-size must be at least 1")
    if args.epochs < 1:
        problems.append("--epochs must be at least 1")
    if args.max_steps is not None and args.max_steps < 0:
        problems.append("--max-steps must be non-negative")
    if args.warmup_epochs > args.epochs:
        problems.append(f"--warmup-epochs {args.warmup_epochs} exceeds --epochs {args.epochs}; lower it")
    if args.arch.startswith("vit") and args.image_size % args.patch_size:
        problems.append(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    if args.max_images is not None and args.max_images < 1:
        problems.append("--max-images must be at least 1")
    if not 0 <= args.val_fraction < 1:
        problems.append("--val-fraction must be in [0, 1)")
    if args.workers < 0:
        problems.append("--workers must be >= 0")
    if problems:
        parser.error("; ".join(problems))
    if args.weight_decay_end is None:
        args.weight_decay_end = args.weight_decay
    return args
