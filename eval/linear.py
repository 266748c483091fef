"""Linear probe: a linear classifier on frozen backbone features (the linear evaluation protocol of
Zhang et al. 2016, SimCLR, BYOL, DINO).

Protocol (our choices, stated in the JSON):
- features: the backbone output of the eval transform (resize + centre crop), extracted once and
  cached; standardised with the mean / std of the labelled train features, which makes one learning
  rate fit every backbone (feature scales differ by orders of magnitude between methods).
- classifier: nn.Linear (weights N(0, 0.01), bias 0, as DINO), cross-entropy, SGD with momentum 0.9,
  learning rate on a cosine schedule from `--lr` to 0, no warm-up, `--epochs` passes (DINO: 100).
- weight decay: `--weight-decay auto` picks it from a grid on a stratified 20 % held-out part of the
  labelled train features (the probe is retrained on all of them with the chosen value); with fewer
  than 2 labelled images in some class there is no held-out part and 0 is used. A number fixes it.
- `--label-fraction`: that fraction of each class, at least one image per class, drawn with `--seed`.
- `--augment`: the probe trains through the frozen backbone on random-resized crops and flips
  (DINO's linear eval), still standardised with the un-augmented statistics; test features are the
  cached centre crops. `auto` weight decay is then chosen on cached features (a cheap proxy).

That is the default, `--protocol fast`, which the report uses. `--protocol dino` is DINO's own
linear evaluation (facebookresearch/dino eval_linear.py), whose numbers compare with published
linear results:
- features: a ViT's CLS tokens of its last 4 blocks, each after the final norm, concatenated (ViT-S,
  ViT-T); ViT-B: the last block's CLS token and its average-pooled patch tokens
  (`n_last_blocks=1, avgpool_patchtokens=True`); `--n-last-blocks` / `--avgpool-patchtokens`
  override. A ResNet: its pooled features. Not standardised.
- training: through the frozen backbone on RandomResizedCrop(image size, scale 0.08-1) + flip;
  SGD, lr 0.001 × batch/256, momentum 0.9, no weight decay, cosine over the epochs (stepped once
  per epoch, as its CosineAnnealingLR), 100 epochs; test on the eval transform's centre crops.
- reported: the last epoch's top-1 and, as eval_linear.py prints, the best top-1 over the epochs.

    python eval/linear.py --checkpoint runs/byol/shapes-resnet18/checkpoint.pt --label-fraction 0.01 0.1 1
    python eval/linear.py --checkpoint dino_vits16 --data imagenette --image-size 224 --protocol dino
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

import numpy as np

from common.schedules import cosine_schedule
from eval import cli  # torch-free, as eval.knn: torch is imported inside the functions, after parsing
from eval.knn import RAW_PIXELS_FEATURES, topk_accuracy

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHT_DECAY_GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
HELDOUT_FRACTION = 0.2


def sample_label_fraction(targets, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of round(fraction × n_c) images of every class c (at least one each), drawn
    without replacement with `seed`; unlabelled (-1) entries are never drawn."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(targets[targets >= 0]):
        members = np.flatnonzero(targets == c)
        n = max(1, math.floor(fraction * len(members) + 0.5))
        chosen.append(rng.permutation(members)[:n])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def heldout_split(targets, fraction: float = HELDOUT_FRACTION, seed: int = 0):
    """(fit, held-out) positions, stratified; None when some class has fewer than 2 members."""
    targets = np.asarray(targets)
    counts = np.bincount(targets[targets >= 0])
    if (counts[counts > 0] < 2).any():
        return None
    held = sample_label_fraction(targets, fraction, seed)
    # sample_label_fraction keeps >= 1 per class; a class of exactly 2 gives one to each side.
    fit = np.setdiff1d(np.arange(len(targets)), held)
    return fit, held


def standardise(train: torch.Tensor, *others: torch.Tensor):
    """Zero mean, unit variance per dimension, with the statistics of `train`."""
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    return (mean, std), [(x - mean) / std for x in (train, *others)]


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 100, lr: float = 0.1,
                weight_decay: float = 0.0, batch_size: int = 256, momentum: float = 0.9, seed: int = 0,
                on_epoch=None) -> nn.Linear:
    """Multinomial logistic regression on (standardised) features by SGD + cosine schedule.
    `on_epoch(epoch, mean_loss, head)` is called after every epoch."""
    import torch
    import torch.nn.functional as F

    from eval.heads import new_head

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = new_head(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    batch_size = min(batch_size, len(y))
    steps = math.ceil(len(y) / batch_size)
    schedule = cosine_schedule(lr, 0.0, epochs, steps)
    it = 0
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen).to(x.device)
        total = 0.0
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = schedule[it]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            it += 1
        if on_epoch is not None:
            on_epoch(epoch, total / len(y), head)
    return head


def train_probe_augmented(backbone, dataset, indices, image_size: int, mean, std, num_classes: int,
                          epochs: int, lr: float, weight_decay: float, batch_size: int, seed: int,
                          workers: int, device, crop_scale: float = 0.08, on_epoch=None) -> nn.Linear:
    """The probe trained on random-resized crops and flips through the frozen backbone."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from common.augment import MEAN, STD
    from eval.features import Transformed
    from eval.heads import new_head

    transform = v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
    ])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(indices))
    loader = DataLoader(Transformed(dataset, indices, transform), batch_size=batch_size, shuffle=True,
                        num_workers=workers, generator=gen)
    head = new_head(mean.shape[0], num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = cosine_schedule(lr, 0.0, epochs, len(loader))
    backbone.eval()
    mean, std = mean.to(device), std.to(device)
    it = 0
    for epoch in range(epochs):
        total, n = 0.0, 0
        for images, labels in loader:
            with torch.no_grad():
                feats = (backbone(images.to(device)).float() - mean) / std
            labels = torch.as_tensor(labels, device=device)
            for group in opt.param_groups:
                group["lr"] = schedule[it]
            loss = F.cross_entropy(head(feats), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n, it = total + loss.item() * len(labels), n + len(labels), it + 1
        if on_epoch is not None:
            on_epoch(epoch, total / n, head)
    return head


def evaluate(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    """{1: top-1, 5: top-5} in percent."""
    import torch

    with torch.no_grad():
        preds = head(x).topk(min(5, head.out_features), dim=1).indices
    return topk_accuracy(preds, y)


def choose_weight_decay(x, y, num_classes, epochs, lr, batch_size, seed):
    """(weight decay, how it was chosen, held-out top-1 per grid value)."""
    import torch

    split = heldout_split(y.cpu().numpy(), HELDOUT_FRACTION, seed)
    if split is None:
        return 0.0, "fixed at 0: some class has fewer than 2 labelled images, no held-out part", {}
    fit, held = (torch.as_tensor(s, device=x.device) for s in split)
    scores = {}
    for wd in WEIGHT_DECAY_GRID:
        head = train_probe(x[fit], y[fit], num_classes, epochs, lr, wd, batch_size, seed=seed)
        scores[wd] = evaluate(head, x[held], y[held])[1]
    best = max(WEIGHT_DECAY_GRID, key=lambda wd: (scores[wd], -WEIGHT_DECAY_GRID.index(wd)))
    return best, f"best held-out top-1 on a stratified {HELDOUT_FRACTION:.0%} of the labelled train " \
                 f"features over {list(WEIGHT_DECAY_GRID)}", {str(k): v for k, v in scores.items()}


def dino_blocks(arch: str) -> tuple[int, bool]:
    """(n_last_blocks, avgpool_patchtokens) of DINO's linear protocol: ViT-B 1 + avgpool, else 4."""
    return (1, True) if arch == "vit_base" else (4, False)


def train_probe_dino(features: nn.Module, dataset, indices, image_size: int, num_classes: int, epochs: int,
                     lr: float, batch_size: int, seed: int, workers: int, device, crop_scale: float = 0.08,
                     on_epoch=None) -> nn.Linear:
    """eval_linear.py's training: random-resized crops + flips through the frozen network, SGD
    (momentum 0.9, no weight decay) with `lr` already scaled by batch/256, cosine per epoch."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from common.augment import MEAN, STD
    from eval.features import Transformed
    from eval.heads import new_head

    transform = v2.Compose([v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(MEAN, STD)])
    torch.manual_seed(seed)
    loader = DataLoader(Transformed(dataset, indices, transform), batch_size=min(batch_size, len(indices)),
                        shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed))
    head = new_head(features.embed_dim, num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)
    features.eval()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for images, labels in loader:
            with torch.no_grad():
                x = features(images.to(device)).float()
            labels = torch.as_tensor(labels, device=device)
            loss = F.cross_entropy(head(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(labels), n + len(labels)
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, total / n, head)
    return head


def dino_protocol(args, backbone, ckpt, image_size: int, out, train_set, test_set, train_idx, device) -> dict:
    """`--protocol dino` (see the module docstring): results in the same JSON layout."""
    from common.augment import eval_transform
    from eval.features import extract_features, subset_indices
    from eval.heads import DINOLinearFeatures

    n_last, avgpool = dino_blocks(ckpt.get("arch") or "")
    n_last = args.n_last_blocks or n_last
    avgpool = avgpool if args.avgpool_patchtokens is None else args.avgpool_patchtokens
    if avgpool and n_last != 1 and hasattr(backbone, "get_intermediate_layers"):
        raise SystemExit("error: --avgpool-patchtokens goes with --n-last-blocks 1 (eval_linear.py joins the "
                         "pooled tokens to a single CLS token); drop one of them")
    features = DINOLinearFeatures(backbone, n_last, avgpool).to(device)
    base_lr = 0.001 if args.lr is None else args.lr
    lr = base_lr * args.probe_batch_size / 256
    test_f, test_y = extract_features(features, test_set, subset_indices(len(test_set), args.max_test),
                                      eval_transform(image_size), args.batch_size, args.workers, device)
    test_f, test_y = test_f[test_y >= 0].to(device), test_y[test_y >= 0].to(device)
    train_y = np.asarray(train_set.targets)[train_idx]
    num_classes = max(len(train_set.classes), int(train_y.max()) + 1, int(test_y.max()) + 1)
    results, curves = {}, {}
    for fraction in args.label_fraction:
        chosen = sample_label_fraction(train_y, fraction, args.seed)
        curve = {"epoch": [], "train_loss": [], "test_top1": []}

        def log_epoch(epoch, loss, head, curve=curve):
            curve["epoch"].append(epoch + 1)
            curve["train_loss"].append(loss)
            curve["test_top1"].append(evaluate(head, test_f, test_y)[1])

        head = train_probe_dino(features, train_set, train_idx[chosen].tolist(), image_size, num_classes,
                                args.epochs, lr, args.probe_batch_size, args.seed, args.workers, device,
                                args.crop_scale, log_epoch)
        acc = evaluate(head, test_f, test_y)
        results[f"{fraction:g}"] = {"top1": acc[1], "top5": acc[5], "best_top1_over_epochs": max(curve["test_top1"]),
                                    "label_fraction": fraction, "n_labelled": len(chosen), "weight_decay": 0.0,
                                    "weight_decay_selection": "fixed at 0 (DINO's protocol)"}
        curves[f"{fraction:g}"] = curve
    headline = f"{max(args.label_fraction):g}"
    name = args.name or "linear-dino"
    fig_path = _plot(curves, out / f"{name}.png", ckpt, args.data)
    vit = features.vit
    return cli.emit({
        "eval": "linear", **cli.checkpoint_info(args.checkpoint, ckpt), **cli.data_info(args, image_size),
        "protocol": {"name": "dino", "reference": "facebookresearch/dino eval_linear.py",
                     "features": (f"CLS tokens of the last {n_last} block(s), concatenated"
                                  + (", and the last block's average-pooled patch tokens" if avgpool else "")
                                  if vit else "the ResNet's pooled features"),
                     "n_last_blocks": n_last if vit else None, "avgpool_patchtokens": avgpool if vit else None,
                     "feature_dim": features.embed_dim, "standardised": False,
                     "classifier": "nn.Linear (N(0, 0.01), bias 0), cross-entropy",
                     "optimizer": "SGD, momentum 0.9, no weight decay", "lr": lr,
                     "lr_rule": f"{base_lr:g} x batch/256",
                     "lr_schedule": "cosine to 0, stepped per epoch", "epochs": args.epochs,
                     "batch_size": args.probe_batch_size,
                     "augmentation": f"RandomResizedCrop({image_size}, scale=({args.crop_scale}, 1)) + horizontal flip",
                     "test_transform": "eval transform (resize + centre crop)",
                     "label_fraction": args.label_fraction, "seed": args.seed, "test": "test split",
                     "unit": "percent"},
        "n_train": int(len(train_y)), "n_test": int(len(test_y)), "num_classes": num_classes,
        "headline_label_fraction": float(headline),
        "top1": results[headline]["top1"], "top5": results[headline]["top5"],
        "best_top1_over_epochs": results[headline]["best_top1_over_epochs"],
        "by_label_fraction": results, "curves": curves, "figure": fig_path,
    }, out, name)


def add_arguments(parser: cli.EvalParser) -> None:
    g = parser.group("evaluation")
    g.add_argument("--protocol", choices=("fast", "dino"), default="fast",
                   help="fast: cached, standardised features (the report's probe); dino: DINO's eval_linear.py "
                        "(last-blocks CLS tokens, augmented training through the backbone, lr 0.001 x batch/256)")
    g.add_argument("--n-last-blocks", type=int, default=None,
                   help="--protocol dino: CLS tokens of this many last blocks (default: 4, ViT-B 1)")
    g.add_argument("--avgpool-patchtokens", action=argparse.BooleanOptionalAction, default=None,
                   help="--protocol dino: add the last block's mean patch token (default: on for ViT-B only)")
    g.add_argument("--label-fraction", type=float, nargs="+", default=[1.0],
                   help="fraction(s) of labelled train images per class (e.g. 0.01 0.1 1; 0.2 in the comparison of "
                        "DINO on Imagenette with 20 %% labels against supervised from scratch)")
    g.add_argument("--epochs", type=int, default=100, help="probe epochs (DINO's)")
    g.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate, cosine to 0 (default: 0.1 on standardised features; --protocol dino: "
                        "0.001, scaled by --probe-batch-size/256)")
    g.add_argument("--probe-batch-size", type=int, default=256, help="probe batch size (DINO's, per GPU)")
    g.add_argument("--weight-decay", default="auto",
                   help="'auto' (grid on a held-out 20%% of the train features) or a number (DINO: 0)")
    g.add_argument("--augment", action="store_true",
                   help="train through the frozen backbone on random-resized crops + flips (DINO)")
    g.add_argument("--crop-scale", type=float, default=0.08,
                   help="smallest random-resized-crop area with --augment (DINO's and torchvision's)")
    parser.group("run").add_argument("--name", default=None,
                                     help="result name (default: linear, linear-augment or linear-dino)")


def main(argv=None) -> dict:
    args = cli.parse_cli("linear", add_arguments, argv, "Linear probe on a checkpoint's frozen features.",
                         raw_pixels=True)
    cli.check_positive(args, "batch_size", "max_train", "max_test", "image_size", "epochs", "probe_batch_size",
                       "n_last_blocks")
    try:
        wd_fixed = None if args.weight_decay == "auto" else float(args.weight_decay)
    except ValueError:
        raise SystemExit(f"error: --weight-decay must be 'auto' or a number, got {args.weight_decay!r}") from None
    if any(not 0 < f <= 1 for f in args.label_fraction):
        raise SystemExit("error: --label-fraction values must be in (0, 1], e.g. 0.01 0.1 1")
    if not 0 < args.crop_scale <= 1:
        raise SystemExit("error: --crop-scale must be in (0, 1]")
    if args.raw_pixels and (args.augment or args.protocol == "dino"):  # both train through a network
        raise SystemExit("error: --raw-pixels goes with the default --protocol fast, without --augment")
    from eval.features import cached_features, raw_pixel_features, subset_indices  # torch loads only now

    device, backbone, ckpt, image_size, out = cli.open_network(args)
    name = args.name or ("linear-augment" if args.augment else "linear")
    train_set = cli.open_dataset(args.data, args.data_root, "train", need_labels=True)
    test_set = cli.open_dataset(args.data, args.data_root, "test", need_labels=True)
    train_idx = np.asarray(subset_indices(len(train_set), args.max_train))
    if args.protocol == "dino":
        return dino_protocol(args, backbone, ckpt, image_size, out, train_set, test_set, train_idx, device)
    args.lr = 0.1 if args.lr is None else args.lr

    def features(ds, split, idx):
        f, y, _ = cached_features(backbone, args.checkpoint, ds, args.data, args.data_root, split, image_size,
                                  cli.cache_dir(args, out), idx, args.batch_size, args.workers, device)
        return f.to(device), y.to(device)

    if args.raw_pixels:
        train_f, train_y, test_f, test_y = (t.to(device) for t in raw_pixel_features(
            train_set, test_set, train_idx, subset_indices(len(test_set), args.max_test), image_size,
            args.batch_size, args.workers, device))
    else:
        train_f, train_y = features(train_set, "train", train_idx)
        test_f, test_y = features(test_set, "test", subset_indices(len(test_set), args.max_test))
    test_f, test_y = test_f[test_y >= 0], test_y[test_y >= 0]
    num_classes = max(len(train_set.classes), int(train_y.max()) + 1, int(test_y.max()) + 1)

    results, curves = {}, {}
    for fraction in args.label_fraction:
        chosen = sample_label_fraction(train_y.cpu().numpy(), fraction, args.seed)
        x, y = train_f[chosen], train_y[chosen]
        (mean, std), (x, x_test) = standardise(x, test_f)
        if wd_fixed is None:
            wd, wd_how, wd_scores = choose_weight_decay(x, y, num_classes, args.epochs, args.lr,
                                                        args.probe_batch_size, args.seed)
        else:
            wd, wd_how, wd_scores = wd_fixed, "fixed by --weight-decay", {}
        curve = {"epoch": [], "train_loss": [], "test_top1": []}

        def log_epoch(epoch, loss, head, curve=curve, x_test=x_test):
            curve["epoch"].append(epoch + 1)
            curve["train_loss"].append(loss)
            curve["test_top1"].append(evaluate(head, x_test, test_y)[1])

        if args.augment:
            head = train_probe_augmented(backbone, train_set, train_idx[chosen].tolist(), image_size, mean, std,
                                         num_classes, args.epochs, args.lr, wd, args.probe_batch_size,
                                         args.seed, args.workers, device, args.crop_scale, log_epoch)
        else:
            head = train_probe(x, y, num_classes, args.epochs, args.lr, wd, args.probe_batch_size,
                               seed=args.seed, on_epoch=log_epoch)
        acc = evaluate(head, x_test, test_y)
        results[f"{fraction:g}"] = {"top1": acc[1], "top5": acc[5], "label_fraction": fraction,
                                    "n_labelled": len(chosen), "weight_decay": wd,
                                    "weight_decay_selection": wd_how, "heldout_top1_by_weight_decay": wd_scores}
        curves[f"{fraction:g}"] = curve

    headline = f"{max(args.label_fraction):g}"
    fig_path = _plot(curves, out / f"{name}.png", ckpt, args.data)
    return cli.emit({
        "eval": "linear", **cli.checkpoint_info(args.checkpoint, ckpt), **cli.data_info(args, image_size),
        "protocol": {"name": "fast",
                     "features": (RAW_PIXELS_FEATURES if args.raw_pixels else "backbone output of the eval transform")
                     + ", standardised with train statistics",
                     "classifier": "nn.Linear, cross-entropy", "optimizer": "SGD, momentum 0.9",
                     "lr": args.lr, "lr_schedule": "cosine to 0, no warm-up", "epochs": args.epochs,
                     "batch_size": args.probe_batch_size, "weight_decay": args.weight_decay,
                     "augment": bool(args.augment),
                     "augmentation": (f"RandomResizedCrop(scale=({args.crop_scale}, 1)) + horizontal flip"
                                      if args.augment else "none (cached centre crops)"),
                     "label_fraction": args.label_fraction, "label_sampling": "per class, >= 1 per class",
                     "seed": args.seed, "test": "test split", "unit": "percent"},
        "n_train": int(len(train_y)), "n_test": int(len(test_y)), "num_classes": num_classes,
        "headline_label_fraction": float(headline),
        "top1": results[headline]["top1"], "top5": results[headline]["top5"],
        "by_label_fraction": results, "curves": curves, "figure": fig_path,
    }, out, name)


def _plot(curves: dict, path, ckpt: dict, data: str) -> str:
    plt = cli.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for fraction, c in curves.items():
        ax_loss.plot(c["epoch"], c["train_loss"], label=f"{float(fraction):.0%} labels")
        ax_acc.plot(c["epoch"], c["test_top1"], label=f"{float(fraction):.0%} labels")
    ax_loss.set(xlabel="epoch", ylabel="train cross-entropy", title="linear probe: training loss")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)",
               title=f"{ckpt.get('method')} {ckpt.get('arch')} on {data}")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
