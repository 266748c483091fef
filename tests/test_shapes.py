"""The embedded `shapes` data set (v3, 32 px, a light shape on a flat dark background; and `shapes-hard`,
64 px, textures and
distractors): deterministic, masks that match the drawn shapes, a class that does not follow from
colour, and a cache per variant that is written once and regenerated when corrupt."""

import logging

import numpy as np
import pytest

from common import shapes
from common.datasets import build_dataset

N = 400


@pytest.fixture(scope="module")
def sample():
    return shapes.generate(N, seed=5, variant="shapes-hard")


@pytest.fixture(scope="module")
def easy():
    return shapes.generate(N, seed=5)


def test_generation_is_deterministic(sample, easy):
    again = shapes.generate(N, seed=5, variant="shapes-hard")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(sample, again))
    other = shapes.generate(N, seed=6, variant="shapes-hard")
    assert not np.array_equal(other[0], sample[0])
    for (images, labels, masks), size in ((sample, 64), (easy, 32)):
        assert images.shape == (N, size, size, 3) and images.dtype == np.uint8
        assert masks.shape == (N, size, size) and labels.shape == (N,)
        assert set(labels.tolist()) == set(range(len(shapes.CLASSES))) and len(shapes.CLASSES) == 10
    assert all(a.tobytes() == b.tobytes() for a, b in zip(easy, shapes.generate(N, seed=5)))


def test_default_is_one_light_shape_on_a_flat_noisy_dark_background(easy):
    images, labels, masks = easy
    assert set(np.unique(masks).tolist()) == {0, 1}  # no distractors
    for i in range(N):
        background = images[i][masks[i] == 0].astype(float)
        assert background.std(0).max() < 20  # one colour plus pixel noise (sigma 3-14), no texture
        shape = np.unique(images[i][masks[i] == 1], axis=0)
        assert len(shape) == 1 and shape.min() >= shapes.LIGHT  # a flat shape, lighter than ...
        assert background.mean(0).max() < shapes.DARK + 5  # ... its ground in every channel
    area = (masks == 1).sum((1, 2)) / 32 ** 2
    assert 0.05 < area.min() and area.max() < 0.6
    # raw pixels stay weak: the learnable part is the outline, not a colour or a position
    half = N // 2
    assert shapes.raw_pixel_knn((images[:half], labels[:half]), (images[half:], labels[half:])) < 0.25


def test_every_mask_id_is_one_flat_colour_and_the_background_is_not(sample):
    images, labels, masks = sample
    rgb = images.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])  # one integer per colour
    for i in range(N):
        ids = np.unique(masks[i])
        assert ids[0] == 0 and 1 in ids and ids.max() <= 3  # main shape 1, up to two distractors
        for k in ids[1:]:
            assert len(np.unique(rgb[i][masks[i] == k])) == 1
        assert len(np.unique(rgb[i][masks[i] == 0])) > 50  # textured and noisy
    distractors = [len(np.unique(m)) - 2 for m in masks]
    assert set(distractors) == {0, 1, 2}
    main = (masks == 1).sum((1, 2))
    assert main.min() > 100 and np.median(main) > 5 * np.median((masks >= 2).sum((1, 2))[np.array(distractors) > 0])


def _elongation(mask):
    """Ratio of the principal second moments of a binary mask (1 for a disc)."""
    y, x = np.nonzero(mask)
    eig = np.linalg.eigvalsh(np.cov(np.stack([x, y]).astype(float)))
    return eig[1] / eig[0]


def _solidity(mask):
    """Area over the area of the bounding circle around the centroid (1 for a disc, less with holes)."""
    y, x = np.nonzero(mask)
    r2 = ((x - x.mean()) ** 2 + (y - y.mean()) ** 2).max()
    return len(x) / (np.pi * r2)


def test_masks_have_the_geometry_of_their_class(sample):
    _, labels, masks = sample
    cls = {name: k for k, name in enumerate(shapes.CLASSES)}
    # only shapes that lie fully inside the image (the main shape may touch the border)
    inside = masks[:, [0, -1], :].max((1, 2)) + masks[:, :, [0, -1]].max((1, 2)) == 0

    def stat(fn, name):
        return np.array([fn(m == 1) for m, y, ok in zip(masks, labels, inside) if y == cls[name] and ok])

    assert stat(_elongation, "circle").max() < 1.15 and stat(_elongation, "hexagon").max() < 1.15
    assert stat(_elongation, "ellipse").min() > 3.0
    assert stat(_solidity, "circle").min() > 0.85
    assert stat(_solidity, "ring").max() < 0.75  # the hole is background
    assert stat(_solidity, "star").max() < 0.6
    assert np.median(stat(_solidity, "square")) == pytest.approx(2 / np.pi, abs=0.08)  # square in its circle


@pytest.mark.parametrize("variant", ["sample", "easy"])
def test_class_does_not_follow_from_colour(variant, request):
    images, labels, masks = request.getfixturevalue(variant)
    colour = np.stack([images[i][masks[i] == 1][0] for i in range(N)]).astype(float)
    half = N // 2
    centroids = np.stack([colour[:half][labels[:half] == k].mean(0) for k in range(10)])
    predicted = np.argmin(((colour[half:, None] - centroids) ** 2).sum(-1), 1)
    assert (predicted == labels[half:]).mean() < 0.2  # chance is 0.1


def test_raw_pixel_knn_maths():
    a = np.zeros((4, 2, 2, 3), np.uint8)
    a[2:] = 255
    a[:, 0, 0] = [[0, 9, 0], [0, 8, 0], [9, 0, 9], [8, 0, 9]]
    labels = np.array([0, 0, 1, 1])
    assert shapes.raw_pixel_knn((a, labels), (a, labels), k=1) == 1.0
    assert shapes.raw_pixel_knn((a, labels), (a[::-1], labels), k=1) == 0.0


def test_cache_written_once_and_regenerated_when_corrupt(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(shapes, "TRAIN_SIZE", 30)
    monkeypatch.setattr(shapes, "TEST_SIZE", 10)
    train_set = build_dataset("shapes", root=tmp_path)
    path = shapes.cache_path(tmp_path)
    assert path.parent == tmp_path / "shapes" and path.name == "shapes-v3-32px-30-10.npz" and path.exists()
    assert len(train_set) == 30 and train_set.classes == shapes.CLASSES and train_set.mask_kind == "object"
    images, labels, masks = shapes.generate(30, shapes.SEEDS["train"])
    assert np.array_equal(train_set.images, images) and train_set.targets == labels.tolist()
    image, label = train_set[7]
    mask = train_set.get_mask(7)
    assert image.size == (32, 32) and image.mode == "RGB" and label == labels[7]
    assert mask.dtype == np.int64 and np.array_equal(mask, masks[7])
    stamp = path.stat().st_mtime_ns
    test_set = build_dataset("shapes", root=tmp_path, split="val")
    assert len(test_set) == 10 and path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert np.array_equal(test_set.images, shapes.generate(10, shapes.SEEDS["test"])[0])

    path.write_bytes(path.read_bytes()[:1000])  # truncated cache
    with caplog.at_level(logging.WARNING, logger="ssl_lab.data"):
        again = build_dataset("shapes", root=tmp_path, split="test")
    assert np.array_equal(again.images, test_set.images) and "regenerating" in caplog.text
    hard = build_dataset("shapes-hard", root=tmp_path, split="test")  # its own cache, the v1 set
    assert hard.images.shape == (10, 64, 64, 3) and shapes.cache_path(tmp_path, "shapes-hard").exists()
    assert np.array_equal(hard.images, shapes.generate(10, shapes.SEEDS["test"], "shapes-hard")[0])
    assert np.load(path)["train_images"].shape == (30, 32, 32, 3)  # the rewritten cache is whole
