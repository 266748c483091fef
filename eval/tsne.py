"""t-SNE (van der Maaten & Hinton 2008, scikit-learn) of test-split features coloured by class, for
one checkpoint or several side by side, e.g. a run's snapshots at initialisation, epoch 1, the
middle and the last epoch (the "epoch -1, 0, 5, 9" panels of a DINO-on-COCO lab report).

Each panel embeds the same test images; the JSON adds the silhouette score of the classes in the
feature space (cosine), a number that follows what the eye sees in the panels.

    python eval/tsne.py --checkpoint runs/dino/shapes-vit_tiny/snapshots/epoch*.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

import numpy as np

from eval import cli  # torch-free: torch and scikit-learn are imported inside the functions, after parsing

MIN_POINTS = 2  # t-SNE needs perplexity < n, and the perplexity floor below is 1


def embed(feats: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """2-D t-SNE of L2-normalised features (PCA initialisation); perplexity is lowered to
    (n - 1) / 3 for small sets, as t-SNE needs perplexity < n. Returns (n × 2, perplexity used)."""
    from sklearn.manifold import TSNE

    n = len(feats)
    if n < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {n}")
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(feats.astype(np.float32)), perplexity


def silhouette(feats: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette of the classes under cosine distance, in [-1, 1]; None for < 2 classes."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or len(labels) <= len(np.unique(labels)):
        return None
    return float(silhouette_score(feats, labels, metric="cosine"))


def add_arguments(parser: cli.EvalParser) -> None:
    parser.group("data").add_argument("--split", default="test", help="split whose labelled images are embedded")
    g = parser.group("evaluation")
    g.add_argument("--perplexity", type=float, default=30.0,
                   help="t-SNE perplexity (scikit-learn's default), lowered to (n - 1) / 3 where that is smaller "
                        "(n: the images embedded)")
    g.add_argument("--titles", nargs="+", default=None,
                   help="one panel title per checkpoint (default: method, arch and epoch)")
    parser.group("run").add_argument("--name", default="tsne", help="result name: <out>/<name>.json and .png")


def main(argv=None) -> dict:
    args = cli.parse_cli("tsne", add_arguments, argv,
                         "t-SNE of test features coloured by class, one panel per checkpoint.", multi_checkpoint=True)
    cli.check_positive(args, "batch_size", "max_test", "image_size")
    if args.titles is not None and len(args.titles) != len(args.checkpoint):
        raise SystemExit(f"error: --titles has {len(args.titles)} entries for {len(args.checkpoint)} checkpoints; "
                         "give one title per checkpoint")
    if args.perplexity <= 0:
        raise SystemExit("error: --perplexity must be > 0")
    import torch.nn.functional as F  # torch loads only now: --help and option errors never wait for it

    from common.runtime import resolve_device
    from eval.features import cached_features, subset_indices

    device = resolve_device(args.device)
    out = cli.out_dir(args, args.checkpoint)
    ds = cli.open_dataset(args.data, args.data_root, args.split, need_labels=True)
    indices = subset_indices(len(ds), args.max_test)

    panels, records, image_size = [], [], None
    for n, path in enumerate(args.checkpoint):
        backbone, ckpt = cli.open_checkpoint(path, device, args.trust_checkpoint)
        size = args.image_size or cli.default_image_size(ckpt)
        image_size = image_size or size
        feats, labels, _ = cached_features(backbone, path, ds, args.data, args.data_root, args.split, size,
                                           cli.cache_dir(args, out), indices, args.batch_size, args.workers, device)
        del backbone
        keep = labels >= 0
        x = F.normalize(feats[keep], dim=1).numpy()
        y = labels[keep].numpy()
        if len(y) < MIN_POINTS:
            raise SystemExit(f"error: t-SNE needs at least {MIN_POINTS} labelled {args.split} images (perplexity "
                             f"must stay below their number), got {len(y)}; raise --max-test")
        xy, perplexity = embed(x, args.perplexity, args.seed)
        when = "initialisation" if ckpt.get("epoch") == 0 else f"epoch {ckpt.get('epoch')}"
        title = args.titles[n] if args.titles else f"{ckpt.get('method')} {ckpt.get('arch')}, {when}"
        panels.append((xy, y, title))
        records.append({**cli.checkpoint_info(path, ckpt), "title": title, "image_size": size,
                        "n_points": int(len(y)), "perplexity": perplexity,
                        "silhouette_cosine": silhouette(x, y)})

    fig_path = _plot(panels, ds.classes, out / f"{args.name}.png", args.data)
    return cli.emit({
        "eval": "tsne", "data": args.data, "data_root": args.data_root, "split": args.split,
        "image_size": image_size, "max_test": args.max_test,
        "protocol": {"features": "backbone output of the eval transform, L2-normalised",
                     "tsne": "scikit-learn TSNE, 2-D, PCA init, perplexity min(--perplexity, (n-1)/3)",
                     "seed": args.seed, "silhouette": "sklearn silhouette_score, cosine, true classes"},
        "checkpoints": records, "figure": fig_path,
    }, out, args.name)


def _plot(panels, classes, path, data: str) -> str:
    plt = cli.pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.2), squeeze=False)
    num_classes = max(len(classes), max(int(y.max()) + 1 for _, y, _ in panels if len(y)))
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo")
    colours = [cmap(c / max(1, num_classes - 1)) if num_classes > 20 else cmap(c) for c in range(num_classes)]
    for ax, (xy, y, title) in zip(axes[0], panels):
        for c in np.unique(y):
            name = classes[c] if c < len(classes) else str(c)
            ax.scatter(xy[y == c, 0], xy[y == c, 1], s=6, color=colours[c], label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = axes[0, -1].get_legend_handles_labels()
    if num_classes <= 30:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2,
                   title=data)
    fig.tight_layout()
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
