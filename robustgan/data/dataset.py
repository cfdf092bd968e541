"""The `Dataset` record, and the checks every source's arrays pass through.

Each source only reads arrays; these functions turn them into the one form the rest of
robustgan sees (uint8 NHWC images, int32 labels) or stop with a `DataError` that names
the split and says what to fix.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robustgan.errors import DataError

# Seed of the fixed permutation that picks the validation examples, so that every run
# (and every method) holds out the same ones.
VALIDATION_SEED = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset held in memory as raw pixels.

    Images are uint8 NHWC (0..255), labels int32. `x_val`/`y_val` have 0 rows when no
    validation set is held out. `eq=False`: arrays do not compare as a bool, so two
    datasets compare (and hash) by identity.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image."""
        return tuple(self.x_train.shape[1:])


def as_uint8(x: np.ndarray, split: str) -> np.ndarray:
    """Pixels as uint8, by one rule: uint8 as is; other integers must lie in 0..255;
    floats in [0, 1] (max <= 1) are multiplied by 255, floats in [0, 255] kept, both rounded.
    """
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        low, high = x.min(), x.max()
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 255):
            raise DataError(
                f"{split} images ({x.dtype}) have values in [{low}, {high}]; pixels must be "
                "uint8, or numbers in [0, 1] or [0, 255]. Rescale the images before loading.")
        if np.issubdtype(x.dtype, np.floating):
            x = np.rint(x * 255.0) if high <= 1 else np.rint(x)
        return x.astype(np.uint8)
    raise DataError(
        f"{split} images have dtype {x.dtype}; expected uint8 pixels (or integers/floats in "
        "[0, 255], or floats in [0, 1]).")


def as_images(x, split: str) -> np.ndarray:
    """Images as uint8 (N, H, W, C) with C in {1, 3}; (N, H, W) greyscale gets C=1."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"{split} images have shape {x.shape}; expected (N, H, W, C) or (N, H, W) "
            "greyscale. Reshape flat pixel rows to images before loading.")
    n, height, width, channels = x.shape
    if n == 0 or height == 0 or width == 0 or channels not in (1, 3):
        raise DataError(
            f"{split} images have shape {x.shape}; expected at least one image, H and W > 0 "
            "and 1 (grey) or 3 (RGB) channels last.")
    return as_uint8(x, split)


def as_labels(y, num_classes: int, split: str) -> np.ndarray:
    """Labels as int32 (N,) in [0, num_classes); (N, 1) columns are flattened."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{split} labels have shape {y.shape} and dtype {y.dtype}; expected a 1-D array "
            "of integer class indices (not one-hot, not floats).")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"label {y[i]} of example {i} in the {split} split is outside [0, {num_classes}); "
            "set config.data.num_classes to the dataset's class count, or fix the labels "
            "(they must be 0-based class indices).")
    return y.astype(np.int32)


def check_split(x, y, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked (images, labels) of one split, with as many labels as images."""
    x, y = as_images(x, split), as_labels(y, num_classes, split)
    if len(x) != len(y):
        raise DataError(
            f"the {split} split has {len(x)} images but {len(y)} labels; "
            "each image needs exactly one label.")
    return x, y


def hold_out(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_val, y_val): the last `size` examples of a fixed seeded
    permutation become validation; both parts keep the original order."""
    if size == 0:  # no copy: SVHN with 'extra' is 1.8 GB
        return x, y, x[:0], y[:0]
    perm = np.random.default_rng(VALIDATION_SEED).permutation(len(x))
    train, val = np.sort(perm[: len(x) - size]), np.sort(perm[len(x) - size:])
    return x[train], y[train], x[val], y[val]
