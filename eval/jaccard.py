"""Segmentation masks from a ViT's self-attention, scored by the Jaccard index (DINO, Caron et al.
2021, sec. 4.2.1 / fig. 4: ViT-S/16 45.9, ViT-S/8 44.7 on PASCAL VOC12).

Per head, the CLS attention map of the last layer is thresholded to the smallest set of patches
holding 60 % of its mass, upsampled (nearest) to the ground-truth size, and compared with the
ground truth. Void pixels (255) count in neither intersection nor union. Scores, in percent:

- `dino_best_head` — the DINO authors' protocol (facebookresearch/dino issue #54): for every
  ground-truth object (every id other than 0 = background and 255 = void; instances on
  `mask_kind == "object"` masks, classes on class-index masks) take the head whose mask matches it
  best, average over the objects of the image, then over the images.
- seed 003's two single-mask variants, each against two predicted masks (stated because seed 003
  does not say which one it used): `head_union` = the union of the per-head masks, `head_max` = the
  60 % mass mask of the element-wise maximum over heads.
  `largest_class`: the ground truth is the one id with the most pixels;
  `union_of_classes`: the ground truth is every non-background, non-void pixel.
- `per_head`: each head alone, averaged over objects and images (which heads segment).

Images without any object are skipped (counted in the JSON). ResNet checkpoints have no attention:
the script says so and stops. `--random-init-baseline` adds a row for a randomly initialised ViT of
the same kwargs (the floor the learned attention must clear).

    python eval/jaccard.py --checkpoint runs/dino/shapes-vit_tiny/checkpoint.pt --data shapes
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python eval/jaccard.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common.backbones import build_backbone
from common.runtime import resolve_device
from eval import cli
from eval.attention import MASS, cls_attention, head_masks, keep_overlay, prepare_image, require_vit, upsample
from eval.features import subset_indices

VOID = 255


def jaccard(pred: torch.Tensor, target: torch.Tensor, void: torch.Tensor | None = None) -> torch.Tensor:
    """|pred ∩ target| / |pred ∪ target| over the last two dims, void pixels excluded from both;
    `pred` may carry leading dims (e.g. heads). An empty union scores 1 (both agree: nothing)."""
    valid = torch.ones_like(target, dtype=torch.bool) if void is None else ~void
    inter = (pred & target & valid).flatten(-2).sum(-1).float()
    union = ((pred | target) & valid).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def objects(gt: torch.Tensor) -> list[int]:
    """Ground-truth ids other than background (0) and void (255)."""
    return [int(o) for o in torch.unique(gt) if o not in (0, VOID)]


def best_head_jaccard(masks: torch.Tensor, gt: torch.Tensor) -> tuple[float | None, torch.Tensor | None]:
    """DINO issue #54: for each object the best head's Jaccard, averaged over objects. Also returns
    the objects × heads table of Jaccards. (None, None) when the image has no object."""
    ids = objects(gt)
    if not ids:
        return None, None
    void = gt == VOID
    table = torch.stack([jaccard(masks, gt == o, void) for o in ids])
    return table.max(1).values.mean().item(), table


def largest_object(gt: torch.Tensor) -> int | None:
    """The id (other than background and void) with the most pixels."""
    ids = objects(gt)
    return ids[int(np.argmax([int((gt == o).sum()) for o in ids]))] if ids else None


def image_scores(attn: torch.Tensor, gt: torch.Tensor, mass: float = MASS) -> dict | None:
    """All scores (fractions, not percent) of one image. `attn`: heads × h × w CLS attention on the
    patch grid; `gt`: H × W ground truth. None when the image has no object."""
    size = gt.shape[-2:]
    masks = upsample(head_masks(attn, mass), size)                                    # heads × H × W
    best, table = best_head_jaccard(masks, gt)
    if best is None:
        return None
    void, largest = gt == VOID, largest_object(gt)
    preds = {"head_union": masks.any(0),
             "head_max": upsample(head_masks(attn.max(0).values, mass), size)}
    targets = {"largest_class": gt == largest, "union_of_classes": (gt != 0) & ~void}
    return {"dino_best_head": best,
            **{t: {p: jaccard(pred, target, void).item() for p, pred in preds.items()}
               for t, target in targets.items()},
            "per_head_sum": table.sum(0), "n_objects": table.shape[0], "masks": masks, "preds": preds,
            "best_head_of_largest": int(table[objects(gt).index(largest)].argmax())}


def aggregate(per_image: list[dict]) -> dict:
    """Mean over images (percent); per head: mean over all objects of all images."""
    n = len(per_image)
    if n == 0:
        return {"dino_best_head": math.nan, "n_images": 0}
    mean = lambda values: 100.0 * float(np.mean(values))  # noqa: E731
    per_head = torch.stack([s["per_head_sum"] for s in per_image]).sum(0) / sum(s["n_objects"] for s in per_image)
    return {"dino_best_head": mean([s["dino_best_head"] for s in per_image]),
            **{t: {p: mean([s[t][p] for s in per_image]) for p in ("head_union", "head_max")}
               for t in ("largest_class", "union_of_classes")},
            "per_head": (100.0 * per_head).tolist(), "n_images": n,
            "n_objects": int(sum(s["n_objects"] for s in per_image))}


@torch.no_grad()
def evaluate(backbone, ds, indices, image_size: int, device, mass: float = MASS, keep: int = 0):
    """(aggregate scores, number of images skipped for having no object, first `keep` examples)."""
    per_image, skipped, examples = [], 0, []
    for i in indices:
        image, _ = ds[i]
        gt = torch.as_tensor(np.asarray(ds.get_mask(i)), dtype=torch.long)
        x = prepare_image(image, image_size, backbone.patch_size).unsqueeze(0).to(device)
        scores = image_scores(cls_attention(backbone, x)[0].cpu(), gt, mass)
        if scores is None:
            skipped += 1
            continue
        if len(examples) < keep:
            examples.append((image, gt, scores))
        per_image.append({k: v for k, v in scores.items() if k not in ("masks", "preds")})
    return aggregate(per_image), skipped, examples


def main(argv=None) -> dict:
    p = cli.base_parser("Jaccard index of a ViT's 60 % attention-mass masks against ground-truth masks.")
    p.add_argument("--split", default="test", help="split with masks (voc2012: val)")
    p.add_argument("--max-images", type=int, default=None, help="use at most N images (evenly spaced)")
    p.add_argument("--mass", type=float, default=MASS, help="attention mass kept per head (DINO: 0.6)")
    p.add_argument("--random-init-baseline", action="store_true",
                   help="also score a randomly initialised ViT with the same kwargs (seeded by --seed)")
    p.add_argument("--num-examples", type=int, default=4, help="images shown in the figure")
    args = p.parse_args(argv)
    cli.check_positive(args, "max_images", "image_size")
    if not 0 < args.mass <= 1:
        raise SystemExit("error: --mass must be in (0, 1]")

    device = resolve_device(args.device)
    backbone, ckpt = cli.open_checkpoint(args.checkpoint, device)
    require_vit(backbone, ckpt, "jaccard.py")
    image_size = args.image_size or cli.default_image_size(ckpt)
    out = cli.out_dir(args, args.checkpoint)
    ds = cli.open_dataset(args.data, args.data_root, args.split, need_masks=True)
    indices = subset_indices(len(ds), args.max_images)

    rows = {}
    rows["checkpoint"], skipped, examples = evaluate(backbone, ds, indices, image_size, device, args.mass,
                                                     args.num_examples)
    if rows["checkpoint"]["n_images"] == 0:
        raise SystemExit(f"error: none of the {len(indices)} {args.split} images of {args.data!r} has an object "
                         "in its mask")
    if args.random_init_baseline:
        torch.manual_seed(args.seed)
        random_vit = build_backbone(**ckpt["backbone_kwargs"]).to(device).eval()
        rows["random_init"], _, _ = evaluate(random_vit, ds, indices, image_size, device, args.mass)

    fig_path = _plot(examples, out / "jaccard.png", ckpt, args.mass)
    return cli.emit({
        "eval": "jaccard", **cli.checkpoint_info(args.checkpoint, ckpt),
        "data": args.data, "data_root": args.data_root, "split": args.split, "image_size": image_size,
        "mask_kind": getattr(ds, "mask_kind", None),
        "protocol": {"mask": f"per head, smallest set of patches holding {args.mass:.0%} of the CLS attention "
                             "mass (last layer), nearest-upsampled to the ground-truth size",
                     "mass": args.mass, "void": "255 ignored in intersection and union",
                     "dino_best_head": "per object the best head, mean over objects, then over images "
                                       "(facebookresearch/dino issue #54)",
                     "largest_class": "ground truth = the id with the most pixels",
                     "union_of_classes": "ground truth = all non-background, non-void pixels",
                     "head_union": "prediction = union of the per-head masks",
                     "head_max": f"prediction = {args.mass:.0%} mass mask of the max over heads",
                     "input": "short side = image_size, sides rounded to patch multiples, aspect kept",
                     "unit": "percent"},
        "n_images": rows["checkpoint"]["n_images"], "n_skipped_no_object": skipped,
        "jaccard": rows["checkpoint"]["dino_best_head"], "rows": rows, "figure": fig_path,
    }, out, "jaccard")


def _plot(examples, path, ckpt: dict, mass: float) -> str:
    plt = cli.pyplot()
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 4, figsize=(7.2, 1.9 * n), squeeze=False)
    for r, (image, gt, s) in enumerate(examples):
        rgb = np.asarray(image.resize(gt.shape[::-1])).astype(np.float32) / 255.0
        shown = gt.clone().float()
        shown[gt == VOID] = float("nan")  # void drawn blank
        head = s["best_head_of_largest"]
        panels = [(rgb, "image"), (shown.numpy(), "ground truth"),
                  (keep_overlay(rgb, s["masks"][head].numpy()), f"head {head + 1}: best for the largest"),
                  (keep_overlay(rgb, s["preds"]["head_max"].numpy()),
                   f"max over heads, J={100 * s['largest_class']['head_max']:.0f}")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img, interpolation="nearest", cmap="tab10" if title == "ground truth" else None)
            ax.set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{mass:.0%} attention-mass masks: {ckpt.get('method')} {ckpt.get('arch')}", fontsize=9)
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
