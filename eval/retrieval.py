"""Nearest-neighbour retrieval (the "query image, image 1 … image 5" table of DINO lab reports): for query images
of the test split, the 5 most similar images of the train split (the bank) by cosine similarity of
the backbone features, shown as an image grid with the neighbours' labels and similarities.

precision@5 = the share of the 5 neighbours that have the query's label, averaged over queries; the
JSON gives it for the queries shown and for every test image.

    python eval/retrieval.py --checkpoint runs/byol/shapes-resnet18/checkpoint.pt --num-queries 6
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


def nearest(bank: torch.Tensor, queries: torch.Tensor, n: int = 5, chunk_size: int = 1024):
    """(similarities Q × n, bank positions Q × n) of each query's n most cosine-similar bank rows."""
    import torch
    import torch.nn.functional as F

    bank = F.normalize(bank.float(), dim=1)
    sims, idx = [], []
    for start in range(0, len(queries), chunk_size):
        q = F.normalize(queries[start:start + chunk_size].float().to(bank.device), dim=1)
        s, i = (q @ bank.T).topk(min(n, len(bank)), dim=1)
        sims.append(s.cpu())
        idx.append(i.cpu())
    return torch.cat(sims), torch.cat(idx)


def precision_at(neighbour_labels: torch.Tensor, query_labels: torch.Tensor) -> float:
    """Share of neighbours with the query's label, in percent."""
    return 100.0 * (neighbour_labels == query_labels.view(-1, 1)).float().mean().item()


def add_arguments(parser: cli.EvalParser) -> None:
    g = parser.group("evaluation")
    g.add_argument("--num-queries", type=int, default=6,
                   help="queries shown in the figure and listed in the JSON (evenly spaced over the test split)")
    g.add_argument("--neighbours", type=int, default=5, help="neighbours per query (precision@N counts them)")


def main(argv=None) -> dict:
    args = cli.parse_cli("retrieval", add_arguments, argv,
                         "Query images and their 5 nearest neighbours in the train split (cosine).")
    cli.check_positive(args, "batch_size", "max_train", "max_test", "image_size", "num_queries", "neighbours")
    import torch  # torch loads only now: --help and option errors never wait for it

    from eval.features import cached_features, subset_indices

    device, backbone, ckpt, image_size, out = cli.open_network(args)
    bank_set = cli.open_dataset(args.data, args.data_root, "train")
    query_set = cli.open_dataset(args.data, args.data_root, "test")
    bank_idx = subset_indices(len(bank_set), args.max_train)
    query_idx = subset_indices(len(query_set), args.max_test)

    def features(ds, split, idx):
        f, y, _ = cached_features(backbone, args.checkpoint, ds, args.data, args.data_root, split, image_size,
                                  cli.cache_dir(args, out), idx, args.batch_size, args.workers, device)
        return f, y

    bank_f, bank_y = features(bank_set, "train", bank_idx)
    query_f, query_y = features(query_set, "test", query_idx)
    sims, pos = nearest(bank_f.to(device), query_f, args.neighbours)
    neighbour_y = bank_y[pos]
    labelled = query_y >= 0
    p_all = precision_at(neighbour_y[labelled], query_y[labelled]) if labelled.any() else None

    shown = subset_indices(len(query_idx), args.num_queries)
    def name(ds, y):
        return ds.classes[y] if 0 <= y < len(ds.classes) else None

    queries = []
    for q in shown:
        queries.append({
            "query_index": query_idx[q], "query_label": int(query_y[q]),
            "query_class": name(query_set, int(query_y[q])),
            "neighbour_indices": [bank_idx[j] for j in pos[q].tolist()],
            "neighbour_labels": neighbour_y[q].tolist(),
            "neighbour_classes": [name(bank_set, int(y)) for y in neighbour_y[q]],
            "similarities": [round(s, 6) for s in sims[q].tolist()],
        })
    shown_t = torch.tensor(shown)
    p_shown = precision_at(neighbour_y[shown_t], query_y[shown_t]) if (query_y[shown_t] >= 0).all() else None

    fig_path = _plot(queries, query_set, bank_set, out / "retrieval.png", ckpt)
    return cli.emit({
        "eval": "retrieval", **cli.checkpoint_info(args.checkpoint, ckpt), **cli.data_info(args, image_size),
        "protocol": {"features": "backbone output of the eval transform", "similarity": "cosine",
                     "bank": "train split", "queries": "test split", "neighbours": args.neighbours,
                     "precision": f"share of the {args.neighbours} neighbours with the query's label",
                     "unit": "percent"},
        "n_bank": len(bank_idx), "n_queries": len(query_idx),
        f"precision_at_{args.neighbours}": p_all, f"precision_at_{args.neighbours}_shown": p_shown,
        "queries": queries, "figure": fig_path,
    }, out, "retrieval")


# Okabe & Ito's colour-blind-safe pair, with a mark, so that the grid also reads in grey.
SAME, OTHER = ("#0072B2", "\u2713"), ("#D55E00", "\u2717")


def _plot(queries, query_set, bank_set, path, ckpt: dict) -> str:
    plt = cli.pyplot()
    # nearest: the pixels as they are; smoothed upsampling of 30 small images made a 1.6 MB PNG
    cols = 1 + len(queries[0]["neighbour_indices"])
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.7 * cols, 1.9 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        axes[r, 0].imshow(np.asarray(query_set[q["query_index"]][0]), interpolation="nearest")
        axes[r, 0].set_title(f"query\n{q['query_class'] or q['query_label']}", fontsize=8, fontweight="bold")
        for c, (j, y, cls, s) in enumerate(zip(q["neighbour_indices"], q["neighbour_labels"],
                                               q["neighbour_classes"], q["similarities"]), start=1):
            axes[r, c].imshow(np.asarray(bank_set[j][0]), interpolation="nearest")
            colour, mark = (SAME if y == q["query_label"] else OTHER) if q["query_label"] >= 0 else ("black", "")
            axes[r, c].set_title(f"{mark} {cls or y}\nsim {s:.3f}", fontsize=8, color=colour)
            for spine in axes[r, c].spines.values():  # a frame in the same colour
                spine.set(color=colour, linewidth=2.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, 0]:
        ax.set_frame_on(False)
    fig.suptitle(f"{cols - 1} nearest neighbours (cosine): {ckpt.get('method')} {ckpt.get('arch')}\n"
                 f"{SAME[1]} blue frame: same class as the query; {OTHER[1]} orange frame: another class", fontsize=10)
    fig.tight_layout()
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
