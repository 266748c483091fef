"""BYOL: the loss on explicit vectors, symmetrisation, no gradient into the target, the EMA and its
τ schedule, LARS against a hand-computed update, the STL-10 recipe, and a 2-epoch run on shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from byol import train as byol_train
from byol.model import BYOL, MLP, byol_loss, normalised_std, regression_loss, tau_schedule
from common.optim import LARS, build_optimizer
from common.options import parse_cli


class TinyBackbone(nn.Module):
    """A stand-in for the ResNet: conv → BN → ReLU → global pool, with the `.embed_dim` of the real ones."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = width

    def forward(self, x):
        return self.net(x)


def tiny_byol(tau=0.99, epochs=2, steps_per_epoch=3, seed=0):
    torch.manual_seed(seed)
    return BYOL(TinyBackbone(), hidden_dim=16, out_dim=8, tau=tau, epochs=epochs, steps_per_epoch=steps_per_epoch)


def two_views(n=6, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g))


# --- the loss by hand ---------------------------------------------------------------------------

def test_regression_loss_is_two_minus_two_cosine_on_explicit_vectors():
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.5, 0.0]])
    z = torch.tensor([[0.0, 2.0], [2.0, 0.0], [6.0, 8.0], [-1.0, 0.0]])
    # per row: orthogonal → 2; 45° → 2 − √2; parallel (any scale) → 0; opposite → 4
    expected = (2 + (2 - math.sqrt(2)) + 0 + 4) / 4
    assert regression_loss(q, z).item() == pytest.approx(expected, abs=1e-6)


def test_symmetrised_loss_sums_both_directions():
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    z1, z2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]])
    # q1 vs z2: orthogonal → 2;  q2 vs z1: 45° → 2 − √2
    assert byol_loss(q1, q2, z1, z2).item() == pytest.approx(4 - math.sqrt(2), abs=1e-6)


def test_swapping_the_views_gives_the_same_loss():
    model = tiny_byol()
    v1, v2 = two_views()
    a = model(((v1, v2), None), 0)["loss"]
    b = model(((v2, v1), None), 0)["loss"]
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert 0 < a.item() < 8


def test_mlp_is_linear_bn_relu_linear():
    mlp = MLP(10, 32, 4)
    assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp(torch.randn(5, 10)).shape == (5, 4)
    paper = MLP(2048)
    assert (paper[0].out_features, paper[3].out_features) == (4096, 256)


def test_normalised_std_is_about_one_over_sqrt_d_when_spread_and_zero_when_collapsed():
    torch.manual_seed(0)
    spread = torch.randn(4096, 64)
    assert normalised_std(spread).item() == pytest.approx(1 / math.sqrt(64), rel=0.02)
    collapsed = torch.randn(1, 64).expand(32, 64)
    assert normalised_std(collapsed).item() == pytest.approx(0.0, abs=1e-6)


# --- the target ---------------------------------------------------------------------------------

def test_target_gets_no_gradient_even_if_it_asks_for_one():
    model = tiny_byol()
    target_params = list(model.target_parameters())
    assert target_params and not any(p.requires_grad for p in target_params)
    for p in target_params:  # even a target left trainable by mistake must stay out of the graph
        p.requires_grad_(True)
    loss = model((two_views(), None), 0)["loss"]
    loss.backward()
    assert all(p.grad is None for p in target_params)
    online = [model.backbone.net[0].weight, model.projector[0].weight, model.predictor[3].weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in online)


def test_the_optimiser_sees_only_online_parameters():
    model = tiny_byol()
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert grouped == {id(p) for n, p in model.named_parameters() if not n.startswith("target_")}


def test_target_starts_as_a_copy_and_follows_the_ema_with_the_scheduled_tau():
    model = tiny_byol(tau=0.9, epochs=2, steps_per_epoch=2)
    for t, o in zip(model.target_parameters(), list(model.backbone.parameters()) + list(model.projector.parameters())):
        assert torch.equal(t, o)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = model.target_backbone.net[0].weight.clone()
    online = model.backbone.net[0].weight.clone()
    model.after_step(1)
    tau1 = 1 - (1 - 0.9) * (math.cos(math.pi * 1 / 4) + 1) / 2
    assert model.tau_at(1) == pytest.approx(tau1)
    torch.testing.assert_close(model.target_backbone.net[0].weight, tau1 * before + (1 - tau1) * online)


def test_tau_schedule_is_a_cosine_from_tau_base_to_one():
    taus = tau_schedule(0.996, epochs=2, steps_per_epoch=2)  # K = 4 steps
    # τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2
    expected = [0.996, 1 - 0.004 * (math.sqrt(0.5) + 1) / 2, 0.998, 1 - 0.004 * (1 - math.sqrt(0.5)) / 2]
    np.testing.assert_allclose(taus, expected, rtol=0, atol=1e-12)
    model = tiny_byol(tau=0.996, epochs=2, steps_per_epoch=2)
    assert [model.tau_at(k) for k in range(4)] == pytest.approx(expected, abs=1e-12)
    assert model.tau_at(10) == pytest.approx(expected[-1])  # past the schedule (--max-steps): the last value


# --- LARS -----------------------------------------------------------------------------------------

def test_lars_step_matches_a_hand_computed_update():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))  # ‖w‖ = 5
    b = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    z = nn.Parameter(torch.zeros(1, 2, dtype=torch.float64))  # ‖w‖ = 0: trust ratio 1
    opt = LARS([{"params": [w, z], "weight_decay": 0.1},
                {"params": [b], "weight_decay": 0.1, "lars_exclude": True}], lr=0.5, momentum=0.9, eta=0.001)
    gw, gb, gz = [0.6, 0.8], [0.5, 0.5], [1.0, 0.0]
    w.grad = torch.tensor([gw], dtype=torch.float64)
    b.grad = torch.tensor(gb, dtype=torch.float64)
    z.grad = torch.tensor([gz], dtype=torch.float64)
    opt.step()
    # w: g + wd·w = [0.9, 1.2], ‖·‖ = 1.5, trust ratio η‖w‖/‖·‖ = 0.001·5/1.5 = 1/300;
    #    w ← w − lr·(1/300)·[0.9, 1.2] = [3 − 0.0015, 4 − 0.002]
    np.testing.assert_allclose(w.detach().numpy(), [[2.9985, 3.998]], atol=1e-12)
    # b is excluded: no weight decay, no trust ratio: b ← b − lr·g
    np.testing.assert_allclose(b.detach().numpy(), [0.75, -2.25], atol=1e-12)
    # z = 0: the ratio falls back to 1 and weight decay adds nothing: z ← −lr·g
    np.testing.assert_allclose(z.detach().numpy(), [[-0.5, 0.0]], atol=1e-12)

    # second step, same gradient: momentum buffer μ ← 0.9·μ + ratio·(g + wd·w)
    opt.step()
    w1 = np.array([2.9985, 3.998])
    d1 = np.array([0.9, 1.2]) / 300
    d2 = np.array(gw) + 0.1 * w1
    mu = 0.9 * d1 + 0.001 * np.linalg.norm(w1) / np.linalg.norm(d2) * d2
    np.testing.assert_allclose(w.detach().numpy()[0], w1 - 0.5 * mu, atol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), [0.75 - 0.5 * 1.9 * 0.5, -2.25 - 0.5 * 1.9 * 0.5], atol=1e-12)


def test_byol_biases_and_norms_escape_lars_and_weight_decay():
    model = tiny_byol()
    args = byol_args(["--lr", "0.2"])
    opt = build_optimizer(model.param_groups(), args)
    assert isinstance(opt, LARS) and {g["eta"] for g in opt.param_groups} == {0.001}  # the papers' η
    eta = byol_args(["--lars-eta", "0.02"])
    assert {g["eta"] for g in build_optimizer(model.param_groups(), eta).param_groups} == {0.02}
    by_shape = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            continue
        group = by_shape[id(p)]
        if p.ndim == 1:
            assert group["lars_exclude"] and group["weight_decay"] == 0, name
        else:
            assert not group["lars_exclude"] and group["weight_decay"] == pytest.approx(1.5e-6), name


# --- options ----------------------------------------------------------------------------------------

def byol_args(argv):
    return parse_cli("byol", byol_train.add_arguments, byol_train.DEFAULTS, argv)


def test_paper_defaults_and_the_stl10_sgd_recipe():
    paper = byol_args([])
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.warmup_epochs, paper.tau) == (
        "lars", 0.2, 1.5e-6, 10, 0.996)
    assert (paper.hidden_dim, paper.out_dim) == (4096, 256)

    argv = ["--recipe", "stl10-sgd"]
    stl10 = byol_args(argv)
    assert (stl10.data, stl10.arch, stl10.optimizer, stl10.momentum, stl10.weight_decay) == (
        "stl10", "resnet18", "sgd", 0.9, 4e-4)
    # the engine's lr is per 256 images: the peak lr at the recipe's batch is PyTorch-BYOL's 0.03, constant
    assert stl10.lr * stl10.batch_size / 256 == pytest.approx(0.03)
    assert stl10.min_lr == pytest.approx(0.03) and stl10.warmup_epochs == 0

    # explicit options win over the recipe, wherever they stand on the command line
    for argv in (["--weight-decay", "1e-4", "--recipe", "stl10-sgd"], ["--recipe=stl10-sgd", "--weight-decay", "1e-4"]):
        mixed = byol_args(argv)
        assert (mixed.weight_decay, mixed.optimizer, mixed.lr) == (1e-4, "sgd", 0.12)


def test_crop_scale_reaches_both_views_and_a_bad_range_fails_in_one_line():
    from byol.data import BYOLViews

    def crop_scales(argv):
        views = BYOLViews(byol_args(argv))
        return [v.scale for v in (views.view1, views.view2)]

    assert crop_scales([]) == [(0.08, 1.0)] * 2  # the paper's
    assert crop_scales(["--crop-scale", "0.3", "1"]) == [(0.3, 1.0)] * 2
    for bad in (["0.5", "0.2"], ["0", "1"], ["0.2", "1.5"]):
        with pytest.raises(SystemExit, match="--crop-scale .* must satisfy 0 < MIN <= MAX <= 1"):
            crop_scales(["--crop-scale", *bad])


def test_recipe_is_documented_in_help_and_unknown_recipes_fail_in_one_line(capsys):
    help_text = byol_train.build_parser().format_help()
    assert "stl10-sgd" in help_text and "sthalles/PyTorch-BYOL" in help_text
    with pytest.raises(SystemExit):
        byol_args(["--recipe", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# --- end to end (shared with test_barlow_twins.py) -----------------------------------------------

E2E = ["--data", "shapes", "--arch", "resnet18", "--image-size", "16", "--epochs", "2", "--warmup-epochs", "0",
       "--workers", "0", "--eval-every", "0", "--log-every", "1", "--device", "cpu", "--resume", "never"]


def check_two_epoch_run(main, method: str, argv: list[str], out, data_root, out_dim: int, batch_size: int):
    """Two epochs of 4 steps through the real train.py entry: the loss falls, the embeddings do
    not collapse (their normalised std stays near 1/√d), the curves are drawn, and the checkpoint
    gives eval a backbone that differs from its random initialisation (snapshots/epoch0000.pt)."""
    from common.checkpoint import load_backbone, load_checkpoint
    from common.logging import read_metrics

    summary = main([*E2E, "--max-images", str(4 * batch_size), "--batch-size", str(batch_size),
                    "--data-root", str(data_root), "--out", str(out), *argv])
    assert summary["reason"] == "end" and summary["step"] == 8
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses
    assert rows[-1]["z_std"] > 0.5 / math.sqrt(out_dim), rows[-1]  # collapse would drive it to 0
    assert (out / "loss.png").exists() and (out / "diagnostics.png").exists()
    assert load_checkpoint(out / "checkpoint.pt", method=method)["step"] == 8
    trained, _ = load_backbone(out / "checkpoint.pt")
    init, _ = load_backbone(out / "snapshots" / "epoch0000.pt")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert trained(x).shape == (4, 512) and not torch.allclose(trained(x), init(x))
    return out


@pytest.mark.slow
def test_two_epochs_on_shapes_lower_the_loss_without_collapse(tmp_path, data_root):
    argv = ["--hidden-dim", "128", "--out-dim", "64", "--tau", "0.99", "--optimizer", "sgd", "--lr", "1.6",
            "--weight-decay", "1e-5"]
    check_two_epoch_run(byol_train.main, "byol", argv, tmp_path, data_root, out_dim=64, batch_size=8)
