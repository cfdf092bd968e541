"""`load_dataset`: read the configured source, check it, hold out a validation set."""

from __future__ import annotations

import os

import numpy as np

from robustgan.data import arrays, idx, imagefolder, tfds_source
from robustgan.data.dataset import Dataset, check_split, hold_out
from robustgan.errors import ConfigError, DataError

SOURCES = ("tfds", "idx", "imagefolder", "npz", "embedded")
DATA_DIR_ENV = "ROBUSTGAN_DATA_DIR"
# Dataset name -> (source, folder under $ROBUSTGAN_DATA_DIR) for the local copies we read.
LOCAL_COPIES = {
    "mnist": ("idx", "mnist"),
    "fashion_mnist": ("idx", "fashion_mnist"),
    "cifar10": ("imagefolder", "cifar10_jpeg"),
}
_REQUIRED = object()


def default_source(name: str) -> tuple[str, str]:
    """(config.data.source, config.data.dir) for dataset `name`.

    When the environment variable ROBUSTGAN_DATA_DIR names a folder holding a copy of the
    dataset in a format robustgan reads, that copy: mnist -> ('idx', $DIR/mnist),
    fashion_mnist -> ('idx', $DIR/fashion_mnist), cifar10 -> ('imagefolder',
    $DIR/cifar10_jpeg) once the archive there is extracted (train/ and test/ exist).
    Otherwise ('tfds', ''): TFDS's default data_dir, which must hold the prepared dataset.
    """
    root = os.environ.get(DATA_DIR_ENV, "")
    if root and name in LOCAL_COPIES:
        source, folder = LOCAL_COPIES[name]
        path = os.path.join(root, folder)
        present = idx.has_idx_files if source == "idx" else imagefolder.has_layout
        if present(path):
            return source, path
    return "tfds", ""


def _option(cfg, key: str, kind: type, default=_REQUIRED):
    """cfg.<key>, checked to be of type `kind` (bool is not an int here)."""
    value = getattr(cfg, key, default)
    if value is _REQUIRED:
        raise ConfigError(f"config.data.{key} is missing; set it (see robustgan/config.py).")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config.data.{key}={value!r} must be of type {kind.__name__}.")
    return value


def _read(source: str, name: str, path: str, svhn_extra: int) -> dict:
    """{'train': (x, y), 'test': (x, y)} as the source stores them (unchecked)."""
    if source == "tfds":
        return tfds_source.read_tfds(name, path, extra=svhn_extra)
    if source == "embedded":
        return arrays.read_embedded()
    if not path:
        what = "an .npz file" if source == "npz" else "a directory"
        raise ConfigError(f"config.data.source={source!r} needs config.data.dir: {what}.")
    reader = {"idx": idx.read_idx_dir, "imagefolder": imagefolder.read_imagefolder,
              "npz": arrays.read_npz}[source]
    return reader(path)


def _read_only(x: np.ndarray) -> np.ndarray:
    """x, marked read-only so the frozen Dataset's arrays cannot change under a user."""
    x.setflags(write=False)
    return x


def load_dataset(cfg) -> Dataset:
    """The Dataset that cfg (config.data: source, name, dir, validation_size, svhn_extra,
    num_classes) describes; ConfigError for bad values, DataError for bad data."""
    source = _option(cfg, "source", str)
    if source not in SOURCES:
        raise ConfigError(f"config.data.source={source!r} must be one of {', '.join(SOURCES)}.")
    name = _option(cfg, "name", str)
    path = _option(cfg, "dir", str, "")
    num_classes = _option(cfg, "num_classes", int)
    validation_size = _option(cfg, "validation_size", int, 0)
    svhn_extra = _option(cfg, "svhn_extra", int, 0)
    if num_classes < 2:
        raise ConfigError(f"config.data.num_classes={num_classes} must be >= 2.")
    if validation_size < 0:
        raise ConfigError(f"config.data.validation_size={validation_size} must be >= 0.")
    if svhn_extra and (source, name) != ("tfds", "svhn_cropped"):
        raise ConfigError(
            f"config.data.svhn_extra={svhn_extra} applies only to source='tfds', "
            "name='svhn_cropped'; set it to 0.")

    splits = _read(source, name, path, svhn_extra)
    x_train, y_train = check_split(*splits["train"], "train", num_classes)
    x_test, y_test = check_split(*splits["test"], "test", num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: train images are {x_train.shape[1:]} but test images are "
            f"{x_test.shape[1:]}; both splits need one image shape.")
    if validation_size >= len(x_train):
        raise ConfigError(
            f"config.data.validation_size={validation_size} leaves no training examples "
            f"({name} has {len(x_train)}); use a smaller value.")
    x_train, y_train, x_val, y_val = hold_out(x_train, y_train, validation_size)
    return Dataset(
        name, *(_read_only(a) for a in (x_train, y_train, x_val, y_val, x_test, y_test)),
        num_classes=num_classes)
