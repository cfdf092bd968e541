"""Pixel scaling, and the training and evaluation batch iterators.

Training batches are a pure function of (seed, step): epoch e = step // steps_per_epoch
reads the permutation `default_rng([seed, e])`, and augmentation draws from
`default_rng([seed, step, 1])`. So a run resumed at any step sees exactly the batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from robustgan.data.dataset import Dataset
from robustgan.errors import ConfigError, DataError

# Third seed word of the augmentation generator, so its stream differs from the epoch
# permutation's `default_rng([seed, epoch])`.
AUGMENT_STREAM = 1


def scale(x, value_range: tuple[float, float]):
    """uint8 pixels 0..255 -> float32 in value_range, e.g. (0, 1) or (-1, 1).

    Works on numpy and jax arrays alike (only `astype` and arithmetic)."""
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise ConfigError(f"value_range={tuple(value_range)} must be (low, high) with low < high.")
    return x.astype(np.float32) * ((high - low) / 255.0) + low


def _check_int(name: str, value, minimum: int) -> None:
    """ConfigError unless value is an int >= minimum."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}.")


def augment(x: np.ndarray, rng: np.random.Generator, pad_crop: int, flip: bool) -> np.ndarray:
    """Random crop of the zero-padded batch (shift by up to pad_crop pixels each way), then
    a random horizontal flip of half the images on average. x: (N, H, W, C)."""
    n, height, width, _ = x.shape
    if pad_crop:
        padded = np.pad(x, ((0, 0), (pad_crop, pad_crop), (pad_crop, pad_crop), (0, 0)))
        dy, dx = rng.integers(0, 2 * pad_crop + 1, size=(2, n))
        rows = (dy[:, None] + np.arange(height))[:, :, None]
        cols = (dx[:, None] + np.arange(width))[:, None, :]
        x = padded[np.arange(n)[:, None, None], rows, cols]
    if flip:
        flipped = rng.random(n) < 0.5
        x = np.where(flipped[:, None, None, None], x[:, :, ::-1], x)
    return x


def train_batches(
    ds: Dataset, batch_size: int, seed: int, start_step: int = 0, *, pad_crop: int = 0,
    flip: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Infinite iterator of (uint8 images, int32 labels); batch i is global step start_step+i.

    Each epoch is one pass over a fresh permutation of the training set, steps_per_epoch =
    len(train) // batch_size (the remainder is dropped that epoch). pad_crop/flip:
    augmentation as in `augment`, deterministic from (seed, step)."""
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("start_step", start_step, 0)
    _check_int("pad_crop", pad_crop, 0)
    if batch_size > len(ds.x_train):
        raise ConfigError(
            f"batch_size={batch_size} is larger than the {len(ds.x_train)} training examples "
            f"of {ds.name}; use a smaller batch size.")
    return _train_iterator(ds.x_train, ds.y_train, batch_size, seed, start_step, pad_crop, flip)


def _train_iterator(x, y, batch_size, seed, start_step, pad_crop, flip):
    """The generator behind `train_batches` (arguments already checked)."""
    steps_per_epoch = len(x) // batch_size
    epoch, perm = None, None
    for step in itertools.count(start_step):
        e, i = divmod(step, steps_per_epoch)
        if e != epoch:
            epoch, perm = e, np.random.default_rng([seed, e]).permutation(len(x))
        index = perm[i * batch_size: (i + 1) * batch_size]
        images = x[index]
        if pad_crop or flip:
            rng = np.random.default_rng([seed, step, AUGMENT_STREAM])
            images = augment(images, rng, pad_crop, flip)
        yield images, y[index]


def eval_batches(x, y, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x_batch, y_batch, mask) over all examples in order, every batch of batch_size rows.

    The last batch is padded by repeating the final example and mask (bool) marks the real
    rows, so a jitted evaluation compiles once. Yields nothing for 0 examples."""
    _check_int("batch_size", batch_size, 1)
    if len(x) != len(y):
        raise DataError(f"eval_batches got {len(x)} images but {len(y)} labels.")
    return _eval_iterator(x, y, batch_size)


def _eval_iterator(x, y, batch_size):
    """The generator behind `eval_batches` (arguments already checked)."""
    for start in range(0, len(x), batch_size):
        rows = np.arange(start, start + batch_size)
        index = np.minimum(rows, len(x) - 1)
        yield x[index], y[index], rows < len(x)
