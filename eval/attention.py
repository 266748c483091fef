"""Self-attention of a ViT's CLS token in the last layer, per head and their maximum, overlaid on the
images (DINO, Caron et al. 2021, figs. 1 and 3), and the masks that keep 60 %
of each map's attention mass (DINO's visualize_attention.py `--threshold 0.6`).

The image is resized so that its short side is `--image-size` and both sides are multiples of the
patch size (the aspect ratio is kept, the ViT interpolates its position embedding), so a patch maps
back onto the image exactly.

    python eval/attention.py --checkpoint runs/dino/shapes-vit_tiny/checkpoint.pt --num-images 4
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

import numpy as np

from eval import cli  # torch-free: torch is imported inside the functions, after parsing

if TYPE_CHECKING:
    import torch

MASS = 0.6  # DINO keeps the smallest set of patches holding 60 % of the attention mass


def mass_mask(attn: torch.Tensor, mass: float = MASS) -> torch.Tensor:
    """Boolean mask over the last dimension: the smallest set of entries, largest first, whose share
    of the total reaches `mass` (e.g. [0.5, 0.3, 0.15, 0.05] at 0.6 keeps the first two)."""
    import torch

    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    attn = attn.float()
    share = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
    val, idx = share.sort(dim=-1, descending=True)
    before = val.cumsum(-1) - val  # mass already kept before this entry
    keep_sorted = before < mass - 1e-6  # the entry that reaches `mass` is the last one kept
    return torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)


def is_vit(backbone) -> bool:
    return hasattr(backbone, "get_last_selfattention") and hasattr(backbone, "patch_size")


def require_vit(backbone, ckpt: dict, script: str) -> None:
    if not is_vit(backbone):
        raise SystemExit(f"error: {script} needs a ViT checkpoint (CLS self-attention); this one is "
                         f"{ckpt.get('arch')}, which has no attention; use a vit_* run")


def prepare_image(image, image_size: int, patch_size: int) -> torch.Tensor:
    """3 × h × w normalised tensor: short side about `image_size`, both sides multiples of the patch."""
    import torch
    from torchvision.transforms import v2

    from common.augment import MEAN, STD

    w, h = image.size
    scale = image_size / min(w, h)
    size = [max(patch_size, round(s * scale / patch_size) * patch_size) for s in (h, w)]
    return v2.Compose([v2.ToImage(), v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])(image)


def cls_attention(backbone, images: torch.Tensor) -> torch.Tensor:
    """B × heads × h × w: the last layer's attention of the CLS query to every patch."""
    import torch

    h, w = images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size
    with torch.no_grad():
        attn = backbone.get_last_selfattention(images)
    return attn[:, :, 0, 1:].reshape(attn.shape[0], attn.shape[1], h, w).float()


def head_masks(attn: torch.Tensor, mass: float = MASS) -> torch.Tensor:
    """... × h × w attention maps → boolean masks of the same shape (mass_mask over each map)."""
    flat = attn.flatten(-2)
    return mass_mask(flat, mass).reshape(attn.shape)


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour upsampling of ... × h × w maps to `size` = (H, W) (each patch a block)."""
    import torch
    import torch.nn.functional as F

    lead = maps.shape[:-2]
    out = F.interpolate(maps.float().reshape(1, -1, *maps.shape[-2:]), size=tuple(size), mode="nearest")
    out = out.reshape(*lead, *size)
    return out.bool() if maps.dtype == torch.bool else out


def add_arguments(parser: cli.EvalParser) -> None:
    d, g = parser.group("data"), parser.group("evaluation")
    d.add_argument("--split", default="test", help="split to take the images from")
    d.add_argument("--num-images", type=int, default=4, help="images in the grid (evenly spaced over the split)")
    g.add_argument("--mass", type=float, default=MASS,
                   help="share of each map's attention mass the masks keep (DINO's --threshold)")


def main(argv=None) -> dict:
    args = cli.parse_cli("attention", add_arguments, argv,
                         "Last-layer CLS self-attention of a ViT checkpoint, per head, and its 60 % mass masks.")
    cli.check_positive(args, "num_images", "image_size")
    if not 0 < args.mass <= 1:
        raise SystemExit("error: --mass must be in (0, 1]")
    import torch  # torch loads only now: --help and option errors never wait for it

    from eval.features import subset_indices

    device, backbone, ckpt, image_size, out = cli.open_network(args, lambda net, c: require_vit(net, c, "attention.py"))
    ds = cli.open_dataset(args.data, args.data_root, args.split)
    indices = subset_indices(len(ds), args.num_images)

    rows, records = [], []
    for i in indices:
        image, label = ds[i]
        x = prepare_image(image, image_size, backbone.patch_size).unsqueeze(0).to(device)
        attn = cls_attention(backbone, x)[0].cpu()                      # heads × h × w
        maps = torch.cat([attn, attn.max(0, keepdim=True).values])      # + the max over heads
        masks = head_masks(maps, args.mass)
        size = x.shape[-2:]
        rows.append((x[0].cpu(), upsample(maps, size), upsample(masks, size)))
        records.append({"index": i, "label": int(label),
                        "class": ds.classes[label] if 0 <= label < len(ds.classes) else None,
                        "input_size": list(size), "patch_grid": list(attn.shape[-2:]),
                        "kept_patch_fraction_per_head": masks[:-1].flatten(1).float().mean(1).tolist(),
                        "kept_patch_fraction_max": masks[-1].float().mean().item()})

    fig_path = _plot(rows, records, out / "attention.png", ckpt, args.mass)
    return cli.emit({
        "eval": "attention", **cli.checkpoint_info(args.checkpoint, ckpt),
        "data": args.data, "data_root": args.data_root, "split": args.split, "image_size": image_size,
        "protocol": {"attention": "last block, CLS query to every patch, softmax per head",
                     "max": "element-wise maximum over heads",
                     "mask": f"smallest set of patches holding {args.mass:.0%} of a map's attention mass",
                     "upsampling": "nearest (one block per patch)", "mass": args.mass},
        "num_heads": int(rows[0][1].shape[0] - 1), "patch_size": backbone.patch_size,
        "images": records, "figure": fig_path,
    }, out, "attention")


def denormalise(x: torch.Tensor) -> np.ndarray:
    """Normalised 3 × H × W tensor → H × W × 3 array in [0, 1] for imshow."""
    import torch

    from common.augment import MEAN, STD

    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def keep_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image where `mask` is set, dimmed to a quarter elsewhere."""
    return rgb * (0.25 + 0.75 * mask[..., None].astype(np.float32))


def _plot(rows, records, path, ckpt: dict, mass: float) -> str:
    plt = cli.pyplot()
    heads = rows[0][1].shape[0] - 1
    cols = heads + 2
    # constrained layout: no empty band under the title, room for the colour bar
    fig, axes = plt.subplots(2 * len(rows), cols, figsize=(1.6 * cols + 0.8, 3.0 * len(rows) + 0.6),
                             squeeze=False, layout="constrained")
    for r, ((image, maps, masks), rec) in enumerate(zip(rows, records)):
        rgb = denormalise(image)
        title = rec["class"] if rec["class"] is not None else f"#{rec['index']}"
        for row, kind in ((2 * r, "attention"), (2 * r + 1, "mask")):
            axes[row, 0].imshow(rgb)
            axes[row, 0].set_title(title if kind == "attention" else "image", fontsize=8)
            for h in range(heads + 1):
                ax = axes[row, h + 1]
                name = f"head {h + 1}" if h < heads else "max"
                if kind == "attention":  # the map, scaled to its own maximum, as a heat overlay
                    ax.imshow(rgb)
                    heat = ax.imshow((maps[h] / maps[h].max().clamp(min=1e-12)).numpy(), cmap="inferno",
                                     alpha=0.7, vmin=0, vmax=1)
                    ax.set_title(name, fontsize=8)
                else:  # what the mask keeps, the rest dimmed
                    ax.imshow(keep_overlay(rgb, masks[h].numpy()))
                    ax.set_title(f"{name}: {mass:.0%} mass", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(heat, ax=axes[0::2, :].ravel().tolist(), shrink=0.8, label="attention / its maximum")
    fig.suptitle(f"CLS self-attention, last layer: {ckpt.get('method')} {ckpt.get('arch')}\n"
                 f"mask rows: bright = kept (the patches holding {mass:.0%} of the attention), dimmed = dropped",
                 fontsize=9)
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
