"""Train BYOL (Grill et al. 2020) on the shared engine.

    python byol/train.py --data shapes --image-size 32 --epochs 20
    python byol/train.py --recipe stl10-sgd          # BYOL on STL-10 after sthalles/PyTorch-BYOL, in one command

Defaults are the paper's (Section 3.3 and Appendix C): LARS, base lr 0.2 × batch/256 (the
paper's 4096 batch gives 3.2), weight decay 1.5e-6, 10 warm-up epochs then a cosine to 0,
τ_base 0.996, projector and predictor 4096 → 256, 1000 epochs. A --recipe (common/recipes.py) puts
its options before the command line: options given explicitly always win over it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common.options import add_color_arguments, add_crop_scale_argument, base_parser, parse_cli

DESCRIPTION = __doc__.split("\n\n")[0]

# The paper's optimisation (Appendix C); the batch stays at the engine's 256 so that the defaults
# also run on a small dataset; the lr follows it linearly.
DEFAULTS = dict(optimizer="lars", lr=0.2, min_lr=0.0, weight_decay=1.5e-6, warmup_epochs=10, epochs=1000)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("BYOL")
    add_crop_scale_argument(g)
    add_color_arguments(g)
    g.add_argument("--tau", type=float, default=0.996,
                   help="base decay rate τ of the target EMA, raised to 1 on a per-step cosine (paper: 0.996 "
                        "for 1000 epochs; use 0.97-0.99 for short runs so that the target keeps up: the cpu recipe "
                        "has 0.97)")
    g.add_argument("--hidden-dim", type=int, default=4096, help="hidden width of projector and predictor (paper: 4096)")
    g.add_argument("--out-dim", type=int, default=256, help="projection / prediction size (paper: 256)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser (shared options + BYOL's) with the paper's defaults."""
    parser = base_parser("byol", DESCRIPTION, **DEFAULTS)
    add_arguments(parser)
    return parser


def build(args, steps_per_epoch: int):
    from byol.data import BYOLViews
    from byol.model import BYOL
    from common.backbones import build_backbone

    if not 0.0 <= args.tau <= 1.0:
        raise SystemExit(f"error: --tau must lie in [0, 1], got {args.tau}")
    if args.hidden_dim < 1 or args.out_dim < 1:
        raise SystemExit("error: --hidden-dim and --out-dim must be positive")
    backbone = build_backbone(args.arch, args.image_size, args.patch_size, args.drop_path)
    method = BYOL(backbone, hidden_dim=args.hidden_dim, out_dim=args.out_dim, tau=args.tau,
                  epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    return method, BYOLViews(args)


def main(argv=None):
    args = parse_cli("byol", add_arguments, DEFAULTS, argv, DESCRIPTION)
    from common import engine  # torch loads only now: --help and option errors never wait for it

    return engine.train("byol", args, build)


if __name__ == "__main__":
    main()
