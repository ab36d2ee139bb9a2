"""Data sets by name, tasks over their classes, seeded splits and fast tensor loaders.

Every data set is held in memory as an :class:`ImageDataset`: ``uint8`` images of shape
``(N, C, H, W)``, ``int64`` labels and the class names. Inputs handed to models are floats in
``[0, 1]`` (no normalisation: the zoo models carry batch norm, and attacks need ``[0, 1]``).

Where files come from (``root`` defaults to ``$MODTOOLS_DATA``, else ``./data``):

* ``fashion-mnist`` (the default): IDX ``.gz`` files under ``$MODTOOLS_DATA/fashion-mnist``, else
  under ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), else
  torchvision's copy under ``root`` (downloaded only when ``download=True`` or
  ``MODTOOLS_DOWNLOAD=1``).
* ``mnist``, ``cifar10``, ``cifar100`` (optionally its 20 superclasses), ``svhn``: torchvision,
  from ``root``, downloading only when allowed.
* ``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn), upsampled to 28x28.
* ``synthetic``: seeded class templates plus noise, for tests.
* ``folder:PATH``: your own images, ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (class
  folders sorted by name; a relative ``PATH`` lies under the data root), resized to 256 and
  centre-cropped to 224 as ImageNet models expect (:func:`load_image_folder`).
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DatasetNotFoundError, EmptyClassError, UnknownNameError, check_classes

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_SUPERCLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2"]
# Superclass of each CIFAR-100 fine label (the data set's documented coarse labels).
CIFAR100_FINE_TO_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]

SPLITS = ("train", "test")


@dataclass
class ImageDataset:
    """Images (uint8, N×C×H×W), labels (int64, N) and class names, held in memory."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = "dataset"
    source_classes: list = field(default_factory=list)  # what each label means in its source(s)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.long()
        if not self.source_classes:
            self.source_classes = [[self.name, i] for i in range(len(self.class_names))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float().div_(255), self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def take(self, indices) -> "ImageDataset":
        """The samples at ``indices``, same classes."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], list(self.class_names), self.name,
                            list(self.source_classes))

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255)

    def fingerprint(self) -> str:
        """SHA-256 of the images, labels and class names: equal for equal data, whatever its origin."""
        import hashlib

        h = hashlib.sha256("|".join(self.class_names).encode())
        for t in (self.images, self.labels):
            t = t.contiguous()
            h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Loading by name
# --------------------------------------------------------------------------------------------

def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$MODTOOLS_DATA``, else ``./data``."""
    return Path(root or os.environ.get("MODTOOLS_DATA") or "data")


def downloads_allowed(download: bool | None = None) -> bool:
    """``download`` when given, else whether ``MODTOOLS_DOWNLOAD`` is set to 1/true/yes."""
    if download is not None:
        return bool(download)
    return os.environ.get("MODTOOLS_DOWNLOAD", "0").lower() in ("1", "true", "yes")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def _fashion_mnist(split: str, root: Path, download: bool) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    files = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    candidates = []
    if os.environ.get("MODTOOLS_DATA"):
        candidates.append(Path(os.environ["MODTOOLS_DATA"]) / "fashion-mnist")
    candidates += [root / "fashion-mnist", DEBIAN_FASHION_MNIST, root / "FashionMNIST" / "raw"]
    for folder in candidates:
        if all((folder / f).is_file() for f in files):
            images = read_idx(folder / files[0])
            labels = read_idx(folder / files[1])
            return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                                torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES),
                                "fashion-mnist")
    if download:
        import torchvision
        ds = torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        return ImageDataset(ds.data.unsqueeze(1).clone(), ds.targets.clone(), list(FASHION_MNIST_CLASSES),
                            "fashion-mnist")
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DatasetNotFoundError(
        f"Fashion-MNIST ({split}) not found: looked for {files[0]} and {files[1]} in {looked}. "
        "No download was attempted. Provide the files by installing Debian's package "
        "'dataset-fashion-mnist' (make setup does this where apt-get and root are available), "
        "or copy the four IDX .gz files into $MODTOOLS_DATA/fashion-mnist, "
        "or allow a download with download=True / MODTOOLS_DOWNLOAD=1.")


def _torchvision(name: str, split: str, root: Path, download: bool, superclasses: bool) -> ImageDataset:
    import torchvision
    train = split == "train"
    where = root / name
    try:
        if name == "mnist":
            ds = torchvision.datasets.MNIST(str(where), train=train, download=download)
            return ImageDataset(ds.data.unsqueeze(1).clone(), ds.targets.clone(), list(DIGIT_CLASSES), name)
        if name == "cifar10":
            ds = torchvision.datasets.CIFAR10(str(where), train=train, download=download)
            return ImageDataset(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                                torch.tensor(ds.targets), list(CIFAR10_CLASSES), name)
        if name == "cifar100":
            ds = torchvision.datasets.CIFAR100(str(where), train=train, download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.tensor(ds.targets)
            if superclasses:
                labels = torch.tensor(CIFAR100_FINE_TO_COARSE)[labels]
                return ImageDataset(images, labels, list(CIFAR100_SUPERCLASSES), "cifar100-coarse")
            return ImageDataset(images, labels, list(ds.classes), name)
        if name == "svhn":
            ds = torchvision.datasets.SVHN(str(where), split="train" if train else "test", download=download)
            return ImageDataset(torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels.astype(np.int64)),
                                list(DIGIT_CLASSES), name)
    except RuntimeError as exc:
        if download:
            raise
        raise DatasetNotFoundError(
            f"{name} ({split}) not found under {where}: {exc}. No download was attempted. "
            f"Put torchvision's files for {name} under {where}, set MODTOOLS_DATA to a root that has them, "
            "or allow a download with download=True / MODTOOLS_DOWNLOAD=1.") from None
    raise AssertionError(name)


def _digits(split: str, seed: int = 0) -> ImageDataset:
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # A fixed, seeded 80/20 train/test split of the 1,797 images.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(labels))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return ImageDataset(images[idx], labels[idx], list(DIGIT_CLASSES), "digits")


def synthetic(num_classes: int = 4, n_per_class: int = 32, image_size: int = 16, channels: int = 1,
              seed: int = 0, noise: float = 0.15, name: str = "synthetic", split: str = "train") -> ImageDataset:
    """A seeded, learnable toy data set: one random smooth template per class plus noise.

    ``seed`` fixes the class templates; ``split`` draws different samples of the same classes.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    coarse = torch.rand(num_classes, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed * 7919 + (0 if split == "train" else 1))
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = templates[labels] + noise * torch.randn(len(labels), channels, image_size, image_size, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)[perm]
    return ImageDataset(images, labels[perm], [f"class{i}" for i in range(num_classes)], name)


DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "digits", "synthetic")
FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_dataset_name(name) -> bool:
    """Whether ``name`` names a data set: one of ``DATASET_NAMES`` or ``folder:PATH``."""
    return isinstance(name, str) and (name in DATASET_NAMES or (name.startswith(FOLDER_PREFIX)
                                                                and len(name) > len(FOLDER_PREFIX)))


def _unknown(name) -> UnknownNameError:
    return UnknownNameError(f"unknown data set {name!r}; available: {', '.join(DATASET_NAMES)} or "
                            f"'{FOLDER_PREFIX}PATH' (PATH/train/<class>/* and PATH/test/<class>/*)")


def _folder_root(name: str, root: str | os.PathLike | None = None) -> Path:
    path = Path(name[len(FOLDER_PREFIX):]).expanduser()
    return path if path.is_absolute() else data_root(root) / path


def _class_folders(where: Path, name: str) -> list[Path]:
    if not where.is_dir():
        raise DatasetNotFoundError(
            f"no image folder at {where} (from {name!r}): expected {where}/<class>/<images>, with a train/ and a "
            "test/ folder under the data set's folder; a relative path lies under the data root "
            "($MODTOOLS_DATA, else ./data)")
    folders = sorted(d for d in where.iterdir() if d.is_dir())   # sorted: labels never depend on the file system
    if not folders:
        raise DatasetNotFoundError(f"{where} has no class folders; expected {where}/<class>/<images>")
    return folders


def load_image_folder(name: str, split: str = "train", root: str | os.PathLike | None = None,
                      image_size: int = 224, resize: int | None = 256) -> ImageDataset:
    """Images from ``PATH/<split>/<class>/*`` (``name`` = ``folder:PATH``), RGB, resized so the short
    side is ``resize`` and centre-cropped to ``image_size`` (ImageNet's test transform), held in memory."""
    from PIL import Image

    if not (isinstance(name, str) and name.startswith(FOLDER_PREFIX)):
        raise _unknown(name)
    short = image_size if resize is None else resize
    if image_size < 1 or short < image_size:
        raise ValueError(f"image_size={image_size}, resize={resize}: allowed 1 <= image_size <= resize")
    where = _folder_root(name, root) / split
    folders = _class_folders(where, name)
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EmptyClassError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                scale = short / min(im.size)
                im = im.resize((max(short, round(im.width * scale)), max(short, round(im.height * scale))),
                               Image.BILINEAR)
                left, top = (im.width - image_size) // 2, (im.height - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
                images.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
            labels.append(label)
    return ImageDataset(torch.stack(images), torch.tensor(labels), [f.name for f in folders], name)


def num_classes(name: str, superclasses: bool = False) -> int:
    """How many classes the data set ``name`` has, without loading it."""
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX) and is_dataset_name(name):
        return len(_class_folders(_folder_root(name) / "train", name))
    if name not in DATASET_NAMES:
        raise _unknown(name)
    if name == "cifar100":
        return len(CIFAR100_SUPERCLASSES) if superclasses else 100
    return 4 if name == "synthetic" else 10


def load_dataset(name: str = "fashion-mnist", split: str = "train", root: str | os.PathLike | None = None,
                 download: bool | None = None, superclasses: bool = False, seed: int = 0) -> ImageDataset:
    """Load a data set by name.

    Args:
        name: one of ``DATASET_NAMES``, or ``folder:PATH`` (see :func:`load_image_folder`).
        split: ``"train"`` or ``"test"``.
        root: data root (default ``$MODTOOLS_DATA`` or ``./data``).
        download: allow torchvision to download (default: ``MODTOOLS_DOWNLOAD=1``).
        superclasses: for ``cifar100``, label with the 20 superclasses.
        seed: seed of the synthetic set and of the digits train/test split.
    """
    if not is_dataset_name(name):
        raise _unknown(name)
    if split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r} for {name}; available: {', '.join(SPLITS)}")
    if name.startswith(FOLDER_PREFIX):
        return load_image_folder(name, split, root)
    root_path = data_root(root)
    allowed = downloads_allowed(download)
    if name == "fashion-mnist":
        return _fashion_mnist(split, root_path, allowed)
    if name == "digits":
        return _digits(split, seed)
    if name == "synthetic":
        return synthetic(seed=seed, split=split)
    return _torchvision(name, split, root_path, allowed, superclasses)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------

def _require_samples(ds: ImageDataset, classes: Sequence[int], split: str) -> None:
    counts = ds.class_counts()
    for c in classes:
        if counts[c] == 0:
            raise EmptyClassError(f"class {c} ({ds.class_names[c]!r}) has 0 samples in split {split!r} of {ds.name}")


def subset_task(ds: ImageDataset, classes: Sequence[int], split: str = "train") -> ImageDataset:
    """Keep the samples of ``classes`` and relabel them 0..k-1 in the given order."""
    classes = check_classes(classes, ds.num_classes, ds.name)
    _require_samples(ds, classes, split)
    lut = torch.full((ds.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    new = lut[ds.labels]
    keep = torch.nonzero(new >= 0).squeeze(1)
    return ImageDataset(ds.images[keep], new[keep], [ds.class_names[c] for c in classes], ds.name,
                        [ds.source_classes[c] for c in classes])


def binary_task(ds: ImageDataset, target: int, seed: int = 0, split: str = "train") -> ImageDataset:
    """"``target`` vs the rest": label 1 for the class, 0 for an equal number of seeded negatives
    drawn evenly from the other classes."""
    (target,) = check_classes([target], ds.num_classes, ds.name, what="target")
    _require_samples(ds, [target], split)
    g = torch.Generator().manual_seed(seed)
    pos = torch.nonzero(ds.labels == target).squeeze(1)
    others = [c for c in range(ds.num_classes) if c != target]
    per = -(-len(pos) // len(others))
    neg_parts = []
    for c in others:
        idx = torch.nonzero(ds.labels == c).squeeze(1)
        neg_parts.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    neg = torch.cat(neg_parts)
    neg = neg[torch.randperm(len(neg), generator=g)[:len(pos)]]
    idx = torch.cat([pos, neg])
    idx = idx[torch.randperm(len(idx), generator=g)]
    labels = (ds.labels[idx] == target).long()
    return ImageDataset(ds.images[idx], labels, [f"not {ds.class_names[target]}", ds.class_names[target]],
                        ds.name, [["rest", ds.name, target], ds.source_classes[target]])


def _conform(images: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")
    if tuple(images.shape[2:]) != size:
        images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def mixed_task(a: ImageDataset, classes_a: Sequence[int], b: ImageDataset, classes_b: Sequence[int],
               split: str = "train") -> ImageDataset:
    """A task over classes of two sources: ``a``'s classes first, then ``b``'s, relabelled 0..k-1.

    Images are conformed to the larger channel count and ``a``'s image size.
    """
    ta, tb = subset_task(a, classes_a, split), subset_task(b, classes_b, split)
    channels = max(ta.shape[0], tb.shape[0])
    size = tuple(ta.shape[1:])
    images = torch.cat([_conform(ta.images, channels, size), _conform(tb.images, channels, size)])
    labels = torch.cat([ta.labels, tb.labels + ta.num_classes])
    names = [f"{a.name}:{n}" for n in ta.class_names] + [f"{b.name}:{n}" for n in tb.class_names]
    return ImageDataset(images, labels, names, f"{a.name}+{b.name}", ta.source_classes + tb.source_classes)


# --------------------------------------------------------------------------------------------
# Splits and subsets
# --------------------------------------------------------------------------------------------

def train_val_split(ds: ImageDataset, val_fraction: float = 0.2, seed: int = 0,
                    stratified: bool = True) -> tuple[ImageDataset, ImageDataset]:
    """A seeded split into train and validation parts (stratified by class by default)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    if stratified:
        train_idx, val_idx = [], []
        for c in range(ds.num_classes):
            idx = torch.nonzero(ds.labels == c).squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_val = int(round(val_fraction * len(idx)))
            val_idx.append(idx[:n_val])
            train_idx.append(idx[n_val:])
        tr, va = torch.cat(train_idx), torch.cat(val_idx)
        tr, va = tr[torch.randperm(len(tr), generator=g)], va[torch.randperm(len(va), generator=g)]
    else:
        perm = torch.randperm(len(ds), generator=g)
        n_val = int(round(val_fraction * len(ds)))
        va, tr = perm[:n_val], perm[n_val:]
    return ds.take(tr), ds.take(va)


def limit_per_class(ds: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """At most ``n`` seeded samples per class (``None`` keeps everything)."""
    return disjoint_per_class(ds, n, 0, seed=seed)[0]


def disjoint_per_class(ds: ImageDataset, n: int | None, m: int | None, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Two disjoint seeded subsets: at most ``n`` samples per class (:func:`limit_per_class`'s draw),
    and at most ``m`` per class of the remaining samples (``None``: all of them). With ``n`` None
    (or ≤ 0) the first subset is the whole set and the second is empty."""
    if n is None or n <= 0:
        return ds, ds.take(torch.zeros(0, dtype=torch.long))
    g = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in range(ds.num_classes):
        idx = torch.nonzero(ds.labels == c).squeeze(1)
        perm = idx[torch.randperm(len(idx), generator=g)]
        first.append(perm[:n])
        second.append(perm[n:] if m is None else perm[n:n + max(0, m)])
    a, b = torch.cat(first), torch.cat(second)
    a = a[torch.randperm(len(a), generator=g)]
    return ds.take(a), ds.take(b[torch.randperm(len(b), generator=g)])


def dirichlet_subset(ds: ImageDataset, alpha: float = 1.0, seed: int = 0, min_size: int = 10,
                     max_tries: int = 1000) -> tuple[ImageDataset, list[float]]:
    """A class-imbalanced subset as GradSplitter draws it.

    Draw ``p ~ Dir(alpha)``, rescale ``p / max(p)``, keep ``floor(p_c * n_c)`` seeded samples of
    class ``c``; redraw while a class would get fewer than ``min_size``. Returns the subset and ``p``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    counts = ds.class_counts()
    for _ in range(max_tries):
        p = rng.dirichlet(alpha * np.ones(ds.num_classes))
        p = p / p.max()
        keep = [int(np.floor(p[c] * counts[c])) for c in range(ds.num_classes)]
        if min(keep) >= min_size:
            break
    else:
        raise ValueError(f"no Dirichlet draw (alpha={alpha}) gave every class at least {min_size} samples "
                         f"in {max_tries} tries; class counts are {counts}")
    parts = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.labels.numpy() == c)
        parts.append(rng.permutation(idx)[:keep[c]])
    idx = rng.permutation(np.concatenate(parts))
    return ds.take(torch.from_numpy(idx)), [float(v) for v in p]


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, per sample, without a Python loop."""
    b, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])  # b × h
        cols = (dx[:, None] + torch.arange(w)[None, :])  # b × w
        bi = torch.arange(b)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    # NCHW strides even for one channel, where the permuted crop is also "contiguous": otherwise the
    # network trains channels-last, whose AVX2 1x1 weight-gradient kernel (oneDNN 3.12) races for narrow
    # layers, giving run-to-run differences and, at times, a hang (tests/test_data.py).
    return torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)


class TensorLoader:
    """Batches of ``(float images in [0, 1], labels)`` straight from memory, seeded per epoch.

    Much faster than a per-sample DataLoader for in-memory image sets. ``augment`` applies random
    crop (padding 4) and flip.
    """

    def __init__(self, ds: ImageDataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
                 augment: bool = False, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(ds) == 0:
            raise EmptyClassError(f"data set {ds.name!r} is empty; nothing to load")
        self.ds, self.batch_size, self.shuffle = ds, batch_size, shuffle
        self.seed, self.augment, self.drop_last = seed, augment, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.ds)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            self.last_index = idx  # the batch's sample indices (for features cached per sample)
            x = self.ds.images[idx].float().div_(255)
            if self.augment:
                x = augment_batch(x, g)
            yield x, self.ds.labels[idx]
