"""What every evaluation script shares: options, checkpoint and dataset loading, the JSON result.

Each script takes `--checkpoint PATH` (any method's checkpoint in the common format), `--data` /
`--data-root` (the registry), `--out DIR`, `--device`, `--image-size` (default: the size the
checkpoint was trained at), writes its numbers to `<out>/<name>.json` and prints the same JSON
object as the last line of stdout, so that run_all.sh and the report can read either.

This module imports no torch at import time (nor anything that does), and neither does any eval
script: a script parses its options first (`parse_cli`, as a train.py does with common/options.py)
and imports torch, torchvision, scikit-learn and matplotlib inside its functions, so `--help` and
option errors come back at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from common.options import RELEASED, TRUST_HELP, HelpFormatter, data_root_problem, output_problem

if TYPE_CHECKING:
    import torch

# The argument groups of every script's --help, in this order; a script adds its own options to
# "evaluation" (and its split or image-selection options to "data").
GROUPS = ("checkpoint", "data", "evaluation", "run")


class EvalParser(argparse.ArgumentParser):
    """Checks the options every script shares as soon as they are parsed, before anything is
    loaded or written: one-line errors."""

    def group(self, title: str) -> argparse._ArgumentGroup:
        """The argument group of that title (one of GROUPS)."""
        return next(g for g in self._action_groups if g.title == title)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "raw_pixels", None) is not None:  # a script that offers --raw-pixels
            pixels_problem(parsed)
        problems = [data_root_problem(parsed.data_root),
                    output_problem(parsed.out) if parsed.out else None,
                    output_problem(parsed.cache_dir, "--cache-dir") if parsed.cache_dir else None]
        if parsed.seed < 0:
            problems.append(f"--seed must be >= 0, got {parsed.seed}")
        # None: the script picks its default; 0 is allowed: a frozen run (tests compare it with kNN)
        if getattr(parsed, "lr", None) is not None and parsed.lr < 0:
            problems.append(f"--lr must be >= 0, got {parsed.lr}; pass a positive learning rate")
        problems = [p for p in problems if p]
        if problems:
            raise SystemExit(f"error: {'; '.join(problems)}")
        return parsed


def pixels_problem(args) -> None:
    """--raw-pixels or --checkpoint, exactly one; the pixels need the size to cut them at and a
    folder to write to (there is no checkpoint folder)."""
    if args.raw_pixels and args.checkpoint:
        raise SystemExit("error: --raw-pixels judges the pixels themselves: pass it or --checkpoint, not both")
    if not args.raw_pixels and not args.checkpoint:
        raise SystemExit("error: --checkpoint is required (or --raw-pixels for the raw-pixels baseline)")
    if args.raw_pixels and not args.image_size:
        raise SystemExit("error: --raw-pixels needs --image-size (there is no checkpoint to take it from)")
    if args.raw_pixels and not args.out:
        raise SystemExit("error: --raw-pixels needs --out (there is no checkpoint folder to write next to)")


def base_parser(description: str = "", multi_checkpoint: bool = False, script: str | None = None,
                raw_pixels: bool = False) -> EvalParser:
    """The options every script shares, in the groups of GROUPS (the script's own go to
    `parser.group("evaluation")`); `script` names it in the usage line (python eval/<script>.py).
    `raw_pixels`: the script also offers --raw-pixels, the baseline without a network (then
    --checkpoint is optional: exactly one of the two)."""
    p = EvalParser(prog=f"python eval/{script}.py" if script else None, description=description,
                   formatter_class=HelpFormatter)
    c, d, _, r = (p.add_argument_group(title) for title in GROUPS)
    released = ("; also released weights: an official DINO file (backbone or training checkpoint, whose teacher "
                f"is taken), a torchvision ResNet state dict, or a name ({', '.join(RELEASED)}) downloaded once "
                "from the official URL")
    if multi_checkpoint:
        c.add_argument("--checkpoint", required=True, nargs="+", metavar="PATH", type=checkpoint_argument,
                       help="one or more checkpoints in the ssl-lab format (e.g. a run's snapshots/*.pt)" + released)
    else:
        c.add_argument("--checkpoint", required=not raw_pixels, metavar="PATH", type=checkpoint_argument,
                       help="checkpoint.pt of any method's run (or a snapshot)" + released)
    if raw_pixels:
        c.add_argument("--raw-pixels", action="store_true",
                       help="no network: the baseline of the eval views' flattened pixels, each channel "
                            "standardised with the train images' statistics (needs --image-size and --out)")
    c.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)

    d.add_argument("--data", default="shapes",
                   help="dataset: a registry name (shapes, digits, cifar10, cifar100, stl10, imagenette, "
                        "tiny-imagenet, imagefolder, coco, voc2012, places365) or a path to an image folder")
    d.add_argument("--data-root", default=None, help="where datasets live (default: $SSL_DATA if set, else ./data)")
    d.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the checkpoint's training image size)")
    d.add_argument("--max-train", type=int, default=None,
                   help="use at most N train images, evenly spaced over the split (smoke runs) (default: all)")
    d.add_argument("--max-test", type=int, default=None,
                   help="use at most N test images, evenly spaced over the split (smoke runs) (default: all)")

    r.add_argument("--out", default=None,
                   help="output folder for JSON and PNG (default: <checkpoint folder>/eval)")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="where to run: auto = a CUDA GPU if visible, else Apple MPS, else the CPU")
    r.add_argument("--batch-size", type=int, default=256,
                   help="batch size of feature extraction (forward passes of the frozen backbone)")
    r.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0 = the main process)")
    r.add_argument("--seed", type=int, default=0,
                   help="seed of the evaluation's randomness (subsets, heads, t-SNE) and of torch")
    r.add_argument("--cache-dir", default=None,
                   help="feature cache folder, shared by the scripts run on one checkpoint (default: <out>/features)")
    return p


def parse_cli(script: str, add_arguments, argv=None, description: str = "", multi_checkpoint: bool = False,
              raw_pixels: bool = False) -> argparse.Namespace:
    """The shared options plus the script's (`add_arguments(parser)`), parsed and checked. Nothing
    here imports torch, so --help and option errors come back at once."""
    parser = base_parser(description, multi_checkpoint, script, raw_pixels)
    add_arguments(parser)
    return parser.parse_args(argv)


def checkpoint_argument(value: str) -> str:
    """--checkpoint: a path, or the name of released weights → the path of their downloaded file
    (so that the feature cache and the output folder see a file)."""
    if value not in RELEASED:  # a path: no torch needed to tell
        return value
    from common.pretrained import PretrainedError, fetch

    try:
        return str(fetch(value))
    except PretrainedError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {value}")


def open_checkpoint(path, device: torch.device, trust: bool = False):
    """(backbone in eval mode, checkpoint) or a one-line SystemExit; `trust` is --trust-checkpoint."""
    from common.checkpoint import CheckpointError, load_backbone

    try:
        return load_backbone(path, device, trust=trust)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        # A dict with the right format tag whose backbone does not rebuild or load.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SystemExit(f"error: {path} has a backbone that does not load ({msg}); "
                         "is it a checkpoint from this version of ssl-lab?") from None


def open_network(args, check=None):
    """What an evaluation judges, from its options: (device, backbone in eval mode, checkpoint, image
    size, output folder). The image size is --image-size, else the checkpoint's training size; with
    --raw-pixels there is no network: (device, None, RAW_PIXELS, --image-size, output folder).
    `check(backbone, ckpt)` may refuse the network before the output folder is made."""
    from common.runtime import resolve_device

    device = resolve_device(args.device)
    if getattr(args, "raw_pixels", False):
        backbone, ckpt, image_size = None, RAW_PIXELS, args.image_size
    else:
        backbone, ckpt = open_checkpoint(args.checkpoint, device, args.trust_checkpoint)
        image_size = args.image_size or default_image_size(ckpt)
    if check is not None:
        check(backbone, ckpt)
    return device, backbone, ckpt, image_size, out_dir(args, args.checkpoint)


def open_dataset(name: str, root, split: str, need_labels: bool = False, need_masks: bool = False):
    from common.datasets import DatasetError, build_dataset

    try:
        ds = build_dataset(name, root, split=split)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    if len(ds) == 0:
        raise SystemExit(f"error: the {split} split of {name!r} has no images")
    if need_labels and not ds.classes:
        raise SystemExit(f"error: the {split} split of {name!r} has no labels; this evaluation needs a "
                         "labelled dataset (e.g. --data shapes, cifar10, imagenette)")
    if need_masks and not getattr(ds, "has_masks", False):
        raise SystemExit(f"error: {name!r} has no segmentation masks; use --data shapes, voc2012 or "
                         "coco with semantic_segmentation")
    return ds


def default_image_size(ckpt: dict) -> int:
    """The image size the checkpoint was trained at: its args, else its backbone kwargs."""
    size = (ckpt.get("args") or {}).get("image_size")
    return int(size) if size else int(ckpt["backbone_kwargs"].get("image_size", 224))


def out_dir(args, checkpoint) -> Path:
    first = checkpoint[0] if isinstance(checkpoint, (list, tuple)) else checkpoint
    out = Path(args.out) if args.out else Path(first).resolve().parent / "eval"
    problem = output_problem(out)
    if problem:
        raise SystemExit(f"error: {problem}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cache_dir(args, out: Path) -> Path:
    return Path(args.cache_dir) if args.cache_dir else out / "features"


RAW_PIXELS = {"method": "raw_pixels", "arch": "pixels"}  # what the JSON says was judged with --raw-pixels


def checkpoint_info(path, ckpt: dict) -> dict:
    """What the JSON says about the network it judged."""
    return {"checkpoint": None if path is None else str(path), "method": ckpt.get("method"), "arch": ckpt.get("arch"),
            "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
            "backbone_kwargs": ckpt.get("backbone_kwargs"),
            **({"loaded": ckpt["source"]} if ckpt.get("source") else {})}  # released weights: what was taken


def data_info(args, image_size: int) -> dict:
    return {"data": args.data, "data_root": args.data_root, "image_size": image_size,
            "max_train": args.max_train, "max_test": args.max_test}


def environment() -> dict:
    import torch

    return {"torch": torch.__version__, "python": platform.python_version()}


def emit(result: dict, out: Path, name: str) -> dict:
    """Write `<out>/<name>.json` (atomically) and print the same object as the last stdout line."""
    result = {**result, "environment": environment()}
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    print(json.dumps(result), flush=True)
    return result


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    plt = pyplot()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)
