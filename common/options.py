"""The options every train.py shares; each method adds its own and passes its paper's defaults.

This module imports no torch (nor anything that does): a train.py parses its options before the heavy
imports, so `--help` and option errors come back at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from common import recipes

# The backbones (common/backbones.py builds them; listed here so that parsing needs no torch), with
# their parameters and forward+backward img/s at 32 px, batch 128, on the project's 2-core CPU
# (ViTs with patch 4; docs/benchmarks.md, "Backbones"; None: GPU-sized, not measured there).
ARCH_SIZES = {"cnn_tiny": ("0.31 M", 826), "cnn_small": ("1.23 M", 302), "resnet18": ("11.2 M", 48),
              "resnet50": ("23.5 M", None), "vit_micro": ("0.46 M", 339), "vit_mini": ("1.80 M", 139),
              "vit_tiny": ("5.36 M", 54), "vit_small": ("21.7 M", None), "vit_base": ("85.8 M", None)}
ARCH_CHOICES = tuple(ARCH_SIZES)
ARCH_HELP = "backbone: " + ", ".join(f"{a} ({n}" + (f", {r} img/s on 2 CPU cores" if r else "") + ")"
                                     for a, (n, r) in ARCH_SIZES.items())
OPTIMIZERS = ("adamw", "adam", "sgd", "lars")  # adam: L2 weight decay coupled into the gradient (Caffe / torch Adam)
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# The papers' random-resized-crop area range of the two-view methods (BYOL, Barlow Twins).
CROP_SCALE = (0.08, 1.0)
# The SSL colour distortion (SimCLR / BYOL / DINO): strength of brightness, contrast, saturation, hue.
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)
TRUST_HELP = ("load checkpoints with full pickle (torch.load weights_only=False). DANGER: a crafted file runs "
              "any code it likes on this machine; only for files you made yourself or fully trust (e.g. "
              "checkpoints of older ssl-lab versions). Without it, files holding more than tensors and plain "
              "Python values are refused")
KERNEL_FILESYSTEMS = ("/proc", "/sys", "/dev")  # writable-looking folders that are not storage
# Released weights by name (common/pretrained.py downloads them): the official URLs of
# facebookresearch/dino's hubconf.py. Here, so that an eval script's --checkpoint tells a name from
# a path without torch.
_DINO = "https://dl.fbaipublicfiles.com/dino"
RELEASED = {
    "dino_vits16": f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_vits8": f"{_DINO}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    "dino_vitb16": f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dino_vitb8": f"{_DINO}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    "dino_resnet50": f"{_DINO}/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
}


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default once, at the end of its help. Left out for on/off flags, for unset
    options (None: their help says what unset means) and where the help already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, argparse.SUPPRESS) or "(default" in text
                or isinstance(action, argparse._StoreConstAction)):  # store_true / store_false
            return text
        return f"{text} (default: %(default)s)"


def default_data_root() -> str:
    return os.environ.get("SSL_DATA", "./data")


def base_parser(method: str, description: str = "", **defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python {method}/train.py", description=description,
        formatter_class=HelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default="shapes",
                   help="dataset name from the registry (shapes, digits, cifar10, cifar100, stl10, imagenette, "
                        "tiny-imagenet, imagefolder, coco, voc2012, places365) or a path to an image folder")
    d.add_argument("--data-root", default=default_data_root(),
                   help="where datasets live: $SSL_DATA if set, else ./data")
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
    m.add_argument("--arch", default="resnet18", choices=ARCH_CHOICES, help=ARCH_HELP)
    m.add_argument("--patch-size", type=int, default=16, help="ViT patch size (e.g. 16 at 224 px, 4 at 32 px)")
    m.add_argument("--image-size", type=int, default=64, help="training image size (global crop size)")
    m.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (ViT)")
    m.add_argument("--init", default=None, metavar="FILE",
                   help="start the backbone(s) from released weights (an official DINO file, a torchvision ResNet "
                        "state dict, or dino_vits16 / dino_vits8 / dino_vitb16 / dino_vitb8 / dino_resnet50, "
                        "downloaded once) or another run's checkpoint; the arch must match; not used on resume")
    m.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="SyncBatchNorm under DDP on GPUs for backbones with BatchNorm (as the official DINO ResNet, "
                        "BYOL and Barlow Twins codes); --no-sync-bn normalises each process's batch alone")
    m.add_argument("--compile", action="store_true", help="torch.compile the training module")

    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=256, help="GLOBAL batch size over all processes")
    o.add_argument("--epochs", type=int, default=100, help="epochs; every schedule follows this")
    o.add_argument("--lr", type=float, default=0.05,
                   help="base learning rate for a batch of 256: the peak lr is lr × batch/256")
    o.add_argument("--min-lr", type=float, default=0.0, help="final learning rate of the cosine schedule")
    o.add_argument("--warmup-epochs", type=float, default=10, help="linear learning-rate warm-up")
    o.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="optimiser: adamw = decoupled weight decay (Loshchilov & Hutter), adam = L2 weight decay "
                        "added to the gradient (Caffe's Adam solver, torch.optim.Adam)")
    o.add_argument("--momentum", type=float, default=0.9, help="momentum of SGD and LARS")
    o.add_argument("--lars-eta", type=float, default=0.001,
                   help="LARS trust coefficient η (0.001 in the BYOL and Barlow Twins code): an adapted weight "
                        "moves by lr·η·‖w‖/‖g + wd·w‖ times its update, so η and lr act together on weights "
                        "while biases and norms (not adapted) see lr alone")
    o.add_argument("--weight-decay", type=float, default=0.0, help="weight decay at the start")
    o.add_argument("--weight-decay-end", type=float, default=None,
                   help="weight decay at the end of a cosine schedule from --weight-decay (unset: constant)")
    o.add_argument("--clip-grad", type=float, default=0.0, help="clip each parameter's gradient norm (0 = off)")

    r = p.add_argument_group("run")
    r.add_argument("--recipe", default="paper", choices=recipes.choices(method), help=recipes.help_for(method))
    r.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 on GPUs that have it, fp16 on older GPUs, off on CPU")
    r.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"),
                   help="where to train: auto = a CUDA GPU if visible, else Apple MPS, else the CPU")
    r.add_argument("--seed", type=int, default=0, help="seed of python, numpy, torch and the data order")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    r.add_argument("--out", default=None, help="run directory (default runs/<method>/<data>-<arch>)")
    r.add_argument("--resume", default="auto",
                   help="auto: resume from <out>/checkpoint.pt if it exists; never: start afresh (the old "
                        "checkpoint is replaced); or a path to a checkpoint to resume from")
    r.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    r.add_argument("--max-steps", type=int, default=None,
                   help="stop after N optimiser steps in total (resumed ones included); schedules still "
                        "follow --epochs")
    r.add_argument("--eval-every", type=int, default=1, help="kNN monitor every N epochs (0 = never)")
    r.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0 = epochs only)")
    r.add_argument("--log-every", type=int, default=10, help="log every N steps")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write the logged scalars as TensorBoard events to <out>/tensorboard (needs the "
                        "optional tensorboard package: pip install tensorboard)")
    r.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of the training images for a per-epoch validation loss when "
                        "the dataset has no test split")
    p.set_defaults(**defaults)
    return p


def parse_cli(method: str, add_arguments, defaults: dict | None = None, argv=None,
              description: str = "") -> argparse.Namespace:
    """The shared options plus the method's (`add_arguments(parser)`), parsed and checked. Nothing
    here imports torch, so --help and option errors come back at once."""
    parser = base_parser(method, description, **(defaults or {}))
    add_arguments(parser)
    return parse_args(parser, recipes.expand(method, sys.argv[1:] if argv is None else list(argv)))


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
    if args.arch.startswith("vit") and args.patch_size >= 1 and args.image_size % args.patch_size:
        problems.append(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    if args.max_images is not None and args.max_images < 1:
        problems.append("--max-images must be at least 1")
    if not 0 <= args.val_fraction < 1:
        problems.append("--val-fraction must be in [0, 1)")
    if args.workers < 0:
        problems.append("--workers must be >= 0")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        problems.append("--tensorboard needs the tensorboard package; pip install tensorboard or leave it out")
    problems += optimisation_problems(args)
    if args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if args.image_size < 8:
        problems.append(f"--image-size must be at least 8 pixels, got {args.image_size}")
    elif args.arch.startswith("vit"):
        problems += patch_problems(args)
    if args.save_every < 0 or args.eval_every < 0 or args.log_every < 1:
        problems.append("--save-every and --eval-every must be >= 0 and --log-every >= 1")
    problems += [p for p in (data_root_problem(args.data_root), args.out and output_problem(args.out)) if p]
    if problems:
        parser.error("; ".join(problems))
    if args.weight_decay_end is None:
        args.weight_decay_end = args.weight_decay
    return args


def optimisation_problems(args) -> list[str]:
    """Every optimiser and schedule needs a positive learning rate (torch refuses a negative one
    for some optimisers and silently ascends the loss with others, e.g. LARS)."""
    problems = []
    if not args.lr > 0:
        problems.append(f"--lr must be > 0, got {args.lr}; pass a positive base learning rate")
    if args.min_lr is not None and args.min_lr < 0:
        problems.append(f"--min-lr must be >= 0, got {args.min_lr}")
    if args.weight_decay < 0 or (args.weight_decay_end is not None and args.weight_decay_end < 0):
        problems.append("--weight-decay and --weight-decay-end must be >= 0")
    if not 0 <= args.momentum < 1:
        problems.append(f"--momentum must be in [0, 1), got {args.momentum}")
    if not args.lars_eta > 0:
        problems.append(f"--lars-eta must be > 0, got {args.lars_eta}")
    if args.clip_grad < 0:
        problems.append(f"--clip-grad must be >= 0 (0 = off), got {args.clip_grad}")
    if not 0 <= args.drop_path < 1:
        problems.append(f"--drop-path must be in [0, 1), got {args.drop_path}")
    if args.warmup_epochs < 0:
        problems.append(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    return problems


def patch_problems(args) -> list[str]:
    """A ViT patch must fit in every crop the method makes: the global crops (--image-size) and,
    for multi-crop methods (DINO, DINO-Twins), the local crops (--local-crops-size or `crop_sizes`)."""
    if args.patch_size < 1:
        return [f"--patch-size must be at least 1, got {args.patch_size}"]
    from common.augment import crop_sizes  # torch: only for ViT commands

    crops = {"global": args.image_size}
    if getattr(args, "local_crops_number", 0) > 0:
        crops["local"] = getattr(args, "local_crops_size", 0) or crop_sizes(args.image_size)[1]
    for kind, size in crops.items():
        if args.patch_size > size:
            fix = " or --local-crops-number 0" if kind == "local" else ""
            return [f"--patch-size {args.patch_size} is larger than the {size} px {kind} crops of --image-size "
                    f"{args.image_size}; use a patch size of at most {size} (e.g. 4 at 32 px){fix}"]
    return []


def data_root_problem(root) -> str | None:
    if root is not None and Path(root).exists() and not Path(root).is_dir():
        return f"--data-root {root} is a file, not a folder; pass the folder that holds the datasets"
    return None


def output_problem(path, option: str = "--out") -> str | None:
    """Why `path` cannot be an output folder (a file, under a file, a kernel filesystem, not
    writable), or None. Checked before anything is built or written."""
    path = Path(path).expanduser().absolute()
    real = Path(os.path.realpath(path))
    for system in KERNEL_FILESYSTEMS:
        if real == Path(system) or Path(system) in real.parents:
            return f"{option} {path} is under {system}, a kernel filesystem, not storage; choose a folder on a disk"
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file, not a folder; choose another {option}"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{option} {path} is under {existing}, which is a file; choose another {option}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {path}: {existing} is not writable; choose a folder you can write to"
    return None


# Options that steer a run without shaping its state: they may change on resume.
RUN_CONTROL = {"out", "resume", "trust_checkpoint", "max_steps", "epochs", "save_every", "log_every", "eval_every",
               "workers", "device", "amp", "data_root", "download", "compile", "deterministic", "eval_data",
               "tensorboard"}


def option_differences(saved: dict, current: dict) -> str:
    """'--out-dim 1024 differs from the checkpoint's 65536' for every state-shaping option that
    differs from the checkpoint's args, with the ways out."""
    def show(value):
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    diffs = [f"--{k.replace('_', '-')} {show(v)} differs from the checkpoint's {show(saved[k])}"
             for k, v in current.items() if k in saved and k not in RUN_CONTROL and show(saved[k]) != show(v)]
    if not diffs:
        return "it comes from another version of this method; use another --out or --resume never"
    return "; ".join(diffs[:3]) + "; use the checkpoint's values, another --out or --resume never"


def add_crop_scale_argument(parser) -> None:
    """--crop-scale of the two-view methods (BYOL, Barlow Twins)."""
    parser.add_argument("--crop-scale", type=float, nargs=2, default=CROP_SCALE, metavar=("MIN", "MAX"),
                        help="area range of both random resized crops, relative to the image (papers: 0.08 1). "
                             "A larger MIN makes the two views share more of the image: easier to match, "
                             "which short runs on tiny images learn from sooner")


def add_color_arguments(parser) -> None:
    """--color-jitter and --gray-p of the methods with the SSL colour distortion."""
    parser.add_argument("--color-jitter", type=float, nargs=4, default=COLOR_JITTER,
                        metavar=("B", "C", "S", "H"),
                        help="strength of brightness, contrast, saturation and hue jitter, applied with p 0.8 "
                             "(papers: 0.4 0.4 0.2 0.1). Raise H (up to 0.5) where the data's colour is random "
                             "and unrelated to the class, so that two views never share it (SimCLR, Sec. 3)")
    parser.add_argument("--gray-p", type=float, default=0.2, help="probability of a greyscale view (papers: 0.2)")
