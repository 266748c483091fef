"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018; the protocol of
facebookresearch/dino eval_knn.py).

Features are L2-normalised, so the dot product is the cosine similarity. Each test image takes its
k most similar train images; neighbour j votes for its class with weight exp(s_j / T), T = 0.07.
The class scores are sorted: top-1 is the best class, top-5 whether the label is among the five
best. Queries are processed in chunks, so memory is O(chunk × train), whatever the dataset size.

    python eval/knn.py --checkpoint runs/dino/shapes-vit_tiny/checkpoint.pt --data shapes
    python eval/knn.py --raw-pixels --image-size 16 --data shapes --out runs/baselines/pixels16/knn
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from eval import cli  # torch-free: torch is imported inside the functions, after parsing

KS = (10, 20, 100, 200)  # DINO reports k = 20 (headline) and k = 200
TEMPERATURE = 0.07
RAW_PIXELS_FEATURES = "raw pixels: the eval view flattened, each channel standardised with the train images' pixels"


def class_votes(train_feats, train_labels, test_feats, k: int, T: float = TEMPERATURE,
                num_classes: int | None = None, chunk_size: int = 1024):
    """Yield, per chunk of queries, the Q × C class scores: the sum over the k nearest train
    features of exp(cosine / T) per class. `k` is clamped to the number of train features."""
    import torch
    import torch.nn.functional as F

    if train_feats.shape[0] == 0:
        raise ValueError("k-NN needs at least one train feature")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(train.device).long()
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start:start + chunk_size].float().to(train.device), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=train.device)
        yield votes.scatter_add_(1, labels[idx], (sims / T).exp())


def knn_classify(train_feats, train_labels, test_feats, k: int, T: float = TEMPERATURE,
                 num_classes: int | None = None, chunk_size: int = 1024):
    """(predictions Q × C: classes sorted by score, best first; scores Q × C, see class_votes)."""
    import torch

    scores = list(class_votes(train_feats, train_labels, test_feats, k, T, num_classes, chunk_size))
    if not scores:
        c = num_classes or int(train_labels.max()) + 1
        return torch.zeros(0, c, dtype=torch.long), torch.zeros(0, c)
    scores = torch.cat(scores)
    return scores.argsort(dim=1, descending=True), scores


def topk_accuracy(predictions, labels, ks=(1, 5)) -> dict[int, float]:
    """Percent of rows whose label is among the first k predicted classes (k clamped to C)."""
    return {k: 100.0 * c / max(1, len(labels)) for k, c in _topk_correct(predictions, labels, ks).items()}


def _topk_correct(predictions, labels, ks) -> dict[int, int]:
    labels = labels.to(predictions.device).view(-1, 1)
    return {k: int((predictions[:, :min(k, predictions.shape[1])] == labels).any(1).sum()) for k in ks}


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int, T: float = TEMPERATURE,
                 num_classes: int | None = None, chunk_size: int = 1024) -> tuple[float, float]:
    """(top-1, top-5) in percent; only the five best classes of each chunk are kept in memory."""
    correct, start = {1: 0, 5: 0}, 0
    for votes in class_votes(train_feats, train_labels, test_feats, k, T, num_classes, chunk_size):
        top = votes.topk(min(5, votes.shape[1]), dim=1).indices
        for kk, c in _topk_correct(top, test_labels[start:start + len(votes)], (1, 5)).items():
            correct[kk] += c
        start += len(votes)
    n = max(1, test_feats.shape[0])
    return 100.0 * correct[1] / n, 100.0 * correct[5] / n


def _num_classes(dataset, *label_tensors) -> int:
    n = len(getattr(dataset, "classes", []) or [])
    return max([n] + [int(t.max()) + 1 for t in label_tensors if t.numel()])


class KNNMonitor:
    """The engine's periodic evaluation: `monitor(backbone) -> {"knn_top1", "knn_top5"}` (percent),
    k-NN of `query_set` against `bank_set` with fresh features of the backbone at each call.
    `max_bank` / `max_query` keep evenly spaced subsets so the monitor stays cheap."""

    def __init__(self, bank_set, query_set, image_size, batch_size=256, workers=0, device="cpu",
                 k=20, T=TEMPERATURE, max_bank=None, max_query=None):
        import torch

        from common.augment import eval_transform
        from eval.features import subset_indices

        self.bank_set, self.query_set = bank_set, query_set
        self.bank_idx = subset_indices(len(bank_set), max_bank)
        self.query_idx = subset_indices(len(query_set), max_query)
        self.transform = eval_transform(image_size)
        self.batch_size, self.workers, self.device = batch_size, workers, torch.device(device)
        self.k, self.T = k, T

    def __call__(self, backbone) -> dict[str, float]:
        from eval.features import extract_features

        # extract_features puts the backbone in eval mode and restores its mode afterwards.
        args = (self.transform, self.batch_size, self.workers, self.device)
        bank, bank_labels = extract_features(backbone, self.bank_set, self.bank_idx, *args)
        query, query_labels = extract_features(backbone, self.query_set, self.query_idx, *args)
        keep = bank_labels >= 0  # unlabelled bank images cannot vote
        bank, bank_labels = bank[keep], bank_labels[keep]
        if bank.shape[0] == 0 or query.shape[0] == 0:
            raise ValueError("KNNMonitor needs labelled bank and query images")
        top1, top5 = knn_accuracy(bank, bank_labels, query, query_labels, self.k, self.T,
                                  _num_classes(self.bank_set, bank_labels, query_labels))
        return {"knn_top1": top1, "knn_top5": top5, "knn_queries": int(query.shape[0])}  # figures state it


def add_arguments(parser: cli.EvalParser) -> None:
    d, g = parser.group("data"), parser.group("evaluation")
    d.add_argument("--train-split", default="train", help="split whose labelled images are the bank (the neighbours)")
    d.add_argument("--test-split", default="test", help="split whose images are the queries")
    g.add_argument("--k", type=int, nargs="+", default=list(KS),
                   help="numbers of neighbours, one result each (DINO's; the result at k = 20 is the headline)")
    g.add_argument("--temperature", type=float, default=TEMPERATURE, help="T of the vote weight exp(sim / T) (DINO's)")


def main(argv=None) -> dict:
    args = cli.parse_cli("knn", add_arguments, argv,
                         "Weighted k-NN accuracy of a checkpoint's frozen features (DINO protocol).", raw_pixels=True)
    cli.check_positive(args, "batch_size", "max_train", "max_test", "image_size")
    if min(args.k) < 1 or args.temperature <= 0:
        raise SystemExit("error: --k must be >= 1 and --temperature > 0")
    from eval.features import cached_features, raw_pixel_features, subset_indices  # torch loads only now

    device, backbone, ckpt, image_size, out = cli.open_network(args)
    train_set = cli.open_dataset(args.data, args.data_root, args.train_split, need_labels=True)
    test_set = cli.open_dataset(args.data, args.data_root, args.test_split, need_labels=True)

    def features(ds, split, max_n):
        f, y, _ = cached_features(backbone, args.checkpoint, ds, args.data, args.data_root, split, image_size,
                                  cli.cache_dir(args, out), subset_indices(len(ds), max_n),
                                  args.batch_size, args.workers, device)
        return f, y

    if args.raw_pixels:
        train_f, train_y, test_f, test_y = raw_pixel_features(
            train_set, test_set, subset_indices(len(train_set), args.max_train),
            subset_indices(len(test_set), args.max_test), image_size, args.batch_size, args.workers, device)
    else:
        train_f, train_y = features(train_set, args.train_split, args.max_train)
        test_f, test_y = features(test_set, args.test_split, args.max_test)
    train_f, train_y = train_f[train_y >= 0], train_y[train_y >= 0]
    test_f, test_y = test_f[test_y >= 0], test_y[test_y >= 0]
    num_classes = _num_classes(train_set, train_y, test_y)

    results = {}
    for k in args.k:
        top1, top5 = knn_accuracy(train_f.to(device), train_y.to(device), test_f, test_y, k,
                                  args.temperature, num_classes)
        results[str(k)] = {"top1": top1, "top5": top5, "k_effective": min(k, len(train_y))}
    headline = 20 if 20 in args.k else args.k[0]
    fig_path = _plot(results, out / "knn.png", ckpt, args.data)
    return cli.emit({
        "eval": "knn", **cli.checkpoint_info(args.checkpoint, ckpt), **cli.data_info(args, image_size),
        "protocol": {"features": (RAW_PIXELS_FEATURES if args.raw_pixels else "backbone output") + ", L2-normalised",
                     "similarity": "cosine",
                     "vote_weight": "exp(sim / T)", "T": args.temperature, "k": args.k,
                     "headline_k": headline, "bank": f"{args.train_split} split",
                     "queries": f"{args.test_split} split",
                     "unit": "percent"},
        "n_train": len(train_y), "n_test": len(test_y), "num_classes": num_classes,
        "top1": results[str(headline)]["top1"], "top5": results[str(headline)]["top5"],
        "by_k": results, "figure": fig_path,
    }, out, "knn")


def _plot(results: dict, path, ckpt: dict, data: str) -> str:
    plt = cli.pyplot()
    ks = [int(k) for k in results]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(ks, [results[str(k)]["top1"] for k in ks], "o-", label="top-1")
    ax.plot(ks, [results[str(k)]["top5"] for k in ks], "s--", label="top-5")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"k-NN: {ckpt.get('method')} {ckpt.get('arch')} on {data}")
    ax.legend()
    ax.grid(alpha=0.3)
    return cli.save_figure(fig, path)


if __name__ == "__main__":
    main()
