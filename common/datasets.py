"""The dataset registry: every data set by name (or a folder path) as `(PIL RGB image, int label)`.

`build_dataset(name_or_path, root=None, split="train", download=False)`; `root=None` means
`$SSL_DATA` or `./data`. Splits are `train` and `test` (alias `val`), plus `unlabeled` and
`train+unlabeled` for stl10 and coco and `trainval` for voc2012. Every dataset has `.classes`
(empty when unlabeled), `.targets` (-1 when unlabeled), `.name`, `.split`; segmentation sets
(shapes, voc2012, coco with `semantic_segmentation/`) add `has_masks`, `mask_kind`, `get_mask(i)`.

Folder datasets list their files at construction and decode in `__getitem__`, so they are cheap to
build and to pickle into DataLoader workers. A file that does not decode is skipped: its path is
logged once on the `ssl_lab.data` logger, `dataset.skipped` counts it (the flags are in shared
memory, so the count includes what DataLoader workers found) and the next readable image stands in,
so one bad file never stops a long run. Any image mode (grey, palette, RGBA, 16-bit, CMYK) comes
out as 8-bit RGB.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common import shapes

log = logging.getLogger("ssl_lab.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_ALIASES = {"val": "test", "valid": "test", "validation": "test"}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
IMAGENETTE_CLASSES = {  # wnid -> name, as in fastai/imagenette
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}
TINY_IMAGENET = ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")


class DatasetError(ValueError):
    """A data set that cannot be built; the message is one line that says how to fix it."""


def _torchvision_dataset(name: str):
    import torchvision.datasets  # imported only to download: it is slow to import

    return getattr(torchvision.datasets, name, None)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def default_root() -> Path:
    return Path(os.environ.get("SSL_DATA") or "data").expanduser().absolute()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit and 32-bit integer grey are scaled from 16 bit, float grey
    from [0, 1] (or clipped to [0, 255]), transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image).astype(np.float64)
        peak = (1.0 if a.max(initial=0) <= 1.0 else 255.0) if image.mode == "F" else 65535.0
        grey = np.clip(a * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()  # decode now, so a truncated file fails here and not inside a transform
        return to_rgb(image)


class ImageDataset(Dataset):
    """Common attributes; subclasses implement `__getitem__`."""

    has_masks = False
    mask_kind: str | None = None

    def __init__(self, name: str, split: str, classes: list[str], targets: list[int]):
        self.name, self.split = name, split
        self.classes, self.targets = list(classes), list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def _index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return i % len(self)

    def get_mask(self, i: int) -> np.ndarray:
        raise DatasetError(f"{self.name} has no segmentation masks")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, {len(self)} images, "
                f"{len(self.classes)} classes)")


class ArrayImages(ImageDataset):
    """Images held in memory as a uint8 array (N, H, W, 3), optionally with masks (N, H, W)."""

    def __init__(self, name, split, images, targets, classes, masks=None, mask_kind=None):
        super().__init__(name, split, classes, [int(t) for t in targets])
        self.images = images
        self.masks = masks
        if masks is not None:
            self.has_masks, self.mask_kind = True, mask_kind

    @property
    def skipped(self) -> int:
        return 0

    def __getitem__(self, i):
        i = self._index(i)
        return Image.fromarray(self.images[i]), self.targets[i]

    def get_mask(self, i: int) -> np.ndarray:
        if self.masks is None:
            return super().get_mask(i)
        return self.masks[self._index(i)].astype(np.int64)


class ImageFiles(ImageDataset):
    """Image files listed at construction (paths relative to `root`) and decoded in `__getitem__`.

    Unreadable files are skipped (see the module docstring); `get_mask(i)` gives the mask of the image
    that `__getitem__(i)` returned. Masks are single-channel PNGs (palette indices or grey values);
    an image without a mask file gets an all-void (255) mask.
    """

    def __init__(self, name, split, root, files, targets, classes, masks=None, mask_kind=None):
        super().__init__(name, split, classes, targets)
        if not files:
            raise DatasetError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.root = str(root)
        # one numpy buffer instead of a million str objects: forked workers do not copy it on access
        self._files = np.array([os.fsencode(f) for f in files])
        self._masks = None if masks is None else np.array([os.fsencode(m or "") for m in masks])
        if masks is not None:
            self.has_masks, self.mask_kind = True, mask_kind
        self._bad = torch.zeros(len(files), dtype=torch.bool).share_memory_()

    @property
    def skipped(self) -> int:
        """Files found unreadable so far, in this process and in its DataLoader workers."""
        return int(self._bad.sum())

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._files[i]))

    def _readable(self, i: int):
        """i, then the next indices (wrapping round) not yet known to be unreadable."""
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            if not self._bad[j]:
                yield j

    def __getitem__(self, i):
        for j in self._readable(self._index(i)):
            try:
                return load_image(self.path(j)), self.targets[j]
            except Exception as e:  # whatever the decoder raises, the file is skipped
                self._bad[j] = True
                log.warning("skipping unreadable image %s (%s); %d skipped so far",
                            self.path(j), _one_line(e), self.skipped)
        raise DatasetError(f"none of the {len(self)} images under {self.root} could be read")

    def get_mask(self, i: int) -> np.ndarray:
        if self._masks is None:
            return super().get_mask(i)
        j = next(self._readable(self._index(i)), self._index(i))
        with Image.open(self.path(j)) as image:
            size = image.size  # the header only
        name = os.fsdecode(self._masks[j])
        if not name:
            return np.full(size[::-1], 255, np.int64)
        try:
            with Image.open(os.path.join(self.root, name)) as mask:
                if mask.mode not in ("P", "L", "I", "I;16"):
                    raise DatasetError(f"mask {name} has mode {mask.mode}; expected a single-channel index PNG")
                if mask.size != size:  # masks are given at the image's size
                    mask = mask.resize(size, Image.NEAREST)
                return np.asarray(mask).astype(np.int64)
        except OSError as e:
            raise DatasetError(f"cannot read mask {os.path.join(self.root, name)} ({_one_line(e)})") from None


# ---------------------------------------------------------------- helpers

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_under(folder: Path, recursive: bool = True) -> list[str]:
    """Sorted image paths relative to `folder`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        rel = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in sorted(filenames) if _is_image(f)]
    return found


def _has_image(folder: Path) -> bool:
    return any(any(map(_is_image, filenames)) for _, _, filenames in os.walk(folder, followlinks=True))


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _locate(name: str, candidates: list[Path], marker: str, how_to_get: str, downloader=None) -> Path:
    """The first candidate folder that holds `marker`; downloads once if a downloader is given."""
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    if downloader is not None:
        try:
            downloader()
        except Exception as e:  # network, disk or archive errors end the same way
            raise DatasetError(f"downloading {name} failed ({_one_line(e)}); {how_to_get}") from None
        return _locate(name, candidates, marker, how_to_get)
    looked = ", ".join(str(f / marker) for f in candidates)
    raise DatasetError(f"{name} not found: looked for {looked}; {how_to_get}")


def _how(url: str, download: bool = True) -> str:
    return (f"run with --download or get {url}" if download else f"get it from {url}") + " and unpack it there"


def _class_folders(folder: Path, classes: list[str], subfolder: str | None = None):
    """Files and targets of a class-folder tree `folder/<class>/[subfolder/]...`."""
    files, targets = [], []
    for k, c in enumerate(classes):
        d = folder / c
        if subfolder and (d / subfolder).is_dir():
            d = d / subfolder
        if d.is_dir():
            found = _images_under(d)
            files += [os.path.relpath(d / f, folder) for f in found]
            targets += [k] * len(found)
    return files, targets


# ---------------------------------------------------------------- builders: (root, split, download)

def _shapes(root: Path, split: str, download: bool, variant: str = "shapes") -> ArrayImages:
    images, labels, masks = shapes.load_split(root, split, variant)
    return ArrayImages(variant, split, images, labels, shapes.CLASSES, masks, "object")


DIGITS_TEST_SIZE = 360  # of scikit-learn's 1797 digits: a fixed, stratified, seeded hold-out


def _digits(root: Path, split: str, download: bool) -> ArrayImages:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, test = train_test_split(np.arange(len(digits.target)), test_size=DIGITS_TEST_SIZE,
                                   stratify=digits.target, random_state=0)
    index = train if split == "train" else test
    grey = (digits.images[index] * (255 / 16)).round().astype(np.uint8)  # values are 0..16
    images = np.stack([np.asarray(Image.fromarray(g).resize((32, 32), Image.BILINEAR)) for g in grey])
    images = np.repeat(images[..., None], 3, axis=-1)
    return ArrayImages("digits", split, images, digits.target[index], [str(d) for d in range(10)])


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches hold dicts, lists, str, bytes, numbers and numpy arrays: any other global
    in the file (a function to call, a class to build) is refused, so reading it cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError) as e:
        raise DatasetError(f"cannot read {path} ({_one_line(e)}); delete it and run with --download") from None


def _cifar(name: str, root: Path, split: str, download: bool) -> ArrayImages:
    """CIFAR-10/100 python-pickle batches, read here (not by torchvision) so that no md5 check can
    refuse a subset; `--download` uses torchvision's downloader."""
    folder, meta, train_files, test_file, label_key, names_key, url = {
        "cifar10": ("cifar-10-batches-py", "batches.meta", [f"data_batch_{i}" for i in range(1, 6)],
                    "test_batch", "labels", "label_names", f"{CIFAR_URL}cifar-10-python.tar.gz"),
        "cifar100": ("cifar-100-python", "meta", ["train"], "test", "fine_labels", "fine_label_names",
                     f"{CIFAR_URL}cifar-100-python.tar.gz"),
    }[name]

    def downloader():
        _torchvision_dataset(name.upper())(str(root), train=True, download=True)

    d = _locate(name, [root / folder, root / name / folder, root], meta, _how(url), downloader if download else None)
    classes = _unpickle(d / meta)[names_key]
    images, targets = [], []
    for f in train_files if split == "train" else [test_file]:
        if not (d / f).exists():
            raise DatasetError(f"{name}: {d / f} is missing; run with --download or get {url}")
        batch = _unpickle(d / f)
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch[label_key]) != len(data):
            raise DatasetError(f"{d / f} is not a CIFAR batch (data {data.shape}); delete it and run with --download")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        targets += batch[label_key]
    return ArrayImages(name, split, np.ascontiguousarray(np.concatenate(images)), targets, classes)


class STL10(ImageDataset):
    """STL-10's binary layout: `<split>_X.bin` (N x 3 x 96 x 96 uint8, column-major images) and
    `<split>_y.bin` (labels 1..10), memory-mapped so that the 100k unlabeled images cost no RAM."""

    SIZE = 96

    def __init__(self, folder: Path, split: str):
        parts = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"],
                 "train+unlabeled": ["train", "unlabeled"]}[split]
        names = folder / "class_names.txt"
        classes = names.read_text().split() if names.exists() else STL10_CLASSES
        self.files, targets = [], []
        for part in parts:
            x = folder / f"{part}_X.bin"
            if not x.exists():
                raise DatasetError(f"stl10: {x} is missing; run with --download or get "
                                   "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz")
            n, rest = divmod(x.stat().st_size, 3 * self.SIZE * self.SIZE)
            if rest or n == 0:
                raise DatasetError(f"{x} is truncated or empty ({x.stat().st_size} bytes); delete it and "
                                   "run with --download")
            y = folder / f"{part}_y.bin"
            if part == "unlabeled":
                labels = [-1] * n
            else:
                labels = (np.fromfile(y, dtype=np.uint8).astype(np.int64) - 1).tolist() if y.exists() else []
                if len(labels) != n:
                    raise DatasetError(f"{y} has {len(labels)} labels for {n} images in {x}; delete both "
                                       "and run with --download")
            self.files.append((str(x), n))
            targets += labels
        super().__init__("stl10", split, classes, targets)
        self._offsets = np.cumsum([0] + [n for _, n in self.files])
        self._arrays = None

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}  # memory maps are reopened in each worker

    def __getitem__(self, i):
        i = self._index(i)
        if self._arrays is None:
            s = self.SIZE
            self._arrays = [np.memmap(f, np.uint8, "r", shape=(n, 3, s, s)) for f, n in self.files]
        part = int(np.searchsorted(self._offsets, i, side="right")) - 1
        image = self._arrays[part][i - self._offsets[part]].transpose(2, 1, 0)  # column-major -> H, W, C
        return Image.fromarray(np.ascontiguousarray(image)), self.targets[i]

    @property
    def skipped(self) -> int:
        return 0


def _stl10(root: Path, split: str, download: bool) -> STL10:
    url = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    marker = "unlabeled_X.bin" if "unlabeled" in split else f"{split}_X.bin"
    d = _locate("stl10", [root / "stl10_binary", root / "stl10" / "stl10_binary", root], marker, _how(url),
                (lambda: _torchvision_dataset("STL10")(str(root), split="train", download=True)) if download else None)
    return STL10(d, split)


def _imagenette(root: Path, split: str, download: bool) -> ImageFiles:
    url = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
    names = ["imagenette2-320", "imagenette2", "imagenette2-160", "imagenette"]
    tv = _torchvision_dataset("Imagenette") if download else None  # in torchvision >= 0.17
    downloader = (lambda: tv(str(root), split="train", size="320px", download=True)) if tv else None
    d = _locate("imagenette", [root / n for n in names] + [root / "imagenette" / n for n in names], "train",
                _how(url), downloader)
    wnids = _subfolders(d / "train")
    folder = d / ("train" if split == "train" else "val")
    files, targets = _class_folders(folder, wnids)
    classes = [IMAGENETTE_CLASSES.get(w, w) for w in wnids]
    return ImageFiles("imagenette", split, folder, files, targets, classes)


def _tiny_imagenet(root: Path, split: str, download: bool) -> ImageFiles:
    """train/<wnid>/(images/)?*.JPEG; val/ either sorted into class folders or the official flat
    val/images/ with val_annotations.txt; names from words.txt (first synonym)."""
    url, md5 = TINY_IMAGENET

    def downloader():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(url, str(root), md5=md5)

    d = _locate("tiny-imagenet", [root / "tiny-imagenet-200", root / "tiny-imagenet", root], "train",
                _how(url), downloader if download else None)
    wnids_file = d / "wnids.txt"
    wnids = sorted(wnids_file.read_text().split()) if wnids_file.exists() else _subfolders(d / "train")
    words = {}
    if (d / "words.txt").exists():
        for line in (d / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    classes = [words.get(w, w) for w in wnids]
    if split == "train":
        files, targets = _class_folders(d / "train", wnids, "images")
        return ImageFiles("tiny-imagenet", split, d / "train", files, targets, classes)
    val = d / "val"
    annotations = val / "val_annotations.txt"
    if (val / "images").is_dir() and annotations.exists():
        index = {w: k for k, w in enumerate(wnids)}
        labelled = dict(line.split("\t")[:2] for line in annotations.read_text().splitlines() if "\t" in line)
        files = [f for f in _images_under(val / "images") if labelled.get(f) in index]
        return ImageFiles("tiny-imagenet", split, val / "images", files,
                          [index[labelled[f]] for f in files], classes)
    if not val.is_dir():
        raise DatasetError(f"tiny-imagenet: no val folder in {d}; {_how(url)}")
    files, targets = _class_folders(val, wnids, "images")
    return ImageFiles("tiny-imagenet", split, val, files, targets, classes)


SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "test", "validation", "valid")}


def _imagefolder(root: Path, split: str, download: bool, name: str = "imagefolder") -> ImageFiles:
    """A class-folder tree (`<root>/[train|val|test/]<class>/**/image`) or a flat folder of images
    (label -1). Without train/ and val/ folders the whole folder is the train split."""
    if not root.is_dir():
        raise DatasetError(f"{name}: {root} is not a folder; give a class-folder tree or a folder of images")
    present = {s: next((root / f for f in names if (root / f).is_dir()), None) for s, names in SPLIT_FOLDERS.items()}
    if any(present.values()):
        folder = present[split]
        if folder is None:
            raise DatasetError(f"{name}: {root} has no {'/'.join(SPLIT_FOLDERS[split])} folder for split "
                               f"{split!r}")
        class_sources = [p for p in present.values() if p is not None]
    elif split == "train":
        folder, class_sources = root, [root]
    else:  # never hand the training images back as a test set
        raise DatasetError(f"{name}: {root} has no val/ or test/ folder, so it has only the split 'train'")
    # classes from every split folder, so that train and test agree on the indices
    classes = sorted({c for src in class_sources for c in _subfolders(src) if _has_image(src / c)})
    if classes:
        files, targets = _class_folders(folder, classes)
    else:
        files = _images_under(folder, recursive=False)
        targets = [-1] * len(files)
    return ImageFiles(name, split, folder, files, targets, classes)


def _coco(root: Path, split: str, download: bool) -> ImageFiles:
    """Flat image folders (`train2017`, `val2017`, `unlabeled2017`, optionally under `images/`),
    label -1; class-index masks from `semantic_segmentation/masks/<split>2017/*.png` where present."""
    folders = {"train": ["train2017"], "test": ["val2017"], "unlabeled": ["unlabeled2017"],
               "train+unlabeled": ["train2017", "unlabeled2017"]}[split]
    tried = []
    for base in (root / "coco", root):
        dirs = [next((p for p in (base / f, base / "images" / f) if p.is_dir()), None) for f in folders]
        tried += [str(base / f) for f in folders]
        if all(dirs):
            break
    else:
        urls = " and ".join(f"http://images.cocodataset.org/zips/{f}.zip" for f in folders)
        raise DatasetError(f"coco not found: looked for {', '.join(tried)}; get {urls} and unpack it there")
    files, masks = [], []
    for f, d in zip(folders, dirs):
        mask_dir = base / "semantic_segmentation" / "masks" / f
        for image in _images_under(d, recursive=False):
            files.append(os.path.relpath(d / image, base))
            mask = mask_dir / (Path(image).stem + ".png")
            masks.append(os.path.relpath(mask, base) if mask.exists() else None)
    has_masks = any(masks)
    dataset = ImageFiles("coco", split, base, files, [-1] * len(files), [],
                         masks if has_masks else None, "class" if has_masks else None)
    dataset.mask_classes = _coco_mask_classes(base / "semantic_segmentation" / "config.yaml")
    return dataset


def _coco_mask_classes(config: Path) -> dict[int, str]:
    """`classes:` of the semantic_segmentation config (id -> name; 0 = unlabeled, used as background)."""
    if not config.exists():
        return {}
    text = config.read_text().split("classes:", 1)[-1]
    return {int(k): v.strip() for k, v in re.findall(r"^\s+(\d+):\s*(.+)$", text, flags=re.M)}


def _voc2012(root: Path, split: str, download: bool) -> ImageFiles:
    """PASCAL VOC 2012 segmentation: the ImageSets/Segmentation list of the split; masks are the
    object ids of SegmentationObject (0 background, 255 void boundaries)."""
    url = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
    d = _locate("voc2012", [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root], "JPEGImages", _how(url),
                (lambda: _torchvision_dataset("VOCSegmentation")(str(root), "2012", "train", download=True))
                if download else None)
    listing = d / "ImageSets" / "Segmentation" / f"{'val' if split == 'test' else split}.txt"
    if not listing.exists():
        raise DatasetError(f"voc2012: {listing} is missing; the VOC2012 archive ({url}) has it")
    ids = listing.read_text().split()
    if not ids:
        raise DatasetError(f"voc2012: {listing} lists no images; use another split")
    files = [f"JPEGImages/{i}.jpg" for i in ids]
    masks = [f"SegmentationObject/{i}.png" if (d / "SegmentationObject" / f"{i}.png").exists() else None
             for i in ids]
    return ImageFiles("voc2012", split, d, files, [-1] * len(ids), [], masks, "object")


def voc2012_class_masks(dataset: ImageFiles) -> ImageFiles:
    """The same VOC 2012 images with the SegmentationClass masks (the 20 class ids, 0 background,
    255 void) in place of SegmentationObject (one id per instance)."""
    root = Path(dataset.root)
    files = [os.fsdecode(f) for f in dataset._files]
    masks = [f"SegmentationClass/{Path(f).stem}.png" if (root / "SegmentationClass" / f"{Path(f).stem}.png").exists()
             else None for f in files]
    return ImageFiles("voc2012", dataset.split, root, files, list(dataset.targets), [], masks, "class")


def _places365(root: Path, split: str, download: bool) -> ImageFiles:
    """torchvision's Places365 (small 256x256 images): train-standard and val."""
    places = _torchvision_dataset("Places365")
    folder = root / "places365"
    tv_split = "train-standard" if split == "train" else "val"
    try:
        tv = places(str(folder), split=tv_split, small=True, download=False)
    except (RuntimeError, OSError) as e:
        if not download:
            raise DatasetError(f"places365 not found in {folder} ({_one_line(e)}); run with --download "
                               "(http://places2.csail.mit.edu/download.html)") from None
        try:
            tv = places(str(folder), split=tv_split, small=True, download=True)
        except Exception as e:  # network, disk or archive errors end the same way
            raise DatasetError(f"downloading places365 failed ({_one_line(e)})") from None
    files = [os.path.relpath(p, folder) for p, _ in tv.imgs]
    return ImageFiles("places365", split, folder, files, [int(t) for _, t in tv.imgs], tv.classes)


DATASETS = {
    "shapes": _shapes,
    "shapes-hard": lambda root, split, download: _shapes(root, split, download, "shapes-hard"),
    "digits": _digits,
    "cifar10": lambda root, split, download: _cifar("cifar10", root, split, download),
    "cifar100": lambda root, split, download: _cifar("cifar100", root, split, download),
    "stl10": _stl10,
    "imagenette": _imagenette,
    "tiny-imagenet": _tiny_imagenet,
    "imagefolder": _imagefolder,
    "coco": _coco,
    "voc2012": _voc2012,
    "places365": _places365,
}
EXTRA_SPLITS = {"stl10": ("unlabeled", "train+unlabeled"), "coco": ("unlabeled", "train+unlabeled"),
                "voc2012": ("trainval",)}


def dataset_names() -> list[str]:
    return list(DATASETS)


def build_dataset(name_or_path: str | Path, root: str | Path | None = None, split: str = "train",
                  download: bool = False) -> ImageDataset:
    """A data set by registry name (`dataset_names()`) or by folder path (class folders or flat)."""
    text = str(name_or_path).strip()
    key = text.lower().replace("_", "-")
    if key in DATASETS:
        builder = DATASETS[key]
        if key == "imagefolder" and root is None:
            raise DatasetError("imagefolder needs --data-root: the class-folder tree (or give its path as --data)")
        data_root = default_root() if root is None else Path(root).expanduser().absolute()
    else:
        path = Path(text).expanduser()
        if not path.exists():
            if os.sep in text or "/" in text or text.startswith((".", "~")):
                raise DatasetError(f"no such folder: {path.absolute()}")
            raise DatasetError(f"unknown dataset {text!r}; choose one of {', '.join(DATASETS)} or give the path "
                               "of an image folder")
        key, builder, data_root = "imagefolder", DATASETS["imagefolder"], path.absolute()
    split = SPLIT_ALIASES.get(split.lower(), split.lower())
    splits = ("train", "test") + EXTRA_SPLITS.get(key, ())
    if split not in splits:
        raise DatasetError(f"{key} has no split {split!r}; choose one of {', '.join(splits)} (val = test)")
    return builder(data_root, split, download)
