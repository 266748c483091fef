"""The raw-pixels baseline (`eval/knn.py --raw-pixels`, `eval/linear.py --raw-pixels`) on a tiny
generated image folder: its kNN equals the protocol computed directly in numpy, and its JSON has
the layout of a normal kNN / linear step."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from common.datasets import build_dataset
from eval import knn, linear
from eval.features import raw_pixel_features

SIZE = 8
CLASSES = ("a", "b", "c")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(module_tmp):
    """train/<class>/*.png (5 per class) and test/<class>/*.png (3 per class), 8×8 random RGB with a
    per-class tint, so that pixels carry some signal; already at SIZE, so the eval view is the file."""
    root = module_tmp("pixels")
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("test", 3)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 160, (SIZE, SIZE, 3)) + 40 * np.eye(3, dtype=int)[c]
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def load(root, split):
    """(N × 3·H·W pixels in [0, 1], channel-major as a CHW tensor flattens; labels), sorted as the registry."""
    x, y = [], []
    for c, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.png")):
            x.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255)
            y.append(c)
    return np.stack(x), np.array(y)


def numpy_features(root):
    """(train, train labels, test, test labels): per-channel standardised with the train pixels, flattened."""
    train, train_y = load(root, "train")
    test, test_y = load(root, "test")
    mean = train.mean(axis=(0, 2, 3), keepdims=True)  # per channel, over the train images' pixels
    std = train.std(axis=(0, 2, 3), keepdims=True)
    train, test = [((x - mean) / std).reshape(len(x), -1) for x in (train, test)]
    return train, train_y, test, test_y


def numpy_knn_top1(root, k, T=0.07) -> float:
    train, train_y, test, test_y = numpy_features(root)
    train, test = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (train, test)]
    sims = test @ train.T
    correct = 0
    for q in range(len(test)):
        nearest = np.argsort(-sims[q])[:k]
        votes = np.zeros(len(CLASSES))
        np.add.at(votes, train_y[nearest], np.exp(sims[q, nearest] / T))
        correct += votes.argmax() == test_y[q]
    return 100 * correct / len(test)


def test_raw_pixel_features_equal_numpy(folder):
    train_set, test_set = (build_dataset(str(folder), None, split) for split in ("train", "test"))
    got = raw_pixel_features(train_set, test_set, range(len(train_set)), range(len(test_set)), SIZE)
    for tensor, expected in zip(got, numpy_features(folder)):
        assert np.allclose(tensor.numpy(), expected, atol=1e-4)


def test_raw_pixel_knn_equals_numpy(folder, tmp_path, capsys):
    result = knn.main(["--raw-pixels", "--image-size", str(SIZE), "--data", str(folder), "--out", str(tmp_path),
                       "--device", "cpu", "--k", "1", "3", "20"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["by_k"] == result["by_k"]
    for k in (1, 3, 20):  # 20 > 15 train images: every image votes
        assert result["by_k"][str(k)]["top1"] == pytest.approx(numpy_knn_top1(folder, k)), k
    assert result["top1"] == result["by_k"]["20"]["top1"]
    assert (result["n_train"], result["n_test"], result["num_classes"], result["image_size"]) == (15, 9, 3, SIZE)
    assert result["checkpoint"] is None and result["method"] == "raw_pixels"
    assert result["protocol"]["features"].startswith("raw pixels")
    assert (tmp_path / "knn.json").exists() and not (tmp_path / "features").exists()  # nothing cached


def test_raw_pixel_linear_probe_writes_the_usual_json(folder, tmp_path):
    result = linear.main(["--raw-pixels", "--image-size", str(SIZE), "--data", str(folder), "--out", str(tmp_path),
                          "--device", "cpu", "--epochs", "3", "--weight-decay", "0", "--label-fraction", "0.5", "1"])
    assert set(result["by_label_fraction"]) == {"0.5", "1"} and result["n_test"] == 9
    assert 0 <= result["by_label_fraction"]["1"]["top1"] <= 100
    assert json.loads((tmp_path / "linear.json").read_text())["top1"] == result["top1"]


@pytest.mark.parametrize("argv, message", [
    (["--raw-pixels", "--out", "x"], "--raw-pixels needs --image-size"),
    (["--raw-pixels", "--image-size", "8"], "--raw-pixels needs --out"),
    (["--raw-pixels", "--image-size", "8", "--out", "x", "--checkpoint", "c.pt"], "not both"),
    ([], "--checkpoint is required"),
])
def test_raw_pixels_options_are_checked(argv, message):
    with pytest.raises(SystemExit, match=message):
        knn.main(argv)


def test_linear_raw_pixels_refuses_a_network_protocol(folder, tmp_path):
    with pytest.raises(SystemExit, match="--raw-pixels goes with"):
        linear.main(["--raw-pixels", "--image-size", "8", "--data", str(folder), "--out", str(tmp_path), "--augment"])
