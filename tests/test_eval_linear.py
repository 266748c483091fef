"""Linear probe maths: separable features, per-class seeded label fractions, held-out split."""

import numpy as np
import pytest
import torch

from eval.linear import choose_weight_decay, evaluate, heldout_split, sample_label_fraction, standardise, train_probe

pytestmark = pytest.mark.usefixtures("one_thread")



def clusters(n_per_class, seed, dim=16, classes=4):
    centres = torch.eye(classes, dim) * 6.0 + 3.0  # far apart, and far from the origin
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), dim, generator=torch.Generator().manual_seed(seed + 1)), y


def test_probe_separates_linearly_separable_features():
    x, y = clusters(40, 0)
    x_test, y_test = clusters(25, 10)
    (mean, std), (x, x_test) = standardise(x, x_test)
    head = train_probe(x, y, num_classes=4, epochs=30, lr=0.1, batch_size=32, seed=0)
    acc = evaluate(head, x_test, y_test)
    assert acc[1] == 100.0 and acc[5] == 100.0


def test_standardise_uses_train_statistics():
    train = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    (mean, std), (a, b) = standardise(train, torch.tensor([[2.0, 40.0]]))
    assert torch.allclose(mean, torch.tensor([2.0, 20.0])) and torch.allclose(std, torch.tensor([1.0, 10.0]))
    assert torch.allclose(a, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert torch.allclose(b, torch.tensor([[0.0, 2.0]]))


def test_label_fraction_is_per_class_seeded_and_at_least_one():
    targets = np.array([0] * 100 + [1] * 50 + [2] * 3 + [3] * 1 + [-1] * 20)
    rng = np.random.default_rng(0)
    targets = targets[rng.permutation(len(targets))]
    chosen = sample_label_fraction(targets, 0.1, seed=3)
    counts = np.bincount(targets[chosen], minlength=4)
    assert counts.tolist() == [10, 5, 1, 1]  # round(0.3) = 0 -> at least one
    assert (targets[chosen] >= 0).all() and len(set(chosen.tolist())) == len(chosen)
    assert np.array_equal(chosen, sample_label_fraction(targets, 0.1, seed=3))
    assert not np.array_equal(chosen, sample_label_fraction(targets, 0.1, seed=4))
    everything = sample_label_fraction(targets, 1.0, seed=0)
    assert np.array_equal(everything, np.flatnonzero(targets >= 0))
    assert np.bincount(targets[sample_label_fraction(targets, 0.2, 0)]).tolist() == [20, 10, 1, 1]
    with pytest.raises(ValueError):
        sample_label_fraction(targets, 0.0)


def test_heldout_split_is_stratified_and_needs_two_per_class():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    fit, held = heldout_split(y, 0.2, seed=0)
    assert np.bincount(y[held]).tolist() == [2, 1, 1]
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(y)))
    assert heldout_split(np.array([0, 0, 1]), 0.2) is None
    wd, how, scores = choose_weight_decay(torch.randn(3, 4), torch.tensor([0, 0, 1]), 2, 2, 0.1, 8, 0)
    assert wd == 0.0 and "fewer than 2" in how and scores == {}
