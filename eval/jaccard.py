"""Segmentation masks from a ViT's self-attention, scored by the Jaccard index (DINO, Caron et al.
2021, sec. 4.2.1 / fig. 4: ViT-S/16 45.9, ViT-S/8 44.7 on PASCAL VOC12).

Per head, the CLS attention map of the last layer is thresholded to the smallest set of patches
holding 60 % of its mass, upsampled (nearest) to the ground-truth size, and compared with the
ground truth. Void pixels (255, VOC's object boundaries) are handled as in the authors' published
snippet (facebookresearch/dino issue #54) by default, `--void count`: a void pixel is never part of
an object, so a mask that covers it pays for it in the union; `--void ignore` leaves void out of
intersection and union. `dino_best_head` is reported both ways in every run. Scores, in percent:

- `dino_best_head` — the DINO authors' protocol (facebookresearch/dino issue #54): for every
  ground-truth object (every id other than 0 = background and 255 = void; instances on
  `mask_kind == "object"` masks, classes on class-index masks) take the head whose mask matches it
  best, average over the objects of the image, then over the images.
- two single-mask variants (as DINO-on-Imagenette reports use them), each against two predicted
  masks, since such reports do not say which one they used: `head_union` = the union of the
  per-head masks, `head_max` = the 60 % mass mask of the element-wise maximum over heads.
  `largest_class`: the ground truth is the one id with the most pixels;
  `union_of_classes`: the ground truth is every non-background, non-void pixel.
- `per_head`: each head alone, averaged over objects and images (which heads segment).

Data: PASCAL VOC 2012 val `SegmentationObject` (one id per instance, the paper's setting;
`--voc-masks class` reads `SegmentationClass`); COCO's panoptic category-id masks are scored on
"thing" classes only (ids 1-90, names from the dataset's config.yaml where present), every "stuff"
id (92-200) and 0 = unlabeled being background. Skipped images are counted by reason in the JSON:
`no_mask` (no mask file: an all-void mask) and `no_object` (a mask with no object, on COCO no thing).
ResNet checkpoints have no attention: the script says so and stops. `--random-init-baseline` adds a
row for a randomly initialised ViT of the same kwargs (the floor the learned attention must clear).
docs/reproduce.md gives the command for the paper's table with the released weights.

    python eval/jaccard.py --checkpoint runs/dino/shapes-vit_tiny/checkpoint.pt --data shapes
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

import numpy as np

from eval import cli  # torch-free, as eval.attention: torch is imported inside the functions, after parsing
from eval.attention import MASS, cls_attention, head_masks, keep_overlay, prepare_image, require_vit, upsample

if TYPE_CHECKING:
    import torch

VOID = 255
COCO_THINGS = range(1, 91)  # COCO panoptic category ids: things 1-90, stuff 92-200
VOID_MODES = ("count", "ignore")


def ground_truth(mask: np.ndarray, thing_ids=None) -> tuple[torch.Tensor | None, str | None]:
    """(H × W ground truth, None) or (None, why the image is skipped). `thing_ids`: keep only these
    ids as objects (COCO things), every other id becomes background."""
    import torch

    gt = torch.as_tensor(np.asarray(mask), dtype=torch.long)
    if bool((gt == VOID).all()):
        return None, "no_mask"  # the registry's mask for an image without a mask file
    if thing_ids is not None:
        gt = torch.where(torch.isin(gt, torch.as_tensor(list(thing_ids))) | (gt == VOID), gt, torch.zeros_like(gt))
    return (gt, None) if objects(gt) else (None, "no_object")


def jaccard(pred: torch.Tensor, target: torch.Tensor, void: torch.Tensor | None = None) -> torch.Tensor:
    """|pred ∩ target| / |pred ∪ target| over the last two dims, void pixels excluded from both;
    `pred` may carry leading dims (e.g. heads). An empty union scores 1 (both agree: nothing)."""
    import torch

    valid = torch.ones_like(target, dtype=torch.bool) if void is None else ~void
    inter = (pred & target & valid).flatten(-2).sum(-1).float()
    union = ((pred | target) & valid).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def objects(gt: torch.Tensor) -> list[int]:
    """Ground-truth ids other than background (0) and void (255)."""
    return [int(o) for o in gt.unique() if o not in (0, VOID)]


def best_head_jaccard(masks: torch.Tensor, gt: torch.Tensor, void_mode: str = "count"
                      ) -> tuple[float | None, torch.Tensor | None]:
    """DINO issue #54: for each object the best head's Jaccard, averaged over objects. Also returns
    the objects × heads table of Jaccards. (None, None) when the image has no object. `void_mode`
    "count" is the snippet's `union = (masko + th_attn) > 0`: void is not the object, so predicted
    void pixels are in the union; "ignore" leaves void out of both."""
    import torch

    ids = objects(gt)
    if not ids:
        return None, None
    void = _void(gt, void_mode)
    table = torch.stack([jaccard(masks, gt == o, void) for o in ids])
    return table.max(1).values.mean().item(), table


def largest_object(gt: torch.Tensor) -> int | None:
    """The id (other than background and void) with the most pixels."""
    ids = objects(gt)
    return ids[int(np.argmax([int((gt == o).sum()) for o in ids]))] if ids else None


def _void(gt: torch.Tensor, void_mode: str) -> torch.Tensor | None:
    if void_mode not in VOID_MODES:
        raise ValueError(f"void_mode must be one of {VOID_MODES}, got {void_mode!r}")
    return gt == VOID if void_mode == "ignore" else None


def image_scores(attn: torch.Tensor, gt: torch.Tensor, mass: float = MASS, void_mode: str = "count") -> dict | None:
    """All scores (fractions, not percent) of one image. `attn`: heads × h × w CLS attention on the
    patch grid; `gt`: H × W ground truth. None when the image has no object. `void_mode` applies to
    every score; `dino_best_head_void_<mode>` gives the best-head score under both."""
    size = gt.shape[-2:]
    masks = upsample(head_masks(attn, mass), size)                                    # heads × H × W
    best, table = best_head_jaccard(masks, gt, void_mode)
    if best is None:
        return None
    other = VOID_MODES[1 - VOID_MODES.index(void_mode)]
    both = {f"dino_best_head_void_{void_mode}": best,
            f"dino_best_head_void_{other}": best_head_jaccard(masks, gt, other)[0]}
    void, largest = _void(gt, void_mode), largest_object(gt)
    preds = {"head_union": masks.any(0),
             "head_max": upsample(head_masks(attn.max(0).values, mass), size)}
    targets = {"largest_class": gt == largest, "union_of_classes": (gt != 0) & (gt != VOID)}
    return {"dino_best_head": best, **both,
            **{t: {p: jaccard(pred, target, void).item() for p, pred in preds.items()}
               for t, target in targets.items()},
            "per_head_sum": table.sum(0), "n_objects": table.shape[0], "masks": masks, "preds": preds,
            "best_head_of_largest": int(table[objects(gt).index(largest)].argmax()),
            "best_head_j_of_largest": float(table[objects(gt).index(largest)].max())}  # for the figure


def aggregate(per_image: list[dict]) -> dict:
    """Mean over images (percent); per head: mean over all objects of all images."""
    import torch

    n = len(per_image)
    if n == 0:
        return {"dino_best_head": math.nan, "n_images": 0}
    mean = lambda values: 100.0 * float(np.mean(values))  # noqa: E731
    per_head = torch.stack([s["per_head_sum"] for s in per_image]).sum(0) / sum(s["n_objects"] for s in per_image)
    best = [s["dino_best_head"] for s in per_image]
    return {"dino_best_head": mean(best),
            # its standard error over images, the noise a comparison with another network needs
            "dino_best_head_se": 100.0 * float(np.std(best, ddof=1)) / math.sqrt(n) if n > 1 else None,
            **{f"dino_best_head_void_{m}": mean([s[f"dino_best_head_void_{m}"] for s in per_image])
               for m in VOID_MODES if f"dino_best_head_void_{m}" in per_image[0]},
            **{t: {p: mean([s[t][p] for s in per_image]) for p in ("head_union", "head_max")}
               for t in ("largest_class", "union_of_classes")},
            "per_head": (100.0 * per_head).tolist(), "n_images": n,
            "n_objects": int(sum(s["n_objects"] for s in per_image))}


def thing_ids(ds) -> list[int] | None:
    """COCO: the thing category ids 1-90; other datasets: None (every id is an object)."""
    return list(COCO_THINGS) if getattr(ds, "name", None) == "coco" else None


def thing_names(ds) -> dict[int, str]:
    """The thing classes named in the COCO dataset's semantic_segmentation/config.yaml."""
    return {i: name for i, name in (getattr(ds, "mask_classes", None) or {}).items() if i in COCO_THINGS}


def evaluate(backbone, ds, indices, image_size: int, device, mass: float = MASS, keep: int = 0,
             void_mode: str = "count"):
    """(aggregate scores, {reason: images skipped}, first `keep` examples). No gradients: the
    network runs in cls_attention's no_grad."""
    per_image, skipped, examples = [], {"no_mask": 0, "no_object": 0}, []
    things = thing_ids(ds)
    for i in indices:
        gt, why = ground_truth(ds.get_mask(i), things)
        if gt is None:
            skipped[why] += 1
            continue
        image, _ = ds[i]
        x = prepare_image(image, image_size, backbone.patch_size).unsqueeze(0).to(device)
        scores = image_scores(cls_attention(backbone, x)[0].cpu(), gt, mass, void_mode)
        if len(examples) < keep:
            examples.append((image, gt, scores))
        per_image.append({k: v for k, v in scores.items() if k not in ("masks", "preds")})
    return aggregate(per_image), skipped, examples


def add_arguments(parser: cli.EvalParser) -> None:
    d, g = parser.group("data"), parser.group("evaluation")
    d.add_argument("--split", default="test", help="split with masks (voc2012: val)")
    d.add_argument("--max-images", type=int, default=None,
                   help="use at most N images, evenly spaced over the split (default: all)")
    d.add_argument("--voc-masks", choices=("object", "class"), default="object",
                   help="voc2012: SegmentationObject (one id per instance, the paper) or SegmentationClass")
    g.add_argument("--mass", type=float, default=MASS,
                   help="share of the attention mass each head's mask keeps (DINO's)")
    g.add_argument("--void", choices=VOID_MODES, default="count",
                   help="void pixels (255): 'count' as the published snippet (dino issue #54: a mask covering "
                        "void pays for it in the union), 'ignore' = out of intersection and union; the best-head "
                        "score is reported both ways")
    g.add_argument("--random-init-baseline", action="store_true",
                   help="also score a randomly initialised ViT with the same kwargs (seeded by --seed)")
    g.add_argument("--num-examples", type=int, default=4, help="images shown in the figure")


def main(argv=None) -> dict:
    args = cli.parse_cli("jaccard", add_arguments, argv,
                         "Jaccard index of a ViT's 60 % attention-mass masks against ground-truth masks.")
    cli.check_positive(args, "max_images", "image_size")
    if not 0 < args.mass <= 1:
        raise SystemExit("error: --mass must be in (0, 1]")
    import torch  # torch loads only now: --help and option errors never wait for it

    from common.backbones import build_backbone
    from common.datasets import voc2012_class_masks
    from eval.features import subset_indices

    device, backbone, ckpt, image_size, out = cli.open_network(args, lambda net, c: require_vit(net, c, "jaccard.py"))
    ds = cli.open_dataset(args.data, args.data_root, args.split, need_masks=True)
    if args.voc_masks == "class":
        if getattr(ds, "name", None) != "voc2012":
            raise SystemExit("error: --voc-masks applies to --data voc2012 only; drop it")
        ds = voc2012_class_masks(ds)
    indices = subset_indices(len(ds), args.max_images)

    rows = {}
    rows["checkpoint"], skipped, examples = evaluate(backbone, ds, indices, image_size, device, args.mass,
                                                     args.num_examples, args.void)
    if rows["checkpoint"]["n_images"] == 0:
        raise SystemExit(f"error: none of the {len(indices)} {args.split} images of {args.data!r} has an object "
                         f"in its mask ({skipped['no_mask']} have no mask file, {skipped['no_object']} no object)")
    if args.random_init_baseline:
        torch.manual_seed(args.seed)
        random_vit = build_backbone(**ckpt["backbone_kwargs"]).to(device).eval()
        rows["random_init"], _, _ = evaluate(random_vit, ds, indices, image_size, device, args.mass,
                                             void_mode=args.void)

    fig_path = _plot(examples, out / "jaccard.png", ckpt, args.mass)
    things = thing_ids(ds)
    return cli.emit({
        "eval": "jaccard", **cli.checkpoint_info(args.checkpoint, ckpt),
        "data": args.data, "data_root": args.data_root, "split": args.split, "image_size": image_size,
        "mask_kind": getattr(ds, "mask_kind", None), "voc_masks": args.voc_masks if args.data == "voc2012" else None,
        "objects": ("COCO thing classes (panoptic ids 1-90); stuff and unlabeled = background" if things is not None
                    else "every id other than 0 (background) and 255 (void)"),
        "thing_classes": None if things is None else (thing_names(ds) or "COCO ids 1-90 (no config.yaml)"),
        "protocol": {"mask": f"per head, smallest set of patches holding {args.mass:.0%} of the CLS attention "
                             "mass (last layer), nearest-upsampled to the ground-truth size",
                     "mass": args.mass, "void_mode": args.void,
                     "void": ("255 is never an object, so predicted void pixels are in the union (the snippet of "
                              "dino issue #54)" if args.void == "count" else "255 out of intersection and union"),
                     "dino_best_head": "per object the best head, mean over objects, then over images "
                                       "(facebookresearch/dino issue #54)",
                     "largest_class": "ground truth = the id with the most pixels",
                     "union_of_classes": "ground truth = all non-background, non-void pixels",
                     "head_union": "prediction = union of the per-head masks",
                     "head_max": f"prediction = {args.mass:.0%} mass mask of the max over heads",
                     "input": "short side = image_size, sides rounded to patch multiples, aspect kept",
                     "unit": "percent"},
        "n_images": rows["checkpoint"]["n_images"], "n_skipped_no_object": skipped["no_object"],
        "n_skipped_no_mask": skipped["no_mask"],
        "jaccard": rows["checkpoint"]["dino_best_head"], "rows": rows, "figure": fig_path,
    }, out, "jaccard")


def _plot(examples, path, ckpt: dict, mass: float) -> str:
    plt = cli.pyplot()
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 4, figsize=(7.2, 1.9 * n + 0.5), squeeze=False, layout="constrained")
    for r, (image, gt, s) in enumerate(examples):
        rgb = np.asarray(image.resize(gt.shape[::-1])).astype(np.float32) / 255.0
        shown = gt.clone().float()
        shown[gt == VOID] = float("nan")  # void drawn blank
        head = s["best_head_of_largest"]
        panels = [(rgb, "image"), (shown.numpy(), "ground truth"),
                  (keep_overlay(rgb, s["masks"][head].numpy()),
                   f"best head ({head + 1}): J={100 * s['best_head_j_of_largest']:.0f}"),
                  (keep_overlay(rgb, s["preds"]["head_max"].numpy()),
                   f"max over heads: J={100 * s['largest_class']['head_max']:.0f}")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img, interpolation="nearest", cmap="tab10" if title == "ground truth" else None)
            ax.set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{mass:.0%} attention-mass masks: {ckpt.get('method')} {ckpt.get('arch')}\n"
                 "bright: kept by the mask; dimmed: dropped. J: Jaccard index (%) with the largest object",
                 fontsize=9)
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
