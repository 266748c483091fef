"""Train a context-free network on jigsaw puzzles (Noroozi & Favaro 2016): `python jigsaw/train.py`.

With no arguments: ResNet-18 (small-image stem) on the embedded `shapes` images at 64 px, 3×3
puzzles of 18 px tiles, 1000 permutations, a CPU-sized batch and schedule. The paper's setting
(225 px crops of 256 px images, 64 px tiles, SGD lr 0.01 for a batch of 256, 1000 permutations)
is, on a GPU and a real dataset such as places365:
`--image-size 225 --batch-size 256 --optimizer sgd --lr 0.01 --weight-decay 5e-4 --tile-dim 1024
--hidden-dim 4096 --epochs 90`.
The set of permutations is chosen greedily for a large Hamming distance, by default maximising the
minimal distance to the chosen set (max-min, this project's choice; `--perm-criterion max-mean`
maximises the mean distance instead, as the reference code of Noroozi & Favaro does), generated once
per (grid, count, seed, criterion) and cached under <data-root>/jigsaw (or ~/.cache/ssl-lab/jigsaw).
`--permutations FILE` uses a published set instead (.npy, N × 9, 0- or 1-based). Its minimal and
mean Hamming distances go to config.json, the log and metrics.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common.options import parse_cli

# CPU-sized defaults on `shapes`; the paper's are in the module docstring.
DEFAULTS = dict(arch="resnet18", image_size=64, batch_size=64, epochs=30, lr=2e-3, min_lr=1e-5, warmup_epochs=2,
                optimizer="adamw", weight_decay=1e-4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Jigsaw")
    g.add_argument("--grid", type=int, default=3, choices=(2, 3),
                   help="puzzle of grid x grid tiles (paper: 3, 9 tiles, 9! orderings; 2 has only 24)")
    g.add_argument("--num-permutations", type=int, default=1000,
                   help="classes: permutations chosen greedily for a large Hamming distance (paper 1000; 100 and "
                        "2000 are common; at most 24 with --grid 2)")
    g.add_argument("--perm-criterion", choices=("max-min", "max-mean"), default="max-min",
                   help="greedy choice: the candidate with the largest minimal (max-min) or mean (max-mean, the "
                        "reference code's) Hamming distance to the permutations chosen so far")
    g.add_argument("--permutations", default=None, metavar="FILE",
                   help="a published permutation set (.npy of N x grid² tile indices, 0- or 1-based) instead of "
                        "generating one; --num-permutations is then N")
    g.add_argument("--perm-seed", type=int, default=0, help="seed of the permutation set's random first element")
    g.add_argument("--perm-cache", default=None,
                   help="folder caching permutation sets (default <data-root>/jigsaw, else ~/.cache/ssl-lab/jigsaw)")
    g.add_argument("--tile-dim", type=int, default=512, help="per-tile layer fc6, shared by the tiles (paper 1024)")
    g.add_argument("--hidden-dim", type=int, default=1024, help="fc7 on the concatenated tiles (paper 4096)")
    g.add_argument("--gray-prob", type=float, default=0.3,
                   help="probability of a grayscale puzzle, against chromatic-aberration shortcuts")
    g.add_argument("--channel-jitter", type=int, default=None,
                   help="shift each colour channel of a tile by up to this many pixels (paper ±2 at 225 px; "
                        "default: scaled to --image-size and to the room left in a cell)")


def check_arguments(args) -> None:
    def fail(msg):
        raise SystemExit(f"error: {msg}")

    if not 0.0 <= args.gray_prob <= 1.0:
        fail(f"--gray-prob must be in [0, 1], got {args.gray_prob}")
    if args.channel_jitter is not None and args.channel_jitter < 0:
        fail(f"--channel-jitter must be >= 0, got {args.channel_jitter}")
    if args.tile_dim < 1 or args.hidden_dim < 1:
        fail("--tile-dim and --hidden-dim must be at least 1")
    if args.num_permutations < 2 and args.permutations is None:
        fail(f"--num-permutations must be at least 2, got {args.num_permutations}")


def build(args, steps_per_epoch: int):
    from common.runtime import is_main
    from jigsaw.data import (
        JigsawViews,
        PermutationError,
        default_cache_dir,
        load_permutations,
        puzzle_geometry,
        read_permutations,
    )
    from jigsaw.model import Jigsaw

    check_arguments(args)
    patch = args.patch_size if args.arch.startswith("vit") else 1
    try:
        geometry = puzzle_geometry(args.image_size, args.grid, patch)
        if args.permutations is not None:
            permutations, hamming = read_permutations(args.permutations, args.grid)
            args.num_permutations = len(permutations)
        else:
            cache = args.perm_cache or default_cache_dir(args.data_root)
            permutations, hamming = load_permutations(args.num_permutations, args.grid, args.perm_seed, cache,
                                                      args.perm_criterion)
    except PermutationError as e:
        raise SystemExit(f"error: {e}") from None
    # recorded in config.json (written after build) and in the first epoch's metrics
    args.permutation_min_hamming = hamming["min_hamming"]
    args.permutation_mean_hamming = hamming["mean_hamming"]
    args.puzzle_geometry = geometry
    if is_main():
        print(f"jigsaw: {args.num_permutations} permutations of {args.grid * args.grid} tiles, Hamming distance "
              f"min {hamming['min_hamming']:g} mean {hamming['mean_hamming']:.3f}; tiles {geometry['tile']} px in "
              f"{geometry['cell']} px cells of a {geometry['crop']} px crop", flush=True)
    views = JigsawViews(args.image_size, permutations, args.grid, args.gray_prob, args.channel_jitter, patch)
    return Jigsaw(args, permutations, geometry["tile"], hamming), views


def main(argv=None):
    args = parse_cli("jigsaw", add_arguments, DEFAULTS, argv,
                     "Jigsaw puzzles as a pretext task (Noroozi & Favaro 2016)")
    from common import engine  # torch loads only now: --help and option errors never wait for it

    return engine.train("jigsaw", args, build)


if __name__ == "__main__":
    main()
