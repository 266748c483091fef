"""Batched views against torchvision's per-image transforms: the same distributions (crop area and
aspect ratio, jitter ranges, greyscale / solarize / blur rates and σ), the same colour maths for
given parameters (to 1e-5), and views that are a function of the generator alone."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from common.augment import (
    CROP_SCALE,
    MEAN,
    MIN_BLUR_SIGMA,
    RATIO,
    STD,
    LoadImage,
    MultiCrop,
    SSLView,
    TwoViews,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    as_input,
    blur_kernel_size,
    blur_params,
    blur_sigma,
    color_jitter,
    crop_boxes,
    crop_sizes,
    gaussian_blur,
    grayscale,
    jitter_params,
    random_grayscale,
    random_solarize,
    resized_crop,
    solarize,
    working_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=6, h=20, w=24, seed=0):
    return torch.rand(n, 3, h, w, generator=_gen(seed))


def test_crop_sizes_and_working_size():
    assert crop_sizes(224) == (224, 96) and crop_sizes(32) == (32, 16) and crop_sizes(64) == (64, 32)
    assert crop_sizes(48) == (48, 20)  # 0.43 * 48 = 20.6 -> even 20
    assert working_size(32) == 32 and working_size(64) == 64 and working_size(224) == 256
    with pytest.raises(ValueError, match="integer >= 8"):
        crop_sizes(7)


def test_crop_boxes_follow_random_resized_crop_get_params():
    """Area fraction, log aspect ratio and position of 4000 boxes against 4000 draws of
    torchvision's RandomResizedCrop.get_params on the same 40 x 48 image."""
    h, w, n = 40, 48, 4000
    boxes = crop_boxes(n, h, w, CROP_SCALE, RATIO, _gen(1))
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (bw == bw.round()).all() and (bh == bh.round()).all() and (bw >= 1).all()
    torch.manual_seed(1)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.zeros(3, h, w), list(CROP_SCALE), list(RATIO))
                        for _ in range(n)], dtype=torch.float64)  # (top, left, height, width)
    ours = {"area": bw * bh / (h * w), "log_ratio": (bw / bh).log(), "top": boxes[:, 1] / (h - bh + 1),
            "left": boxes[:, 0] / (w - bw + 1)}
    theirs = {"area": ref[:, 3] * ref[:, 2] / (h * w), "log_ratio": (ref[:, 3] / ref[:, 2]).log(),
              "top": ref[:, 0] / (h - ref[:, 2] + 1), "left": ref[:, 1] / (w - ref[:, 3] + 1)}
    for key in ours:
        a, b = ours[key].numpy(), theirs[key].numpy()
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert abs(np.quantile(a, q) - np.quantile(b, q)) < 0.04 + 0.05 * abs(np.quantile(b, q)), (key, q)
    assert ours["area"].min() >= 0.08 - 0.02 and ours["area"].max() <= 1.0
    assert ours["log_ratio"].abs().max() <= math.log(4 / 3) + 0.1  # rounding to whole pixels


def test_crop_boxes_fall_back_to_the_central_crop():
    boxes = crop_boxes(50, 10, 100, (0.9, 1.0), RATIO, _gen(0))  # a 10:1 image: no try fits
    top, left, h, w = v2.RandomResizedCrop.get_params(torch.zeros(3, 10, 100), [0.9, 1.0], list(RATIO))
    assert (top, left, h, w) == (0, 43, 10, 13)  # torchvision: the 4:3 centre crop
    assert torch.equal(boxes, torch.tensor([[43.0, 0.0, 56.0, 10.0]]).expand(50, 4).double())


def test_resized_crop_of_the_whole_image_is_the_image_and_boxes_select_regions():
    x = _images()
    whole = torch.tensor([[0.0, 0.0, 24.0, 20.0]]).expand(len(x), 4)
    v = resized_crop(x[:, :, :, :], whole, 20)[..., :20]
    assert v.shape == (6, 3, 20, 20)
    square = x[:, :, :, :20].contiguous()
    same = resized_crop(square, torch.tensor([[0.0, 0.0, 20.0, 20.0]]).expand(6, 4), 20)
    torch.testing.assert_close(same, square, atol=1e-5, rtol=0)
    # an integer box of the output size copies that region exactly
    part = resized_crop(square, torch.tensor([[4.0, 2.0, 12.0, 10.0]]).expand(6, 4), 8)
    torch.testing.assert_close(part, square[:, :, 2:10, 4:12], atol=1e-5, rtol=0)
    # a flat image stays flat at any scale (the antialiased resampling is a convex average)
    flat = torch.full((2, 3, 32, 32), 0.3)
    out = resized_crop(flat, crop_boxes(2, 32, 32, (0.08, 1), RATIO, _gen(3)), 16)
    torch.testing.assert_close(out, torch.full_like(out, 0.3))


@pytest.mark.parametrize("ours,theirs,lo,hi", [
    (adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
    (adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
    (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    (adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_ops_equal_torchvision_per_sample(ours, theirs, lo, hi):
    x = _images(8)
    factors = torch.linspace(lo, hi, 8, dtype=torch.float64)
    out = ours(x.clone(), factors.float())
    ref = torch.stack([theirs(img, float(f)) for img, f in zip(x, factors)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_grayscale_solarize_and_blur_equal_torchvision():
    x = _images(5, 16, 16)
    torch.testing.assert_close(grayscale(x).expand_as(x), torch.stack([TF.rgb_to_grayscale(i, 3) for i in x]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(solarize(x), torch.stack([TF.solarize(i, 128 / 255) for i in x]), atol=0, rtol=0)
    sigma = torch.tensor([0.2, 0.5, 1.0, 1.5, 2.0])
    ref = torch.stack([TF.gaussian_blur(i, [5, 5], [float(s), float(s)]) for i, s in zip(x, sigma)])
    torch.testing.assert_close(gaussian_blur(x, 5, sigma), ref, atol=1e-5, rtol=0)


def test_jitter_parameters_have_the_papers_ranges_rates_and_random_order():
    n = 20000
    apply, order, (b, c, s, h) = jitter_params(n, 0.4, 0.4, 0.2, 0.1, 0.8, _gen(2))
    assert abs(apply.double().mean() - 0.8) < 0.015
    for f, lo, hi in ((b, 0.6, 1.4), (c, 0.6, 1.4), (s, 0.8, 1.2), (h, -0.1, 0.1)):
        assert lo <= f.min() and f.max() <= hi and abs(f.mean() - (lo + hi) / 2) < 0.01 * (hi - lo) + 1e-3
        assert f.std() == pytest.approx((hi - lo) / math.sqrt(12), rel=0.03)  # uniform
    assert (order.sort(1).values == torch.arange(4)).all()  # a permutation per sample
    first = torch.bincount(order[:, 0], minlength=4).double() / n
    assert (first - 0.25).abs().max() < 0.015  # each op equally likely to come first
    assert len({tuple(r) for r in order[:200].tolist()}) == 24  # all 24 orders occur
    _, _, (b0, *_rest) = jitter_params(10, 1.5, 0, 0, 0, 1.0, _gen(2))
    assert b0.min() >= 0  # torchvision clips the lower bound at 0


def test_greyscale_solarize_and_blur_rates_and_sigma_range():
    n = 10000
    x = torch.rand(n, 3, 2, 2, generator=_gen(5)) * 0.4 + 0.55  # every pixel above the solarize threshold
    grey = random_grayscale(x, 0.2, _gen(6))
    is_grey = (grey[:, 0] == grey[:, 1]).flatten(1).all(1) & (grey[:, 1] == grey[:, 2]).flatten(1).all(1)
    assert abs(is_grey.double().mean() - 0.2) < 0.015
    solar = random_solarize(x, 0.2, _gen(7))
    assert abs((solar < 0.5).flatten(1).all(1).double().mean() - 0.2) < 0.015
    apply, sigma = blur_params(n, 0.5, (0.1, 2.0), _gen(8))
    assert abs(apply.double().mean() - 0.5) < 0.015 and 0.1 <= sigma.min() and sigma.max() <= 2.0
    assert sigma.mean() == pytest.approx(1.05, abs=0.02)


def test_color_jitter_changes_only_the_applied_samples():
    x = _images(400, 4, 4)
    out = color_jitter(x, 0.4, 0.4, 0.2, 0.1, p=0.8, g=_gen(9))
    apply, *_ = jitter_params(400, 0.4, 0.4, 0.2, 0.1, 0.8, _gen(9))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert torch.equal(changed, apply)


def test_blur_is_scaled_to_the_crop_and_skipped_where_it_cannot_show():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3
    lo, hi = blur_sigma(224)
    assert (lo, hi) == pytest.approx((0.1, 2.0))
    assert SSLView(32, blur_p=1.0).blur_p == 0.0 and blur_sigma(32)[1] < MIN_BLUR_SIGMA
    assert SSLView(96, blur_p=1.0).blur_p == 1.0


def test_views_are_a_function_of_the_generator_and_differ_per_sample():
    images = (torch.rand(1, 3, 32, 32, generator=_gen(0)) * 255).to(torch.uint8).expand(8, 3, 32, 32)
    views = TwoViews(32)
    a, b = views(images, _gen(11)), views(images, _gen(11))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    c = views(images, _gen(12))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (8, 3, 32, 32) and a[0].dtype == torch.float32
    flat = a[0].flatten(1)
    assert len({tuple(r) for r in flat.round(decimals=4).tolist()}) == 8  # one image, 8 different views


def test_multicrop_shapes_and_byol_asymmetry():
    images = (torch.rand(4, 3, 64, 64, generator=_gen(1)) * 255).to(torch.uint8)
    crops = MultiCrop(64, n_local=3)(images, _gen(0))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 64, 64)] * 2 + [(4, 3, 32, 32)] * 3
    m = MultiCrop(224)
    assert (m.global1.blur_p, m.global1.solarize_p, m.global2.blur_p, m.global2.solarize_p) == (1.0, 0, 0.1, 0.2)
    assert m.local.blur_p == 0.5 and m.local.copies == 8 and m.load.size == 256
    assert MultiCrop(32, n_local=2, local_size=32)(images[:, :, :32, :32], _gen(0))[2].shape[-1] == 32
    t = TwoViews(224)
    assert (t.view1.blur_p, t.view1.solarize_p, t.view2.blur_p, t.view2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert (t.view1.jitter, t.view1.jitter_p, t.view1.gray_p) == ((0.4, 0.4, 0.2, 0.1), 0.8, 0.2)


def test_load_image_resizes_and_centre_crops_and_as_input_normalises():
    image = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    x = LoadImage(20)(image)
    assert x.shape == (3, 20, 20) and x.dtype == torch.uint8
    same = LoadImage(40)(image.crop((10, 0, 50, 40)))
    assert torch.equal(same, torch.from_numpy(np.asarray(image)[:, 10:50].transpose(2, 0, 1).copy()))
    grey = LoadImage(8)(Image.new("L", (8, 8), 128))
    assert grey.shape == (3, 8, 8)
    out = as_input(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    torch.testing.assert_close(out[0, :, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
