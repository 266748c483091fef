"""The dataset registry: the real samples in ../shared/data, tiny files in the original formats of
the sets we cannot ship (STL-10, CIFAR-100, Imagenette, official Tiny-ImageNet val), and every kind
of bad input (unknown name, missing root, empty folder, corrupt files, odd image modes)."""

import io
import logging
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from common import datasets
from common.datasets import DatasetError, build_dataset, dataset_names


def _save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _noise(size=(16, 12), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _keep(batch):
    return batch


# ------------------------------------------------------------------ real samples in ../shared/data

def test_cifar10_subset_counts_labels_and_pixels(shared_data):
    folder = shared_data / "cifar10-subset" / "cifar-10-batches-py"
    batches = [pickle.load(open(folder / f"data_batch_{i}", "rb"), encoding="latin1") for i in range(1, 6)]
    test = pickle.load(open(folder / "test_batch", "rb"), encoding="latin1")
    train_set = build_dataset("cifar10", root=shared_data / "cifar10-subset", split="train")
    test_set = build_dataset("cifar10", root=folder, split="val")  # the batches folder itself, val = test
    assert (len(train_set), len(test_set)) == (5000, 1000)
    assert train_set.classes[:3] == ["airplane", "automobile", "bird"] and len(train_set.classes) == 10
    assert Counter(train_set.targets) == Counter(sum((b["labels"] for b in batches), []))
    assert train_set.targets == sum((b["labels"] for b in batches), [])
    assert test_set.targets == test["labels"]
    image, label = train_set[1234]  # row 234 of batch 2: channel-major 3x32x32
    expected = batches[1]["data"][234].reshape(3, 32, 32).transpose(1, 2, 0)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    assert label == batches[1]["labels"][234]


def test_tiny_imagenet_10(shared_data):
    root = shared_data / "tiny-imagenet-10"
    train_set = build_dataset("tiny-imagenet", root=root, split="train")
    val_set = build_dataset("tiny_imagenet", root=root, split="test")
    assert len(train_set.classes) == 10 and train_set.classes == val_set.classes
    assert train_set.classes[:3] == ["goldfish", "golden retriever", "tabby"]  # words.txt, first synonym
    assert Counter(train_set.targets) == {k: 500 for k in range(10)}
    assert Counter(val_set.targets) == {k: 50 for k in range(10)}
    # the 62 grayscale JPEGs come out as RGB with three equal channels
    grey = next(i for i in range(len(train_set)) if Image.open(train_set.path(i)).mode == "L")
    image, label = train_set[grey]
    a = np.asarray(image)
    assert image.mode == "RGB" and a.shape == (64, 64, 3) and (a[..., 0] == a[..., 2]).all()
    assert label == train_set.targets[grey]


def test_coco_flat_images_and_class_masks(shared_data):
    ds = build_dataset("coco", root=shared_data / "coco", split="train")
    assert len(ds) == 128 and set(ds.targets) == {-1} and ds.classes == []
    assert ds.has_masks and ds.mask_kind == "class" and ds.mask_classes[1] == "person"
    mask_dir = shared_data / "coco" / "semantic_segmentation" / "masks" / "train2017"
    with_mask = 0
    for i in range(len(ds)):
        mask = ds.get_mask(i)
        width, height = Image.open(ds.path(i)).size
        assert mask.dtype == np.int64 and mask.shape == (height, width)
        png = mask_dir / (ds.path(i).rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png")
        if png.exists():
            with_mask += 1
            assert np.array_equal(mask, np.asarray(Image.open(png)))
        else:  # no annotation: everything void, so evaluations ignore the image
            assert (mask == 255).all()
    assert with_mask == 100
    image, label = ds[0]
    assert image.mode == "RGB" and label == -1


def test_voc2012_object_masks_with_void(shared_data):
    ds = build_dataset("voc2012", root=shared_data / "voc2012-sample", split="train")
    assert len(ds) == 1 and ds.targets == [-1] and ds.mask_kind == "object"
    image, _ = ds[0]
    mask = ds.get_mask(0)
    assert image.size == (500, 375) and mask.shape == (375, 500) and mask.dtype == np.int64
    assert dict(zip(*np.unique(mask, return_counts=True))) == {0: 72224, 1: 27632, 2: 78930, 255: 8714}
    # each object id covers exactly one class of SegmentationClass (chair 9, dog 12), void is shared
    classes = np.asarray(Image.open(shared_data / "voc2012-sample/VOCdevkit/VOC2012/SegmentationClass/2007_000063.png"))
    assert set(np.unique(classes[mask == 1])) == {12} and set(np.unique(classes[mask == 2])) == {9}
    assert np.array_equal(mask == 255, classes == 255)
    assert len(build_dataset("voc2012", root=shared_data / "voc2012-sample", split="trainval")) == 1
    with pytest.raises(DatasetError, match="lists no images"):
        build_dataset("voc2012", root=shared_data / "voc2012-sample", split="val")


def test_voc_layout_written_here_masks_follow_skipped_images(tmp_path):
    """The VOC2012 folder itself as root; a mask at another size is resized to the image; a corrupt
    image is replaced by the next one in __getitem__ and in get_mask alike."""
    voc = tmp_path / "VOC2012"
    for i, size in (("a", (8, 6)), ("b", (10, 4)), ("c", (5, 5))):
        _save(voc / "JPEGImages" / f"{i}.jpg", _noise(size))
    (voc / "JPEGImages" / "a.jpg").write_bytes(b"broken")
    masks = {"a": np.ones((6, 8)), "b": np.array([[0, 1, 2, 255, 255]] * 2)}  # b: half the image's size
    for i, m in masks.items():
        _save(voc / "SegmentationObject" / f"{i}.png", Image.fromarray(m.astype(np.uint8), "L"))
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\nc\n")
    ds = build_dataset("voc2012", root=voc, split="test")
    image, _ = ds[0]
    assert image.size == (10, 4) and ds.skipped == 1
    assert np.array_equal(ds.get_mask(0), np.repeat(np.repeat(masks["b"], 2, 0), 2, 1))
    assert ds.get_mask(1).shape == (4, 10) and (ds.get_mask(2) == 255).all()  # c has no mask: void


def test_hymenoptera_as_a_bare_path_including_its_gif(shared_data):
    train_set = build_dataset(str(shared_data / "hymenoptera_data"), split="train")
    val_set = build_dataset(str(shared_data / "hymenoptera_data"), split="val")
    assert train_set.classes == val_set.classes == ["ants", "bees"]
    assert Counter(train_set.targets) == {0: 124, 1: 121} and Counter(val_set.targets) == {0: 70, 1: 83}
    paths = [train_set.path(i) for i in range(len(train_set))]
    assert any(p.endswith("formica.jpeg") for p in paths)
    gif = next(i for i, p in enumerate(paths) if p.endswith("imageNotFound.gif"))
    image, label = train_set[gif]
    assert image.mode == "RGB" and image.size == (300, 300) and label == 0 and train_set.skipped == 0


# ------------------------------------------------------------------ original formats, written here

def test_stl10_binary_layout_all_splits(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {p: rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8) for p, n in
              (("train", 3), ("test", 2), ("unlabeled", 4))}
    for part, x in images.items():  # STL-10 stores each image column-major: C x W x H
        x.transpose(0, 3, 2, 1).tofile(folder / f"{part}_X.bin")
    np.array([1, 10, 3], np.uint8).tofile(folder / "train_y.bin")
    np.array([2, 2], np.uint8).tofile(folder / "test_y.bin")
    (folder / "class_names.txt").write_text("\n".join(datasets.STL10_CLASSES))
    train_set = build_dataset("stl10", root=tmp_path, split="train")
    assert train_set.targets == [0, 9, 2] and train_set.classes[9] == "truck"
    assert np.array_equal(np.asarray(train_set[1][0]), images["train"][1])
    assert build_dataset("stl10", root=tmp_path, split="test").targets == [1, 1]
    both = build_dataset("stl10", root=folder, split="train+unlabeled")
    assert both.targets == [0, 9, 2, -1, -1, -1, -1]
    image, label = pickle.loads(pickle.dumps(both))[5]  # memory maps reopen after pickling
    assert label == -1 and np.array_equal(np.asarray(image), images["unlabeled"][2])
    with open(folder / "unlabeled_X.bin", "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        build_dataset("stl10", root=tmp_path, split="unlabeled")


def test_cifar100_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = {s: rng.integers(0, 256, (n, 3072), dtype=np.uint8) for s, n in (("train", 6), ("test", 3))}
    fine = {"train": [0, 99, 5, 5, 42, 7], "test": [3, 2, 1]}
    for split in ("train", "test"):
        batch = {"filenames": [f"{i}.png" for i in range(len(fine[split]))], "batch_label": split,
                 "fine_labels": fine[split], "coarse_labels": [0] * len(fine[split]), "data": data[split]}
        pickle.dump(batch, open(folder / split, "wb"))
    pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20},
                open(folder / "meta", "wb"))
    train_set = build_dataset("cifar100", root=tmp_path)
    assert train_set.targets == fine["train"] and len(train_set.classes) == 100 and train_set.classes[99] == "c99"
    image, label = build_dataset("cifar100", root=folder, split="test")[2]
    assert label == 1 and np.array_equal(np.asarray(image), data["test"][2].reshape(3, 32, 32).transpose(1, 2, 0))
    (folder / "test").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="cannot read"):
        build_dataset("cifar100", root=tmp_path, split="test")


def test_tiny_imagenet_official_flat_val_and_imagenette(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n09428293"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn09428293\tseashore, coast\n")
    for k, w in enumerate(wnids):
        for j in range(2):
            _save(root / "train" / w / "images" / f"{w}_{j}.JPEG", _noise(seed=k * 10 + j))
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    rows = [("val_0.JPEG", wnids[1]), ("val_1.JPEG", wnids[0]), ("val_2.JPEG", wnids[1])]
    for f, _ in rows:
        _save(root / "val" / "images" / f, _noise())
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in rows))
    train_set = build_dataset("tiny-imagenet", root=tmp_path)
    assert train_set.classes == ["goldfish", "seashore"] and train_set.targets == [0, 0, 1, 1]
    assert build_dataset("tiny-imagenet", root=tmp_path, split="val").targets == [1, 0, 1]

    nette = tmp_path / "imagenette2-320"
    for split, n in (("train", 2), ("val", 1)):
        for w in ("n01440764", "n03888257"):
            for j in range(n):
                _save(nette / split / w / f"{j}.JPEG", _noise(seed=j))
    ds = build_dataset("imagenette", root=tmp_path, split="val")
    assert ds.classes == ["tench", "parachute"] and ds.targets == [0, 1]


def test_digits_fixed_split_upscaled_rgb():
    train_set, test_set = build_dataset("digits"), build_dataset("digits", split="test")
    assert (len(train_set), len(test_set)) == (1437, 360) and train_set.classes == [str(d) for d in range(10)]
    from sklearn.datasets import load_digits

    assert Counter(train_set.targets + test_set.targets) == Counter(load_digits().target.tolist())
    assert min(Counter(test_set.targets).values()) >= 35  # stratified
    image, label = train_set[0]
    a = np.asarray(image)
    assert image.size == (32, 32) and image.mode == "RGB" and a.max() > 200 and (a[..., 0] == a[..., 1]).all()
    again = build_dataset("digits")
    assert np.array_equal(again.images, train_set.images) and again.targets == train_set.targets


def test_download_uses_torchvision_and_reports_failures(tmp_path, monkeypatch):
    """No network: the downloader is replaced by one that writes the files, then by one that fails."""
    def fake_cifar10(root, train, download):
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(folder / "batches.meta", "wb"))
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [4, 2]}, open(folder / "test_batch", "wb"))

    monkeypatch.setattr(datasets, "_torchvision_dataset", lambda name: fake_cifar10)
    assert build_dataset("cifar10", root=tmp_path, split="test", download=True).targets == [4, 2]

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure\nin name resolution>")

    monkeypatch.setattr(datasets, "_torchvision_dataset", lambda name: offline)
    with pytest.raises(DatasetError, match="downloading stl10 failed") as e:
        build_dataset("stl10", root=tmp_path, download=True)
    assert "\n" not in str(e.value) and "stl10_binary.tar.gz" in str(e.value)


# ------------------------------------------------------------------ bad input

def test_unknown_name_lists_the_names():
    with pytest.raises(DatasetError) as e:
        build_dataset("cifar11")
    message = str(e.value)
    assert "\n" not in message and all(name in message for name in dataset_names())
    assert set(dataset_names()) >= {"shapes", "digits", "cifar10", "cifar100", "stl10", "imagenette",
                                    "tiny-imagenet", "imagefolder", "coco", "voc2012", "places365"}
    with pytest.raises(DatasetError, match="no such folder"):
        build_dataset("./no/such/folder")
    with pytest.raises(DatasetError, match="no split 'unlabeled'"):
        build_dataset("cifar10", split="unlabeled")
    with pytest.raises(DatasetError, match="--data-root"):
        build_dataset("imagefolder")


@pytest.mark.parametrize("name, needle", [
    ("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
    ("stl10", "stl10_binary.tar.gz"), ("imagenette", "imagenette2-320.tgz"),
    ("tiny-imagenet", "tiny-imagenet-200.zip"), ("coco", "train2017.zip"), ("voc2012", "VOCtrainval"),
    ("places365", "--download"),
])
def test_missing_root_says_where_it_looked_and_how_to_get_it(tmp_path, name, needle):
    with pytest.raises(DatasetError) as e:
        build_dataset(name, root=tmp_path / "nothing-here")
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "nothing-here") in message and needle in message


def test_missing_root_defaults_to_ssl_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetError, match=str(tmp_path / "elsewhere" / "cifar-10-batches-py")):
        build_dataset("cifar10")


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        build_dataset(str(tmp_path / "empty"))
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images found"):
        build_dataset(str(tmp_path / "classes"))
    (tmp_path / "tiny" / "train" / "n0").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        build_dataset("tiny-imagenet", root=tmp_path / "tiny")


def test_flat_folder_is_unlabeled_and_has_no_test_split(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", _noise(seed=i))
    ds = build_dataset(str(tmp_path))
    assert len(ds) == 3 and ds.targets == [-1, -1, -1] and ds.classes == []
    with pytest.raises(DatasetError, match="only the split 'train'"):
        build_dataset(str(tmp_path), split="test")


def _folder_with_bad_files(tmp_path):
    for i in range(4):
        _save(tmp_path / "cls" / f"{i}.png", _noise(seed=i))
    jpeg = io.BytesIO()
    _noise((32, 32), seed=9).save(jpeg, "JPEG")
    (tmp_path / "cls" / "1.png").unlink()
    (tmp_path / "cls" / "1.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # truncated
    (tmp_path / "cls" / "2.png").write_bytes(b"this is not a png")  # corrupt
    return build_dataset(str(tmp_path))


def test_corrupt_and_truncated_images_are_skipped_logged_once_and_counted(tmp_path, caplog):
    ds = _folder_with_bad_files(tmp_path)
    names = [ds.path(i).rsplit("/", 1)[-1] for i in range(len(ds))]
    assert names == ["0.png", "1.jpg", "2.png", "3.png"]
    with caplog.at_level(logging.WARNING, logger="ssl_lab.data"):
        for _ in range(2):
            images = [np.asarray(ds[i][0]) for i in range(len(ds))]
    # a bad image is replaced, deterministically, by the next readable one
    assert np.array_equal(images[1], np.asarray(_noise(seed=3))) and np.array_equal(images[2], images[3])
    assert ds.skipped == 2
    logged = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(logged) == 2 and "1.jpg" in logged[0] and "2.png" in logged[1]


def test_skips_found_in_dataloader_workers_are_counted(tmp_path):
    ds = _folder_with_bad_files(tmp_path)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=_keep)
    labels = [label for batch in loader for _, label in batch]
    assert labels == [0, 0, 0, 0] and ds.skipped == 2


def test_every_image_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    ds = build_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="could be read"):
        ds[0]
    with pytest.raises(IndexError):
        ds[1]


def test_image_modes_come_out_as_8bit_rgb(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(10, 20, 30, 255), (10, 20, 30, 0)])
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putdata([1, 0])
    sixteen = Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16))
    files = {
        "grey.png": (Image.new("L", (2, 2), 77), {}),
        "rgba.png": (rgba, {}),
        "palette.png": (palette, {}),
        "palette_transparent.png": (palette, {"transparency": 0}),
        "grey_alpha.png": (Image.new("LA", (1, 1), (40, 0)), {}),
        "sixteen.png": (sixteen, {}),
        "cmyk.tif": (Image.new("CMYK", (2, 2), (0, 255, 255, 0)), {}),
        "cmyk.jpg": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), {"quality": 95}),
        "bilevel.png": (Image.new("1", (3, 1), 1), {}),
        "one_pixel.png": (Image.new("RGB", (1, 1), (1, 2, 3)), {}),
    }
    for name, (image, kwargs) in files.items():
        _save(tmp_path / name, image, **kwargs)
    ds = build_dataset(str(tmp_path))
    got = {ds.path(i).rsplit("/", 1)[-1]: ds[i][0] for i in range(len(ds))}
    assert ds.skipped == 0 and all(im.mode == "RGB" for im in got.values())
    px = {name: np.asarray(im).reshape(-1, 3).tolist() for name, im in got.items()}
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    assert px["grey.png"] == [[77] * 3] * 4
    assert px["rgba.png"] == [[10, 20, 30], [255, 255, 255]]  # transparent -> white
    assert px["palette.png"] == [[200, 100, 50], [0, 0, 0]]
    assert px["palette_transparent.png"] == [[200, 100, 50], [255, 255, 255]]
    assert px["grey_alpha.png"] == [[255, 255, 255]]
    assert px["sixteen.png"] == [[0] * 3, [1] * 3, [128] * 3, [255] * 3]
    assert px["cmyk.tif"] == [[255, 0, 0]] * 4
    assert all(r > 230 and g < 25 and b < 25 for r, g, b in px["cmyk.jpg"])
    assert px["bilevel.png"] == [[255] * 3] * 3
    assert px["one_pixel.png"] == [[1, 2, 3]]


def test_folder_datasets_pickle_for_workers(shared_data):
    ds = build_dataset("tiny-imagenet", root=shared_data / "tiny-imagenet-10", split="val")
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.targets == ds.targets and copy.classes == ds.classes
    assert np.array_equal(np.asarray(copy[17][0]), np.asarray(ds[17][0]))
