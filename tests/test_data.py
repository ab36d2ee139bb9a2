"""Data sets, IDX files, tasks, splits, errors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from modtools import data as D
from modtools.errors import DatasetNotFoundError, EmptyClassError, InvalidClassError, UnknownNameError


def _write_idx(path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    monkeypatch.setenv("MODTOOLS_DATA", str(tmp_path))
    return folder


def test_fashion_mnist_from_idx_files(tiny_fashion):
    train = D.load_dataset("fashion-mnist", "train")
    test = D.load_dataset("fashion-mnist", "test")
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 10 and train.class_names[9] == "Ankle boot"
    raw = D.read_idx(tiny_fashion / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.images[:, 0], torch.from_numpy(raw.copy()))
    x, y = train[3]
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1 and int(y) == 3


def test_missing_dataset_says_where_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MODTOOLS_DATA", str(tmp_path / "empty"))
    monkeypatch.delenv("MODTOOLS_DOWNLOAD", raising=False)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="No download was attempted") as err:
        D.load_dataset("fashion-mnist")
    assert str(tmp_path / "empty") in str(err.value) and "dataset-fashion-mnist" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="cifar10.*No download was attempted"):
        D.load_dataset("cifar10", root=tmp_path / "empty")


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="imagenet.*fashion-mnist"):
        D.load_dataset("imagenet")
    with pytest.raises(UnknownNameError, match="validation"):
        D.load_dataset("synthetic", "validation")


def test_digits_are_28x28_and_offline():
    train, test = D.load_dataset("digits", "train"), D.load_dataset("digits", "test")
    assert train.shape == (1, 28, 28) and len(train) + len(test) == 1797
    assert set(train.labels.tolist()) == set(range(10))


def test_cifar100_superclass_mapping_has_five_fine_classes_each():
    counts = np.bincount(D.CIFAR100_FINE_TO_COARSE, minlength=20)
    assert len(D.CIFAR100_FINE_TO_COARSE) == 100 and (counts == 5).all()
    assert len(D.CIFAR100_SUPERCLASSES) == 20


def test_subset_task_relabels_in_order(tiny_data):
    train, _ = tiny_data
    task = D.subset_task(train, [2, 0])
    assert task.class_names == ["class2", "class0"]
    assert set(task.labels.tolist()) == {0, 1}
    assert torch.equal(task.images[task.labels == 0], train.images[train.labels == 2])


def test_binary_task_is_balanced_and_seeded(tiny_data):
    train, _ = tiny_data
    a, b = D.binary_task(train, 1, seed=3), D.binary_task(train, 1, seed=3)
    assert torch.equal(a.images, b.images)
    assert int(a.labels.sum()) == 24 and len(a) == 48
    assert a.class_names == ["not class1", "class1"]


def test_mixed_task_conforms_images(tiny_data):
    train, _ = tiny_data
    rgb = D.synthetic(3, 5, 20, 3, seed=2, name="rgb")
    mixed = D.mixed_task(train, [0, 1], rgb, [2])
    assert mixed.shape == (3, 16, 16) and mixed.num_classes == 3
    assert mixed.class_names[-1] == "rgb:class2" and int((mixed.labels == 2).sum()) == 5


@pytest.mark.parametrize("bad,match", [([4], "out of range.*0..3"), ([-1], "out of range"), ([1, 1], "twice"),
                                       (["a"], "not an integer"), ([], "empty"), ([1.5], "not an integer")])
def test_invalid_classes(tiny_data, bad, match):
    train, _ = tiny_data
    with pytest.raises(InvalidClassError, match=match):
        D.subset_task(train, bad)


def test_empty_class_is_reported(tiny_data):
    train, _ = tiny_data
    no_class3 = train.take(torch.nonzero(train.labels != 3).squeeze(1))
    with pytest.raises(EmptyClassError, match="class 3.*0 samples.*train"):
        D.subset_task(no_class3, [3])


def test_splits_are_seeded_stratified_and_disjoint(tiny_data):
    train, _ = tiny_data
    a1, b1 = D.train_val_split(train, 0.25, seed=1)
    a2, b2 = D.train_val_split(train, 0.25, seed=1)
    assert torch.equal(a1.images, a2.images) and torch.equal(b1.labels, b2.labels)
    assert len(a1) + len(b1) == len(train) and b1.class_counts() == [6, 6, 6, 6]


def test_dirichlet_subset_is_imbalanced_and_seeded(tiny_data):
    big = D.synthetic(5, 200, 8, 1, seed=0)
    sub, p = D.dirichlet_subset(big, alpha=1.0, seed=4, min_size=5)
    again, _ = D.dirichlet_subset(big, alpha=1.0, seed=4, min_size=5)
    counts = sub.class_counts()
    assert torch.equal(sub.labels, again.labels)
    assert max(counts) == 200 and min(counts) >= 5 and max(p) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        D.dirichlet_subset(big, alpha=0)


def test_loader_batches_and_augmentation(tiny_data):
    train, _ = tiny_data
    loader = D.TensorLoader(train, batch_size=10, shuffle=True, seed=0, augment=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 10
    assert batches[0][0].shape == (10, 1, 16, 16) and batches[-1][0].shape[0] == 6
    x = torch.rand(4, 3, 8, 8)
    same = D.augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert torch.equal(same, x)
    with pytest.raises(ValueError, match="batch_size"):
        D.TensorLoader(train, batch_size=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmented_batches_have_nchw_strides(channels):
    """A one-channel crop must not come out channels-last: the network would then train channels-last."""
    x = torch.rand(5, channels, 8, 8)
    out = D.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.stride() == torch.empty(x.shape).stride()
    conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
    assert conv(out).stride() == torch.empty(5, 4, 8, 8).stride()


def _write_image_folder(root, classes=("b_cat", "a_dog"), per_class=2, sizes=((40, 30), (25, 50))):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")


def test_image_folder_sorted_classes_resized_and_cropped(tmp_path):
    _write_image_folder(tmp_path / "pets")
    ds = D.load_image_folder(f"folder:{tmp_path / 'pets'}", "train", image_size=16, resize=20)
    assert ds.class_names == ["a_dog", "b_cat"]          # sorted, never the file system's order
    assert ds.images.shape == (4, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.class_counts() == [2, 2]
    # a relative path lies under the data root; load_dataset takes the same name (224 crops)
    full = D.load_dataset("folder:pets", "test", root=tmp_path)
    assert full.images.shape == (4, 3, 224, 224) and D.is_dataset_name("folder:pets")
    assert not D.is_dataset_name("folder:") and not D.is_dataset_name("imagenet")


def test_image_folder_errors_say_what_is_expected(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"no image folder at .*nowhere.*train.*<class>"):
        D.load_dataset("folder:nowhere", root=tmp_path)
    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="has no class folders"):
        D.load_dataset("folder:flat", root=tmp_path)
    (tmp_path / "flat" / "train" / "empty").mkdir()
    with pytest.raises(EmptyClassError, match="empty has no images"):
        D.load_dataset("folder:flat", root=tmp_path)
    _write_image_folder(tmp_path / "ok")
    with pytest.raises(ValueError, match=r"image_size=32, resize=20"):
        D.load_image_folder(f"folder:{tmp_path / 'ok'}", image_size=32, resize=20)
    with pytest.raises(UnknownNameError, match="folder:PATH"):
        D.load_dataset("pets")


def test_disjoint_per_class_draws_the_limit_per_class_subset_then_others_of_each_class():
    ds = D.synthetic(4, 30, 8, 1, seed=0)
    first, second = D.disjoint_per_class(ds, 5, 7, seed=3)
    same = D.limit_per_class(ds, 5, seed=3)
    assert torch.equal(first.images, same.images) and torch.equal(first.labels, same.labels)
    assert second.class_counts() == [7] * 4
    a = {bytes(x.numpy()) for x in first.images}
    assert not a & {bytes(x.numpy()) for x in second.images}
    _, rest = D.disjoint_per_class(ds, 5, None, seed=3)
    assert rest.class_counts() == [25] * 4
    whole, empty = D.disjoint_per_class(ds, None, 7, seed=3)
    assert len(whole) == len(ds) and len(empty) == 0
