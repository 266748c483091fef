"""The CPU recipe of every method: one table, read by `train.py --recipe cpu` and by run_all's cpu
profile (eval/pipeline.py), so that the README's first command and the report train the same way.

Every method trains the CPU-sized ResNet-style `cnn_tiny` (0.3 M parameters) on 32 px images,
batch 128: 10 epochs; BYOL 16 and DINO / DINO-Twins 14, since they learn more slowly per epoch (kNN
42 % for BYOL after 10 epochs, 41 % and 45 % for DINO and DINO-Twins after 8, against Barlow
Twins' 57 % after 10, each at the end of its own cosine schedule). On the
embedded `shapes` that is 2-7 minutes of a 2-core CPU per method (the cpu profile's report gives
each run's time). Why each setting differs from the paper default (the defaults stay in each
train.py's --help):
- AdamW at a peak lr of 2e-3 (base 4e-3 per 256 images) for the joint-embedding methods: LARS or
  SGD at the papers' rates need hundreds of epochs; AdamW learns `shapes` in a few;
- hue jitter 0.5 and greyscale p 0.3 (papers 0.1 and 0.2): the colours of a `shapes` image are
  random, so the two views must not share them (SimCLR's colour-distortion finding);
- small heads (Barlow Twins 512-512-512, BYOL 1024 -> 256, DINO 1024 prototypes): the papers'
  8192-wide or 65 536-way heads cost more than the backbone here;
- EMA momentum 0.99 for DINO's teacher and 0.97 for BYOL's target (papers 0.996): a few hundred
  steps in all, so the target must keep up. BYOL's online network spends its first epochs
  predicting a target that is still nearly random; at 0.97 the target follows it faster: 57.4 %
  kNN on `shapes` after 16 epochs against 48.5 % at 0.99, and on cifar10-subset 37.2 against 34.1
  (0.9 follows too fast: 33.3 % there after 4 epochs, against 36.4 % at 0.97);
- DINO's head with BatchNorm (`--use-bn-in-head`, an option of the official code): without it the
  CNN's all-positive pooled features give the teacher nearly the same logits for every image, and
  the loss sat at ln K (a uniform teacher) for the whole run;
- DINO's and DINO-Twins' local crops at 16 px, 2 of them (DINO: 96 px against 224, 6-10 crops;
  the DINO-Twins repository: 3, resized to the global 32 px): a 16 px crop costs a quarter of a
  32 px one, and both methods see the same crops;
- Jigsaw on a 2x2 grid with all 24 orderings: a 32 px image has no room for 3x3 tiles.

A CNN has no self-attention, so for the attention maps and the Jaccard DINO-Twins also trains the
small ViT `vit_micro` (patch 4 at 32 px: an 8x8 grid) with the same recipe and VIT_OPTIONS on top
(`--recipe cpu --arch vit_micro --epochs 8 --drop-path 0` outside the report), without
stochastic depth (DINO: 0.1): a 4-block ViT trained for 300 steps is not over-fitting, and the
dropped blocks only slow it. Its local crops matter: with the 2 global crops alone, 8 epochs fell to
8.5 % Jaccard (the heads settled on the background). With 16 px local crops and no drop path, 10
epochs took kNN from 15.2 % to 34.5 % and the best head's 60 % attention mask on 200 `shapes` test
images from 29.7 % Jaccard (the random ViT) to 40.8 % (10 min with 2 threads); with 32 px local
crops and drop path 0.1 it had reached kNN 17.4 % and Jaccard 38.1 % in 6 epochs.
"""

from __future__ import annotations

import shlex

RECIPES = ("paper", "cpu")
ARCH = "cnn_tiny"
COMMON = "--image-size 32 --patch-size 4 --batch-size 128 --epochs 10 --warmup-epochs 1"  # patch: ViTs only
ADAMW = "--optimizer adamw --lr 4e-3"  # peak 2e-3 at batch 128
COLOUR = "--color-jitter 0.4 0.4 0.4 0.5 --gray-p 0.3"
DINO_HEAD = "--out-dim 1024 --use-bn-in-head --local-crops-number 2 --local-crops-size 16 --momentum-teacher 0.99"
CPU = {
    "dino": f"{ADAMW} {COLOUR} --epochs 14 {DINO_HEAD}",
    "byol": f"{ADAMW} {COLOUR} --epochs 16 --weight-decay 1e-4 --tau 0.97 --hidden-dim 1024 --out-dim 256",
    "barlow_twins": f"{ADAMW} {COLOUR} --lr-biases 4e-3 --weight-decay 1e-4 --projector 512-512-512",
    "dino_twins": f"{ADAMW} {COLOUR} --epochs 14 {DINO_HEAD} --warmup-teacher-temp-epochs 0 "
                  "--bt-projector 512-512-512",
    "jigsaw": "--grid 2 --num-permutations 24",
    "colorization": "",
}
VIT = "vit_micro"
VIT_OPTIONS = "--epochs 8 --drop-path 0"
# Recipes of one method, reproducing a published run: name -> (options, what it is).
NAMED = {
    "byol": {
        # sthalles/PyTorch-BYOL on STL-10 with ResNet-18: SGD at lr 0.03 (base 0.12 per 256 at batch
        # 64), momentum 0.9, weight decay 4e-4, 96 px, an MLP of 512 -> 128, 15 epochs; --min-lr 0.03
        # keeps the lr constant (no decay, no warm-up), as in that code.
        "stl10-sgd": ("--data stl10 --train-split unlabeled --arch resnet18 --image-size 96 --batch-size 64 "
                      "--epochs 15 --optimizer sgd --lr 0.12 --min-lr 0.03 --warmup-epochs 0 --momentum 0.9 "
                      "--weight-decay 4e-4 --hidden-dim 512 --out-dim 128",
                      "sthalles/PyTorch-BYOL's STL-10 run: the 100k unlabelled images, SGD at a constant lr 0.03 "
                      "with batch 64, momentum 0.9, weight decay 4e-4"),
    },
}


def choices(method: str) -> list[str]:
    return [*RECIPES, *NAMED.get(method, {})]


def help_for(method: str) -> str:
    named = "".join(f"; {name}: {note} = {words}" for name, (words, note) in NAMED.get(method, {}).items())
    return ("a named set of options put before the command line, so that every option given still wins. paper: "
            "every default is the paper's (see each option); cpu: the CPU-sized recipe of common/recipes.py "
            f"({ARCH} at 32 px, AdamW, small heads, strong colour jitter), which learns the embedded shapes in a "
            f"few minutes on a 2-core CPU{named}")


def options(method: str, recipe: str = "cpu") -> list[str]:
    """A recipe of `method` as command-line words (paper: none)."""
    if recipe == "cpu":
        return ["--arch", ARCH, *shlex.split(COMMON), *shlex.split(CPU[method])]
    return shlex.split(NAMED.get(method, {}).get(recipe, ("", ""))[0])


def expand(method: str, argv: list[str]) -> list[str]:
    """argv with the options of its `--recipe` put in front, so that every option the user gives
    (anywhere on the line) overrides them: argparse keeps the last value of an option. An unknown
    name is left for argparse to refuse."""
    chosen = None
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word == "--recipe" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif word.startswith("--recipe="):
            chosen = word.split("=", 1)[1]
    if chosen not in choices(method) or (chosen == "cpu" and method not in CPU):
        return list(argv)
    return [*options(method, chosen), *argv]
