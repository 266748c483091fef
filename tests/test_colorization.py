"""Colorization: Lab against hand-computed references, the 313 bins, soft-encoding, class
rebalancing, annealed-mean decoding, the RGB-input encoder, and a short run on `shapes`."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from colorization.lab import (
    LightnessInput,
    ab_bins,
    annealed_mean,
    gamut_grid,
    is_grayscale,
    lab_to_rgb,
    nearest_bin,
    rebalance_weights,
    rgb_to_lab,
    rgb_to_lightness,
    smooth_prior,
    soft_encode,
)
from colorization.model import Colorization, ab_auc, lightness_backbone, spatial_features
from common.augment import MEAN, STD
from common.logging import read_metrics


def column(*colours) -> torch.Tensor:
    """A 1×3×N×1 image from RGB triples."""
    return torch.tensor(colours, dtype=torch.float64).T.reshape(1, 3, len(colours), 1)


def hand_lab(r, g, b):
    """CIE Lab of an sRGB colour written out step by step (D65, sRGB curve) in plain Python."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    x = (0.412453 * lin[0] + 0.357580 * lin[1] + 0.180423 * lin[2]) / 0.95047
    y = 0.212671 * lin[0] + 0.715160 * lin[1] + 0.072169 * lin[2]
    z = (0.019334 * lin[0] + 0.119193 * lin[1] + 0.950227 * lin[2]) / 1.08883

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


# --- Lab ----------------------------------------------------------------------------------------

def test_lab_of_reference_colours():
    # published CIE Lab (D65) of the sRGB primaries, white, black and mid-grey
    known = {(1, 0, 0): (53.24, 80.09, 67.20), (0, 1, 0): (87.73, -86.18, 83.18), (0, 0, 1): (32.30, 79.19, -107.86),
             (1, 1, 1): (100.0, 0.0, 0.0), (0, 0, 0): (0.0, 0.0, 0.0), (0.5, 0.5, 0.5): (53.39, 0.0, 0.0)}
    lab = rgb_to_lab(column(*known)).squeeze(-1).squeeze(0).T
    for (rgb, expected), got in zip(known.items(), lab):
        assert got.tolist() == pytest.approx(expected, abs=0.01), rgb
        assert got.tolist() == pytest.approx(hand_lab(*rgb), abs=1e-9), rgb
    # the dark end uses the linear toe of both curves (sRGB below 0.04045, Lab below (6/29)^3)
    dark = (0.01, 0.02, 0.005)
    assert rgb_to_lab(column(dark)).flatten().tolist() == pytest.approx(hand_lab(*dark), abs=1e-9)


def test_lab_round_trip_on_random_colours():
    rgb = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(rgb)
    assert lab.shape == rgb.shape and 0 <= lab[:, 0].min() and lab[:, 0].max() <= 100
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-4  # float32
    assert (lab_to_rgb(rgb_to_lab(rgb.double())) - rgb.double()).abs().max() < 1e-10
    assert torch.allclose(rgb_to_lightness(rgb), lab[:, :1], atol=1e-5)
    assert rgb_to_lab(rgb[0]).shape == (3, 16, 16)  # unbatched C×H×W works too
    with pytest.raises(ValueError, match="3 colour channels"):
        rgb_to_lab(torch.rand(2, 4, 8, 8))


def test_out_of_gamut_lab_is_clipped_to_displayable_rgb():
    rgb = lab_to_rgb(torch.tensor([50.0, 110.0, -110.0]).view(1, 3, 1, 1))
    assert 0 <= rgb.min() and rgb.max() <= 1
    assert lab_to_rgb(torch.tensor([50.0, 110.0, -110.0]).view(1, 3, 1, 1), clip=False).max() > 1


# --- the 313 bins ---------------------------------------------------------------------------------

# richzhang/colorization resources/pts_in_hull.npy, the 313 published centres as (a, b) rows, in the
# file's order (transcribed; its 20 runs of a are listed with their first and last b in lab.py).
PUBLISHED_RUNS = [(-90, 50, 90), (-80, 20, 90), (-70, 0, 90), (-60, -20, 90), (-50, -30, 100), (-40, -40, 100),
                  (-30, -50, 100), (-20, -50, 100), (-10, -60, 100), (0, -70, 100), (10, -80, 90), (20, -80, 90),
                  (30, -90, 90), (40, -100, 90), (50, -100, 80), (60, -110, 80), (70, -110, 80), (80, -110, 70),
                  (90, -110, 70), (100, -90, 0)]


def test_the_published_313_bins_in_the_published_order():
    bins = ab_bins()
    published = [[float(a), float(b)] for a, lo, hi in PUBLISHED_RUNS for b in range(lo, hi + 1, 10)]
    assert bins.dtype == torch.float32 and bins.shape == (313, 2) and len(published) == 313
    for i, (ours, theirs) in enumerate(zip(bins.tolist(), published)):  # element by element
        assert ours == theirs, f"bin {i}: {ours} != {theirs}"
    assert published == sorted(published)  # sorted by a, then by b
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100 and bins[:, 1].min() == -110 and bins[:, 1].max() == 100
    assert [0.0, 0.0] in bins.tolist()  # grey
    # the ab of pure sRGB colours are within half a grid step of a bin centre
    primaries = rgb_to_lab(column((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)))
    ab = primaries[:, 1:].squeeze(-1).squeeze(0).T.float()
    assert (torch.cdist(ab, bins).min(1).values <= 5 * math.sqrt(2)).all()


def test_a_computed_gamut_misses_three_published_bins():
    computed = gamut_grid(14.0)  # the sRGB gamut test this project used before the published set
    assert len(computed) == 313
    ours, published = set(map(tuple, computed.tolist())), set(map(tuple, ab_bins().tolist()))
    assert published - ours == {(40.0, 90.0), (100.0, -90.0), (100.0, 0.0)}
    assert ours - published == {(-60.0, 100.0), (80.0, 80.0), (110.0, -60.0)}
    first_difference = next(i for i, (x, y) in enumerate(zip(computed.tolist(), ab_bins().tolist())) if x != y)
    assert first_difference == 35  # every published per-bin array would be mis-indexed from here on
    assert len(gamut_grid(1e-6)) < 313 < len(gamut_grid(20.0))


# --- soft-encoding, prior, weights ----------------------------------------------------------------

def test_soft_encoding_sums_to_one_with_most_mass_on_the_nearest_bin():
    bins = ab_bins()
    ab = (torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5) * 120
    z = soft_encode(ab, bins, sigma=5.0, neighbours=5)
    assert z.shape == (2, 313, 4, 4)
    assert torch.allclose(z.sum(1), torch.ones(2, 4, 4), atol=1e-6)
    assert ((z > 0).sum(1) == 5).all()
    assert torch.equal(z.argmax(1), nearest_bin(ab, bins))
    # a colour exactly on a bin centre: weights exp(-d²/2σ²) over itself (d 0) and its four
    # grid neighbours (d 10), so the centre keeps 1 / (1 + 4 e^-2)
    on_centre = soft_encode(torch.tensor([20.0, -30.0]).view(1, 2, 1, 1), bins).flatten()
    centre = bins.tolist().index([20.0, -30.0])
    assert on_centre[centre].item() == pytest.approx(1 / (1 + 4 * math.exp(-2)), abs=1e-5)
    assert soft_encode(ab, bins, neighbours=10).gt(0).sum(1).eq(10).all()  # the released code's 10


def test_rebalancing_weights_have_expectation_one_and_favour_rare_colours():
    bins = ab_bins()
    g = torch.Generator().manual_seed(2)
    p = torch.rand(313, generator=g) ** 8  # a peaked prior
    p = p / p.sum()
    smoothed = smooth_prior(p, bins, sigma=5.0)
    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert smoothed.max() < p.max()  # smoothing spreads the peaks
    w = rebalance_weights(smoothed, lam=0.5)
    assert (smoothed * w).sum().item() == pytest.approx(1.0, abs=1e-5)
    order = smoothed.argsort()
    assert w[order[0]] > w[order[-1]]  # the rarest colour weighs the most
    # hand check of Eq. 4 on three classes: w ∝ 1 / (0.5 p + 0.5 / 3)
    p3 = torch.tensor([0.7, 0.2, 0.1])
    raw = 1 / (0.5 * p3 + 0.5 / 3)
    assert torch.allclose(rebalance_weights(p3, 0.5), raw / (p3 * raw).sum())
    assert torch.allclose(rebalance_weights(p3, 1.0), torch.ones(3))  # λ = 1: no rebalancing


def test_grayscale_images_are_detected():
    ab = torch.zeros(3, 2, 4, 4)
    ab[1, 0, 2, 2] = 5.0  # still grey within the tolerance
    ab[2, 1, 0, 0] = -6.0
    assert is_grayscale(ab).tolist() == [True, True, False]


# --- decoding -------------------------------------------------------------------------------------

def test_annealed_mean_interpolates_between_mean_and_mode():
    bins = ab_bins()
    logits = torch.randn(2, 313, 3, 3, generator=torch.Generator().manual_seed(3)) * 2
    top = logits.argmax(1, keepdim=True)
    logits.scatter_add_(1, top, torch.full(top.shape, 0.1))  # a clear mode: at least 0.1 above the rest
    mode = bins[top.squeeze(1)].permute(0, 3, 1, 2)
    assert torch.allclose(annealed_mean(logits, bins, T=1e-3), mode, atol=1e-3)
    mean = torch.einsum("bqhw,qc->bchw", logits.softmax(1), bins)
    assert torch.allclose(annealed_mean(logits, bins, T=1.0), mean, atol=1e-4)
    # lower T moves the estimate towards the mode
    d = [(annealed_mean(logits, bins, T) - mode).norm() for T in (1.0, 0.38, 0.1)]
    assert d[0] > d[1] > d[2]
    with pytest.raises(ValueError):
        annealed_mean(logits, bins, T=0.0)


def test_ab_auc_by_hand():
    true = torch.zeros(1, 2, 1, 2)
    pred = torch.tensor([[[[0.0, 30.0]], [[0.0, 40.0]]]])  # errors 0 and 50
    # error 0 is within all 151 thresholds, error 50 within 101 of them (50..150)
    assert ab_auc(pred, true).item() == pytest.approx(100 * (151 + 101) / (2 * 151), abs=1e-4)


# --- the network ----------------------------------------------------------------------------------

def colour_args(**over):
    args = dict(arch="resnet18", image_size=16, patch_size=4, drop_path=0.0, soft_sigma=5.0, soft_neighbours=5,
                rebalance_lambda=0.5, prior_sigma=5.0, temperature=0.38, decoder_dim=16)
    args.update(over)
    return argparse.Namespace(**args)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny"])
def test_encoder_takes_rgb_and_predicts_bins_at_quarter_resolution(arch):
    torch.manual_seed(0)
    prior = torch.full((313,), 1 / 313)
    model = Colorization(colour_args(arch=arch), prior).eval()
    rgb = torch.rand(2, 3, 16, 16)
    x = (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert model.logits(x).shape == (2, 313, 4, 4)
    # the first layer turns RGB into (L - 50) / 100: RGB and the L input give the same features
    L = (rgb_to_lab(rgb)[:, :1] - 50) / 100
    with torch.no_grad():
        assert torch.allclose(model.eval_backbone(x), model.eval_backbone(L), atol=1e-4)
        assert torch.allclose(spatial_features(model.encoder, x), spatial_features(model.encoder, L), atol=1e-4)
    assert model.colorize(x).shape == (2, 3, 16, 16)
    # the eval backbone's state is exactly a 1-channel build_backbone's
    from common.backbones import build_backbone

    kwargs = {k: v for k, v in model.eval_backbone.kwargs.items() if k != "input_mode"}
    assert model.eval_backbone.kwargs["input_mode"] == "lab_l" and kwargs["in_chans"] == 1
    plain = build_backbone(**kwargs).eval()
    plain.load_state_dict(model.eval_backbone.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(L), model.eval_backbone(x), atol=1e-4)


def test_lightness_input_passes_l_through():
    L = torch.rand(1, 1, 4, 4)
    assert LightnessInput()(L) is L
    encoder = lightness_backbone("resnet18", 16)
    assert encoder.conv1.in_channels == 1


def test_grayscale_images_carry_no_loss():
    torch.manual_seed(0)
    model = Colorization(colour_args(), torch.full((313,), 1 / 313))
    gray = torch.rand(2, 1, 16, 16).expand(2, 3, 16, 16)
    x = (gray - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    out = model((x, torch.zeros(2)), 0)
    assert out["loss"].item() == 0.0 and out["colour_images"].item() == 0.0


# --- end to end -----------------------------------------------------------------------------------

def test_two_epochs_on_shapes_lower_the_loss(tmp_path, data_root):
    from colorization.train import main

    out = tmp_path / "run"
    # the same 32 images in both epochs, so the epoch means compare like with like
    main(["--data", "shapes", "--data-root", str(data_root), "--out", str(out), "--max-images", "32",
          "--image-size", "16", "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "0", "--lr", "1.0",
          "--workers", "0", "--log-every", "1", "--eval-every", "0", "--device", "cpu", "--decoder-dim", "32",
          "--prior-images", "32"])
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    epochs = [r for r in rows if "val_loss" in r]
    assert len(steps) == 8 and len(epochs) == 2
    first, second = (sum(r["loss"] for r in steps[i:i + 4]) / 4 for i in (0, 4))
    assert second < first, (first, second)
    assert 0 < epochs[1]["val_ab_auc"] <= 100 and epochs[1]["val_psnr"] > 0
    assert 0 < epochs[1]["val_ab_auc_gray"] <= 100  # the grey baseline the AuC is read against
    assert (out / "colorizations.png").stat().st_size > 0
    config = json.loads((out / "config.json").read_text())["args"]
    assert config["prior_images_used"] + config["prior_gray_images"] == 32


def test_the_target_is_the_pixel_at_stride_4_and_the_grey_test_uses_it():
    from colorization.data import target_ab

    lab = torch.zeros(1, 3, 8, 8)
    lab[:, 1, :, :2] = 60.0    # a red-ish left edge two pixels wide ...
    lab[:, 1, :, 2:] = -40.0   # ... against a green-ish rest
    ab = target_ab(lab)
    # the reference's ab[:, :, ::4, ::4]: pixels (0, 0), (0, 4), (4, 0), (4, 4) of each channel
    assert ab.shape == (1, 2, 2, 2) and ab[0, 0].tolist() == [[60.0, -40.0], [60.0, -40.0]]
    assert 10.0 not in ab.flatten().tolist()  # a 4×4 average would give (2·60 + 2·(-40)) / 4 = 10: neither colour
    # colour only off the sampled pixels: grey for the loss, as the reference tests the target
    torch.manual_seed(0)
    model = Colorization(colour_args(), torch.full((313,), 1 / 313))
    rgb = torch.full((1, 3, 16, 16), 0.5)
    rgb[:, 0, 1::4, 1::4] = 1.0  # red dots, none at a stride-4 sample
    x = (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    out = model((x, torch.zeros(1)), 0)
    assert not is_grayscale(rgb_to_lab(rgb)[:, 1:]).item() and out["colour_images"].item() == 0.0


def test_the_papers_adam_solver_has_coupled_l2_decay_and_beta2():
    from common.optim import build_optimizer

    w = torch.nn.Parameter(torch.tensor([1.0]))
    args = argparse.Namespace(optimizer="adam", lr=0.1, weight_decay=1e-3, adam_beta2=0.99, momentum=0.9,
                              lars_eta=0.001)
    opt = build_optimizer([{"params": [w]}], args)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["weight_decay"] == 1e-3
    w.grad = torch.zeros(1)  # no loss gradient: only the L2 term 1e-3·w drives Adam, a full lr-sized step
    opt.step()
    assert w.item() == pytest.approx(1.0 - 0.1, abs=1e-6)  # AdamW would move it by lr·wd = 1e-4 only
    assert isinstance(build_optimizer([{"params": [w]}], argparse.Namespace(**{**vars(args), "optimizer": "adamw"})),
                      torch.optim.AdamW)
