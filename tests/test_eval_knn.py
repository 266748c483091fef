"""Weighted k-NN (DINO protocol) on hand-made features with known votes, and the engine's monitor."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eval.knn import KNNMonitor, knn_accuracy, knn_classify, topk_accuracy

# Four train features on the unit circle (one deliberately unnormalised) with known cosines to the
# query direction (1, 0): a = 1, b = 0.8, c = 0, d = -1.
TRAIN = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-3.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[2.0, 0.0]])


pytestmark = pytest.mark.usefixtures("one_thread")



def test_votes_are_exp_of_cosine_over_temperature():
    preds, scores = knn_classify(TRAIN, LABELS, QUERY, k=2, T=0.1, num_classes=3)
    # neighbours a (cos 1, class 0) and b (cos 0.8, class 1); c and d are not among the 2 nearest
    assert torch.allclose(scores, torch.tensor([[math.exp(10.0), math.exp(8.0), 0.0]]), rtol=1e-5)
    assert preds.tolist() == [[0, 1, 2]]
    _, scores = knn_classify(TRAIN, LABELS, QUERY, k=4, T=0.1, num_classes=3)
    expected = [math.exp(10.0), math.exp(8.0) + math.exp(0.0), math.exp(-10.0)]
    assert torch.allclose(scores, torch.tensor([expected]), rtol=1e-5)


def test_temperature_decides_between_one_close_and_two_far_neighbours():
    # k = 3: class 0 has one neighbour (cos 1), class 1 has two (cos 0.8 and 0).
    preds, _ = knn_classify(TRAIN, LABELS, QUERY, k=3, T=0.07, num_classes=3)
    assert preds[0, 0] == 0  # exp(1/0.07) outweighs exp(0.8/0.07) + 1
    preds, scores = knn_classify(TRAIN, LABELS, QUERY, k=3, T=100.0, num_classes=3)
    assert preds[0, 0] == 1  # nearly uniform weights: two votes beat one
    assert scores[0, 1].item() == pytest.approx(math.exp(0.008) + 1.0, rel=1e-6)


def test_chunking_and_k_clamp_do_not_change_the_answer():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(23, 8, generator=g)
    labels = torch.randint(0, 7, (50,), generator=g)
    _, whole = knn_classify(train, labels, test, k=10, T=0.07, num_classes=7, chunk_size=1024)
    _, chunked = knn_classify(train, labels, test, k=10, T=0.07, num_classes=7, chunk_size=4)
    assert torch.allclose(whole, chunked)
    _, all_n = knn_classify(train, labels, test, k=50, num_classes=7)
    _, too_many = knn_classify(train, labels, test, k=500, num_classes=7)  # k > N is clamped to N
    assert torch.allclose(all_n, too_many)


def test_top1_and_top5_counts():
    # six classes, one train feature each at angles 0, 10, ..., 50 degrees; the query sits at 0.
    angles = torch.deg2rad(torch.arange(6) * 10.0)
    train = torch.stack([angles.cos(), angles.sin()], 1)
    labels = torch.tensor([5, 4, 3, 2, 1, 0])
    queries = torch.tensor([[1.0, 0.0]] * 4)
    truth = torch.tensor([5, 4, 0, 3])  # top-1 right, top-2, not in top-5 (6th), top-3
    top1, top5 = knn_accuracy(train, labels, queries, truth, k=6, T=0.07, num_classes=6, chunk_size=3)
    assert top1 == pytest.approx(25.0) and top5 == pytest.approx(75.0)
    preds, _ = knn_classify(train, labels, queries, k=6, T=0.07, num_classes=6)
    assert preds[0].tolist() == [5, 4, 3, 2, 1, 0]
    assert topk_accuracy(preds, truth) == {1: 25.0, 5: 75.0}


class Colours(torch.utils.data.Dataset):
    """Solid red / green / blue 8 px images with a little noise, labels 0 / 1 / 2."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["red", "green", "blue"]
        self.images = []
        for t in self.targets:
            a = rng.integers(0, 40, (8, 8, 3))
            a[..., t] += 200
            self.images.append(Image.fromarray(a.astype(np.uint8)))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def test_monitor_scores_and_restores_train_mode():
    # mean colour per channel is a perfect feature; the BatchNorm shows whether eval mode was used
    backbone = nn.Sequential(nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.train()
    before = backbone[0].running_mean.clone()
    monitor = KNNMonitor(Colours(30, 0), Colours(12, 1), image_size=8, batch_size=7, k=5, max_query=9)
    out = monitor(backbone)
    assert set(out) == {"knn_top1", "knn_top5", "knn_queries"}
    assert out["knn_top1"] == 100.0 and out["knn_top5"] == 100.0
    assert out["knn_queries"] == 9  # max_query of the 12 test images
    assert backbone.training
    assert torch.equal(backbone[0].running_mean, before)  # no batch statistics were updated
    assert len(monitor.query_idx) == 9 and len(monitor.bank_idx) == 30
