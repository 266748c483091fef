"""Views: shapes, normalisation, determinism under torch's RNG, and the papers' probabilities."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from common.augment import (
    MEAN,
    MIN_BLUR_SIGMA,
    STD,
    GaussianBlur,
    MultiCrop,
    ToNormalizedTensor,
    TwoViews,
    blur_kernel_size,
    blur_sigma,
    byol_view,
    crop_sizes,
    eval_transform,
)


def _image(h=40, w=48, seed=0):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def _find(compose, cls):
    """The ops of type `cls` in a view, looking inside RandomApply."""
    found = []
    for t in compose.transforms:
        inner = t.transforms if isinstance(t, v2.RandomApply) else [t]
        found += [(t, op) for op in inner if isinstance(op, cls)]
    return found


def _blur_p(compose):
    found = _find(compose, GaussianBlur)
    assert len(found) <= 1
    return found[0][0].p if found else 0.0


def _solarize_p(compose):
    found = _find(compose, v2.RandomSolarize)
    assert len(found) <= 1
    if not found:
        return 0.0
    assert found[0][1].threshold == 128  # applied to the 8-bit image
    return found[0][1].p


def test_crop_sizes_table_and_rule():
    assert crop_sizes(224) == (224, 96)
    assert crop_sizes(96) == (96, 48)
    assert crop_sizes(64) == (64, 32)
    assert crop_sizes(32) == (32, 16)
    assert crop_sizes(48) == (48, 20)  # 0.43 * 48 = 20.6 -> even 20
    assert crop_sizes(128) == (128, 56)  # 55.0 -> even 56
    assert crop_sizes(10) == (10, 8)  # never below 8
    for bad in (4, 32.0, "32", True):
        with pytest.raises(ValueError, match="image size"):
            crop_sizes(bad)


@pytest.mark.parametrize("size", [32, 64])
def test_eval_transform_shape_and_normalisation(size):
    # A uniform colour stays uniform through resize + crop, so every pixel is (v/255 - mean)/std.
    rgb = (200, 30, 124)
    out = eval_transform(size)(Image.new("RGB", (70, 50), rgb))
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    expected = (torch.tensor(rgb) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, size, size), atol=1e-5, rtol=0)


def test_eval_transform_upsizes_small_images_and_keeps_the_margin_rule():
    out = eval_transform(32)(_image(10, 10))
    assert out.shape == (3, 32, 32)
    # Below 96 px the image is resized straight to the crop, so a 32 px image loses no border...
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 0] = 255
    assert eval_transform(32)(Image.fromarray(img))[0, :, 0].min() > 2.0
    # ... while from 96 px up the 256/224 margin (resize to 110, crop 96) cuts it off.
    img = np.zeros((96, 96, 3), np.uint8)
    img[:, 0] = 255
    assert eval_transform(96)(Image.fromarray(img))[0, :, 0].max() < 0.0
    assert eval_transform(224).transforms[0].size == [256]


def test_to_normalized_tensor_equals_torchvision_chain():
    img = _image()
    reference = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    fast = ToNormalizedTensor()
    torch.testing.assert_close(fast(img), reference(img), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast(v2.functional.pil_to_tensor(img)), reference(img), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel, sigma", [(3, 0.5), (3, 2.0), (7, 1.3)])
def test_gaussian_blur_equals_torchvision(kernel, sigma):
    img = _image(20, 24)
    ours = v2.functional.pil_to_tensor(GaussianBlur(kernel, (sigma, sigma))(img)).int()
    ref = v2.functional.gaussian_blur(v2.functional.pil_to_tensor(img), [kernel, kernel], [sigma, sigma]).int()
    assert (ours - ref).abs().max() <= 1  # float rounding of x.5 only
    assert (ours - ref).abs().float().mean() < 0.01


def test_blur_kernel_is_about_ten_percent_and_odd():
    assert [blur_kernel_size(s) for s in (224, 96, 64, 32, 16)] == [23, 9, 7, 3, 3]


@pytest.mark.parametrize("size", [32, 64])
def test_two_views_shapes(size):
    views = TwoViews(size)(_image())
    assert len(views) == 2
    for v in views:
        assert v.shape == (3, size, size) and v.dtype == torch.float32


@pytest.mark.parametrize("size", [32, 64])
def test_multicrop_shapes(size):
    g, l = crop_sizes(size)
    views = MultiCrop(size, n_local=3)(_image())
    assert [tuple(v.shape) for v in views] == [(3, g, g)] * 2 + [(3, l, l)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    assert len(MultiCrop(size, n_local=0)(_image())) == 2


def test_byol_probabilities_and_parameters():
    t = TwoViews(224)
    assert (_blur_p(t.view1), _solarize_p(t.view1)) == (1.0, 0.0)
    assert (_blur_p(t.view2), _solarize_p(t.view2)) == (0.1, 0.2)
    for view in (t.view1, t.view2):
        crop = _find(view, v2.RandomResizedCrop)[0][1]
        assert crop.size == (224, 224) and tuple(crop.scale) == (0.08, 1.0)
        assert crop.interpolation == v2.InterpolationMode.BICUBIC
        apply, jitter = _find(view, v2.ColorJitter)[0]
        assert apply.p == 0.8
        assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
            (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
        assert _find(view, v2.RandomGrayscale)[0][1].p == 0.2
        assert _find(view, v2.RandomHorizontalFlip)[0][1].p == 0.5
        blur = _find(view, GaussianBlur)[0][1]
        assert blur.kernel_size == 23 and blur.sigma == (0.1, 2.0)


def test_blur_is_scaled_to_the_crop_and_left_out_where_it_cannot_change_a_pixel():
    assert blur_sigma(224) == (0.1, 2.0) and blur_sigma(112) == (0.05, 1.0)
    blur = _find(TwoViews(64).view1, GaussianBlur)[0][1]  # 2.0 × 64/224 = 0.57 px: still a blur
    assert blur.kernel_size == 7 and blur.sigma == pytest.approx((0.1 * 64 / 224, 2.0 * 64 / 224))
    # 32 px: sigma <= 0.29 px, whose 3-tap side weights (< 0.4 %) cannot move an 8-bit value.
    assert blur_sigma(32)[1] < MIN_BLUR_SIGMA <= blur_sigma(64)[1]
    assert _blur_p(TwoViews(32).view1) == _blur_p(MultiCrop(64).local) == 0.0
    img = _image()  # white noise, the worst case: the omitted blur would move a pixel by <= 2 of 255
    blurred = np.asarray(GaussianBlur(3, (blur_sigma(32)[1],) * 2)(img), dtype=int)
    assert np.abs(blurred - np.asarray(img, dtype=int)).max() <= 2


def test_multicrop_probabilities_and_scales():
    m = MultiCrop(224, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4))
    assert (_blur_p(m.global1), _solarize_p(m.global1)) == (1.0, 0.0)
    assert (_blur_p(m.global2), _solarize_p(m.global2)) == (0.1, 0.2)
    assert (_blur_p(m.local), _solarize_p(m.local)) == (0.5, 0.0)
    g1, g2, loc = (_find(v, v2.RandomResizedCrop)[0][1] for v in (m.global1, m.global2, m.local))
    assert g1.size == g2.size == (224, 224) and loc.size == (96, 96)
    assert tuple(g1.scale) == tuple(g2.scale) == (0.4, 1.0) and tuple(loc.scale) == (0.05, 0.4)
    assert _find(m.global1, GaussianBlur)[0][1].kernel_size == 23
    assert _find(m.local, GaussianBlur)[0][1].kernel_size == 9


def test_byol_view_reuse():
    view = byol_view(64, blur_p=0.3, solarize_p=0.0, scale=(0.5, 1.0))
    assert (_blur_p(view), _solarize_p(view)) == (0.3, 0.0)
    assert view(_image()).shape == (3, 64, 64)


@pytest.mark.parametrize("make", [lambda: TwoViews(32), lambda: MultiCrop(32, n_local=2)])
def test_views_depend_only_on_torch_seed(make):
    transform, img = make(), _image()

    def run(torch_seed, other_seed):
        # python's and numpy's generators are scrambled on purpose: they must not matter.
        random.seed(other_seed)
        np.random.seed(other_seed)
        torch.manual_seed(torch_seed)
        return transform(img)

    a, b, c = run(0, 1), run(0, 2), run(1, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])  # the two views of one image differ


def test_solarize_inverts_bright_pixels_of_the_8bit_image():
    op = _find(TwoViews(32).view2, v2.RandomSolarize)[0][1]
    img = Image.fromarray(np.array([[[10, 127, 128]], [[200, 255, 0]]], np.uint8))
    out = np.asarray(v2.functional.solarize(img, op.threshold))
    assert out.tolist() == [[[10, 127, 127]], [[55, 0, 0]]]
