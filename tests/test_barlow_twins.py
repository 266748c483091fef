"""Barlow Twins: the cross-correlation and the loss on a 4×3 batch by hand, λ, symmetry, the
projector, the two learning rates, the diagnostics and heat maps, and a 2-epoch run on shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_byol import TinyBackbone, check_two_epoch_run, two_views
from torch import nn

from barlow_twins import train as bt_train
from barlow_twins.model import (
    BarlowTwins,
    barlow_twins_loss,
    build_projector,
    cross_correlation,
    off_diagonal,
    parse_projector,
)
from common.optim import LARS, build_optimizer
from common.options import base_parser, parse_args

# Three orthogonal ±1 columns over a batch of 4: each has mean 0 and (biased) variance 1, so batch
# standardisation leaves them as they are (up to √(1 + ε)).
H = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=np.float64)
EPS = 1e-5


def np_cross_correlation(z1, z2):
    n1 = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + EPS)
    n2 = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + EPS)
    return n1.T @ n2 / z1.shape[0]


def np_loss(c, lambd):
    off = c - np.diag(np.diag(c))
    return ((1 - np.diag(c)) ** 2).sum() + lambd * (off ** 2).sum()


def test_cross_correlation_and_loss_on_a_4x3_batch_by_hand():
    z1 = torch.tensor(H)
    z2 = torch.tensor(H[:, [0, 2, 1]])  # dimension 0 agrees; 1 and 2 are swapped
    c = cross_correlation(z1, z2)
    # C = permutation matrix: C00 = 1, C12 = C21 = 1, every other entry 0 (columns are orthogonal)
    expected = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]]) / (1 + EPS)
    np.testing.assert_allclose(c.numpy(), expected, atol=1e-12)
    # on-diagonal: (1 − 1)² + (1 − 0)² + (1 − 0)² = 2; off-diagonal: two entries of 1 → 2λ
    for lambd in (0.0, 0.0051, 1.0):
        assert barlow_twins_loss(c, lambd).item() == pytest.approx(2 + 2 * lambd, abs=1e-4)


def test_cross_correlation_and_loss_match_numpy_on_a_general_batch():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(4, 3)) * [1, 5, 0.1] + [0, 3, -2]
    z2 = 0.5 * z1 + rng.normal(size=(4, 3))
    c = cross_correlation(torch.tensor(z1), torch.tensor(z2))
    np.testing.assert_allclose(c.numpy(), np_cross_correlation(z1, z2), atol=1e-12)
    for lambd in (0.0, 0.0051, 0.5):
        assert barlow_twins_loss(c, lambd).item() == pytest.approx(np_loss(np_cross_correlation(z1, z2), lambd),
                                                                   rel=1e-10)
    # λ weighs only the redundancy term: the loss grows linearly with λ by Σ_{i≠j} C_ij²
    off = (off_diagonal(c) ** 2).sum().item()
    assert (barlow_twins_loss(c, 0.5) - barlow_twins_loss(c, 0.0)).item() == pytest.approx(0.5 * off, rel=1e-10)


def test_c_ignores_the_scale_and_offset_of_each_dimension():
    rng = np.random.default_rng(1)
    z1, z2 = torch.tensor(rng.normal(size=(8, 3))), torch.tensor(rng.normal(size=(8, 3)))
    scaled = z1 * torch.tensor([2.0, 10.0, 3.0]) + torch.tensor([1.0, -4.0, 7.0])
    # equal up to BatchNorm's ε = 1e-5 in var + ε
    torch.testing.assert_close(cross_correlation(scaled, z2), cross_correlation(z1, z2), atol=2e-5, rtol=0)


def test_off_diagonal():
    c = torch.arange(9.0).view(3, 3)
    assert off_diagonal(c).tolist() == [1, 2, 3, 5, 6, 7]


def tiny_bt(epochs=4, seed=0):
    torch.manual_seed(seed)
    return BarlowTwins(TinyBackbone(), projector="16-16-16", lambd=0.0051, epochs=epochs)


def test_swapping_the_views_gives_the_same_loss():
    model = tiny_bt()
    v1, v2 = two_views()
    a = model(((v1, v2), None), 0)
    b = model(((v2, v1), None), 0)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)  # C becomes Cᵀ


def test_loss_scale_multiplies_the_loss():
    v = two_views()
    base = tiny_bt()(((v[0], v[1]), None), 0)["loss"].item()
    torch.manual_seed(0)
    scaled = BarlowTwins(TinyBackbone(), projector="16-16-16", loss_scale=0.024)(((v[0], v[1]), None), 0)
    assert scaled["loss"].item() == pytest.approx(0.024 * base, rel=1e-6)


def test_projector_is_three_linear_layers_with_bn_relu_between():
    assert parse_projector("8192-8192-8192") == [8192, 8192, 8192]
    proj = build_projector(512, [64, 64, 32])
    kinds = [type(m) for m in proj]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 64), (64, 64), (64, 32)]
    assert all(m.bias is None for m in linears)
    for bad in ("", "8192-x", "0-8"):
        with pytest.raises(ValueError, match="--projector"):
            parse_projector(bad)


def test_diagnostics_and_collapse():
    model = tiny_bt()
    out = model((two_views(), None), 0)
    for key in ("z_std", "c_on_diag", "c_off_diag"):
        assert torch.isfinite(torch.as_tensor(out[key]))
    assert 0 < out["z_std"].item() <= 1
    # collapsed embeddings (every image the same point): std 0, C = 0, loss = d (here 16)
    z = torch.ones(6, 16)
    c = cross_correlation(z, z)
    assert c.abs().max().item() == 0.0 and barlow_twins_loss(c).item() == pytest.approx(16.0)


def test_two_learning_rates_and_lars_exclusion():
    model = tiny_bt()
    argv = ["--optimizer", "lars"]
    parser = base_parser("barlow_twins", **bt_train.DEFAULTS)
    bt_train.add_arguments(parser)
    args = parse_args(parser, argv)
    assert (args.lr, args.lr_biases, args.weight_decay, args.lambd, args.projector, args.warmup_epochs) == (
        0.2, 0.0048, 1.5e-6, 0.0051, "8192-8192-8192", 10)
    args.projector, args.arch, args.image_size, args.batch_size = "16-16-16", "resnet18", 16, 512
    method, _ = bt_train.build(args, steps_per_epoch=2)
    # the official schedule ends at 0.001 × the peak lr (0.2 × 512/256)
    assert args.min_lr == pytest.approx(0.001 * 0.2 * 2)
    assert method.bias_lr_scale == pytest.approx(0.0048 / 0.2)

    opt = build_optimizer(model.param_groups(), args)
    assert isinstance(opt, LARS)
    weights, biases = opt.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])
    assert len(weights["params"]) + len(biases["params"]) == len(list(model.parameters()))
    assert not weights["lars_exclude"] and weights["weight_decay"] == pytest.approx(1.5e-6)
    assert biases["lars_exclude"] and biases["weight_decay"] == 0
    # the engine sets lr = schedule × lr_scale per group: 0.2 → 0.0048
    assert 0.2 * biases["lr_scale"] == pytest.approx(0.0048)


def test_bad_options_fail_in_one_line():
    parser = base_parser("barlow_twins", **bt_train.DEFAULTS)
    bt_train.add_arguments(parser)
    for extra, message in ((["--projector", "8192-abc"], "--projector"), (["--lambd", "-1"], "--lambd"),
                           (["--loss-scale", "0"], "--loss-scale"), (["--crop-scale", "0.9", "0.1"], "--crop-scale")):
        args = parse_args(parser, extra)
        with pytest.raises(SystemExit, match=message):
            bt_train.build(args, 1)


def test_heatmaps_at_first_middle_and_last_epoch_only(tmp_path, monkeypatch):
    import barlow_twins.model as bt_model

    drawn = []
    monkeypatch.setattr(bt_model, "save_heatmap", lambda c, run_dir, epoch: drawn.append((epoch, c.shape, c.device)))
    model = tiny_bt(epochs=4)
    assert model.on_epoch_end(1, tmp_path) == {} and drawn == []  # nothing to draw before training
    model.train()
    model((two_views(), None), 0)
    assert model.last_c.shape == (16, 16) and not model.last_c.requires_grad
    kept = model.last_c.clone()
    model.eval()  # validation must not replace the training C
    model((two_views(seed=5), None), 0)
    assert torch.equal(model.last_c, kept)
    for epoch in range(1, 5):
        assert model.on_epoch_end(epoch, tmp_path) == {}
    assert drawn == [(e, (16, 16), torch.device("cpu")) for e in (1, 2, 4)]


@pytest.mark.slow
def test_two_epochs_on_shapes_lower_the_loss_without_collapse(tmp_path, data_root):
    # batch 16: C is estimated from the batch, so it needs a few more images than BYOL's 8
    # crops of at least 60 % of the image: at 16 px and 8 steps, two 8 % crops share too little to fit
    argv = ["--projector", "128-128-128", "--optimizer", "adamw", "--lr", "0.016", "--weight-decay", "1e-5",
            "--crop-scale", "0.6", "1"]
    run = check_two_epoch_run(bt_train.main, "barlow_twins", argv, tmp_path, data_root, out_dim=128, batch_size=16)
    assert sorted(p.name for p in run.glob("cross_correlation_*.png")) == [
        "cross_correlation_epoch0001.png", "cross_correlation_epoch0002.png"]
