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

    python eval/linear.py --checkpoint runs/byol/shapes-resnet18/checkpoint.pt --label-fraction 0.01 0.1 1
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python eval/linear.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from common.augment import MEAN, STD
from common.runtime import resolve_device
from common.schedules import cosine_schedule
from eval import cli
from eval.features import Transformed, cached_features, subset_indices
from eval.knn import topk_accuracy

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


def new_head(dim: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 100, lr: float = 0.1,
                weight_decay: float = 0.0, batch_size: int = 256, momentum: float = 0.9, seed: int = 0,
                on_epoch=None) -> nn.Linear:
    """Multinomial logistic regression on (standardised) features by SGD + cosine schedule.
    `on_epoch(epoch, mean_loss, head)` is called after every epoch."""
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


@torch.no_grad()
def evaluate(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    """{1: top-1, 5: top-5} in percent."""
    preds = head(x).topk(min(5, head.out_features), dim=1).indices
    return topk_accuracy(preds, y)


def choose_weight_decay(x, y, num_classes, epochs, lr, batch_size, seed):
    """(weight decay, how it was chosen, held-out top-1 per grid value)."""
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


def main(argv=None) -> dict:
    p = cli.base_parser("Linear probe on a checkpoint's frozen features.")
    p.add_argument("--label-fraction", type=float, nargs="+", default=[1.0],
                   help="fraction(s) of labelled train images per class (seed 003: 0.2; e.g. 0.01 0.1 1)")
    p.add_argument("--epochs", type=int, default=100, help="probe epochs (DINO: 100)")
    p.add_argument("--lr", type=float, default=0.1,
                   help="SGD learning rate on standardised features, cosine to 0")
    p.add_argument("--probe-batch-size", type=int, default=256, help="probe batch size (DINO: 256 per GPU)")
    p.add_argument("--weight-decay", default="auto",
                   help="'auto' (grid on a held-out 20%% of the train features) or a number (DINO: 0)")
    p.add_argument("--augment", action="store_true",
                   help="train through the frozen backbone on random-resized crops + flips (DINO)")
    p.add_argument("--crop-scale", type=float, default=0.08,
                   help="smallest random-resized-crop area with --augment (DINO / torchvision: 0.08)")
    p.add_argument("--name", default=None, help="result name (default: linear or linear-augment)")
    args = p.parse_args(argv)
    cli.check_positive(args, "batch_size", "max_train", "max_test", "image_size", "epochs", "probe_batch_size")
    try:
        wd_fixed = None if args.weight_decay == "auto" else float(args.weight_decay)
    except ValueError:
        raise SystemExit(f"error: --weight-decay must be 'auto' or a number, got {args.weight_decay!r}") from None
    if any(not 0 < f <= 1 for f in args.label_fraction):
        raise SystemExit("error: --label-fraction values must be in (0, 1], e.g. 0.01 0.1 1")
    if not 0 < args.crop_scale <= 1:
        raise SystemExit("error: --crop-scale must be in (0, 1]")

    device = resolve_device(args.device)
    backbone, ckpt = cli.open_checkpoint(args.checkpoint, device)
    image_size = args.image_size or cli.default_image_size(ckpt)
    out = cli.out_dir(args, args.checkpoint)
    name = args.name or ("linear-augment" if args.augment else "linear")
    train_set = cli.open_dataset(args.data, args.data_root, "train", need_labels=True)
    test_set = cli.open_dataset(args.data, args.data_root, "test", need_labels=True)
    train_idx = np.asarray(subset_indices(len(train_set), args.max_train))

    def features(ds, split, idx):
        f, y, _ = cached_features(backbone, args.checkpoint, ds, args.data, args.data_root, split, image_size,
                                  cli.cache_dir(args, out), idx, args.batch_size, args.workers, device)
        return f.to(device), y.to(device)

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
        "protocol": {"features": "backbone output of the eval transform, standardised with train statistics",
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
