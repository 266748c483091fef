"""Few-label fine-tuning versus supervised training from scratch (DINO on Imagenette with 20 % labels
against supervised from scratch, as in "A Deep Dive into the DINO Algorithm").

The whole backbone plus a linear head is trained with cross-entropy on `--label-fraction` of the
train labels (per class, at least one image each, drawn with `--seed`). Started from the
checkpoint's backbone, this measures what self-supervised pre-training buys; with `--from-scratch`
the same architecture (the checkpoint's `backbone_kwargs`, random initialisation) is trained on the
same labels with the same schedule, which is the no-pre-training baseline.

Schedule (both ways, that report's settings): AdamW, lr `--lr` with `--warmup-epochs` of linear
warm-up then cosine to 1e-6, weight decay 1e-4 (not on biases and norms), 50 epochs, batch 64;
augmentation: random-resized crops (area `--crop-scale`..1) and horizontal flips; test images:
the eval transform (resize + centre crop). Reported: top-1 / top-5 on the test split after the
last epoch (never the best epoch, which would select on the test set), and the weighted kNN top-1
of the backbone after the last epoch (and every `--knn-every` epochs: k = 20, T = 0.07, train split
as bank, eval/knn.py's protocol), which puts a supervised network on the same scale as the
self-supervised kNN curves.

    python eval/finetune.py --checkpoint runs/dino/imagenette-resnet18/checkpoint.pt --label-fraction 0.2
    python eval/finetune.py --checkpoint runs/dino/imagenette-resnet18/checkpoint.pt --label-fraction 0.2 \
        --from-scratch
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

import numpy as np

from common.options import AMP_CHOICES
from common.schedules import cosine_schedule
from eval import cli  # torch-free, as eval.knn and eval.linear: torch is imported in main, after parsing
from eval.knn import KNNMonitor, topk_accuracy
from eval.linear import sample_label_fraction


def evaluate(model, loader, device, autocast) -> dict[int, float]:
    import torch

    from common.augment import as_input

    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for images, y in loader:
            with autocast():
                logits = model(as_input(images.to(device)))
            preds.append(logits.float().topk(min(5, logits.shape[1]), dim=1).indices.cpu())
            labels.append(torch.as_tensor(y))
    return topk_accuracy(torch.cat(preds), torch.cat(labels))


def add_arguments(parser: cli.EvalParser) -> None:
    g, r = parser.group("evaluation"), parser.group("run")
    g.add_argument("--label-fraction", type=float, default=0.2,
                   help="fraction of labelled train images per class (the Imagenette comparison's)")
    g.add_argument("--from-scratch", action="store_true",
                   help="random initialisation of the same architecture (supervised baseline)")
    g.add_argument("--epochs", type=int, default=50, help="training epochs (the Imagenette comparison's)")
    g.add_argument("--lr", type=float, default=5e-4,
                   help="AdamW peak learning rate (Imagenette comparison: 1e-3 / 1e-4)")
    g.add_argument("--min-lr", type=float, default=1e-6, help="cosine schedule's final learning rate")
    g.add_argument("--warmup-epochs", type=float, default=2, help="linear warm-up epochs")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (the Imagenette comparison's)")
    g.add_argument("--train-batch-size", type=int, default=64, help="training batch size")
    g.add_argument("--crop-scale", type=float, default=0.25, help="smallest random-resized-crop area")
    g.add_argument("--eval-every", type=int, default=1, help="test accuracy every N epochs (the curve)")
    g.add_argument("--knn-every", type=int, default=0,
                   help="kNN of the backbone every N epochs too (0: after the last epoch only; each costs a "
                        "forward pass over the train split)")
    r.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 on GPUs that have it, fp16 on older GPUs, off on CPU")
    r.add_argument("--name", default=None,
                   help="result name (default: finetune-<pretrained|scratch>-<label fraction>)")


def main(argv=None) -> dict:
    args = cli.parse_cli("finetune", add_arguments, argv,
                         "Fine-tune a checkpoint's backbone + linear head on a label fraction "
                         "(or train the same architecture from scratch).")
    cli.check_positive(args, "batch_size", "max_train", "max_test", "image_size", "epochs", "train_batch_size",
                       "eval_every")
    if not 0 < args.label_fraction <= 1:
        raise SystemExit("error: --label-fraction must be in (0, 1], e.g. 0.2")
    if not 0 < args.crop_scale <= 1:
        raise SystemExit("error: --crop-scale must be in (0, 1]")
    if args.knn_every < 0:
        raise SystemExit("error: --knn-every must be >= 0 (0: kNN after the last epoch only)")
    import torch  # torch loads only now: --help and option errors never wait for it
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from common.augment import CropFlip, LoadImage, eval_transform, working_size
    from common.backbones import build_backbone
    from common.loader import view_generator
    from common.optim import param_groups
    from common.runtime import amp_dtype, seed_everything
    from eval.features import Transformed, subset_indices
    from eval.heads import Classifier

    device, backbone, ckpt, image_size, out = cli.open_network(args)
    mode = "scratch" if args.from_scratch else "pretrained"
    name = args.name or f"finetune-{mode}-{args.label_fraction:g}"
    train_set = cli.open_dataset(args.data, args.data_root, "train", need_labels=True)
    test_set = cli.open_dataset(args.data, args.data_root, "test", need_labels=True)

    seed_everything(args.seed)
    train_idx = np.asarray(subset_indices(len(train_set), args.max_train))
    targets = np.asarray(train_set.targets)[train_idx]
    chosen = train_idx[sample_label_fraction(targets, args.label_fraction, args.seed)].tolist()
    test_idx = [i for i in subset_indices(len(test_set), args.max_test) if test_set.targets[i] >= 0]
    num_classes = max(len(train_set.classes), int(targets.max()) + 1)

    if args.from_scratch:
        backbone = build_backbone(**ckpt["backbone_kwargs"]).to(device)  # same kwargs, random weights
    model = Classifier(backbone, num_classes).to(device)

    batch = min(args.train_batch_size, len(chosen))
    gen = torch.Generator().manual_seed(args.seed)
    # BatchNorm cannot train on a batch of one: drop a last batch of a single image.
    # the loader decodes and resizes; the crop and flip are made on the device, a batch at a time
    augment = CropFlip(image_size, (args.crop_scale, 1.0))
    train_loader = DataLoader(Transformed(train_set, chosen, LoadImage(working_size(image_size))),
                              batch_size=batch, shuffle=True, generator=gen, num_workers=args.workers,
                              drop_last=len(chosen) % batch == 1 and len(chosen) > 1)
    test_loader = DataLoader(Transformed(test_set, test_idx, eval_transform(image_size)),
                             batch_size=args.batch_size, num_workers=args.workers)
    steps = len(train_loader)
    lr_schedule = cosine_schedule(args.lr, args.min_lr, args.epochs, steps, args.warmup_epochs)
    groups = param_groups(model)
    for g in groups:
        g["weight_decay"] = 0.0 if g.get("apply_wd") is False else args.weight_decay
    opt = torch.optim.AdamW(groups, lr=args.lr)
    dtype = amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    knn = KNNMonitor(train_set, test_set, image_size, args.batch_size, args.workers, device,
                     max_bank=args.max_train, max_query=args.max_test)
    curve = {"epoch": [], "train_loss": [], "test_top1": [], "knn_epoch": [], "knn_top1": []}
    it = 0
    for epoch in range(args.epochs):
        model.train()
        total, n = 0.0, 0
        for index, (images, labels) in enumerate(train_loader):
            images = augment(images.to(device), view_generator(args.seed, epoch, index))
            labels = torch.as_tensor(labels, device=device)
            for g in opt.param_groups:
                g["lr"] = lr_schedule[it]
            with autocast():
                loss = F.cross_entropy(model(images).float(), labels)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"error: the loss is {loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total, n, it = total + loss.item() * len(labels), n + len(labels), it + 1
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            curve["epoch"].append(epoch + 1)
            curve["train_loss"].append(total / max(n, 1))
            acc = evaluate(model, test_loader, device, autocast)  # the last epoch is always evaluated
            curve["test_top1"].append(acc[1])
        if epoch + 1 == args.epochs or (args.knn_every and (epoch + 1) % args.knn_every == 0):
            curve["knn_epoch"].append(epoch + 1)
            curve["knn_top1"].append(knn(model.backbone)["knn_top1"])

    fig_path = _plot(curve, out / f"{name}.png", ckpt, mode, args.label_fraction)
    return cli.emit({
        "eval": "finetune", **cli.checkpoint_info(args.checkpoint, ckpt), **cli.data_info(args, image_size),
        "init": "random (from scratch, supervised baseline)" if args.from_scratch else "checkpoint backbone",
        "from_scratch": bool(args.from_scratch),
        "protocol": {"model": "backbone + nn.Linear head, all parameters trained", "loss": "cross-entropy",
                     "optimizer": "AdamW (no weight decay on biases and norms)", "lr": args.lr,
                     "lr_schedule": f"{args.warmup_epochs:g} warm-up epochs, cosine to {args.min_lr:g}",
                     "weight_decay": args.weight_decay, "epochs": args.epochs, "batch_size": batch,
                     "augmentation": f"RandomResizedCrop(scale=({args.crop_scale}, 1)) + horizontal flip",
                     "label_fraction": args.label_fraction, "label_sampling": "per class, >= 1 per class",
                     "seed": args.seed, "amp": str(dtype).replace("torch.", "") if dtype else "off",
                     "reported": "test split after the last epoch", "unit": "percent"},
        "n_labelled": len(chosen), "n_test": len(test_idx), "num_classes": num_classes,
        "top1": acc[1], "top5": acc[5], "knn_top1": curve["knn_top1"][-1], "curve": curve, "figure": fig_path,
    }, out, name)


def _plot(curve: dict, path, ckpt: dict, mode: str, fraction: float) -> str:
    plt = cli.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(curve["epoch"], curve["train_loss"], "o-", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="train cross-entropy", title=f"training loss, {fraction:.0%} of the labels")
    ax_acc.plot(curve["epoch"], curve["test_top1"], "o-", ms=3, label="classifier")
    ax_acc.plot(curve["knn_epoch"], curve["knn_top1"], "s--", ms=3, label="kNN of the backbone (k 20)")
    title = (f"baseline: {ckpt.get('arch')} supervised from scratch" if mode == "scratch"
             else f"{ckpt.get('method')} {ckpt.get('arch')}, fine-tuned")  # the scratch run only borrows the arch
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title=title)
    ax_acc.legend(fontsize=7)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
