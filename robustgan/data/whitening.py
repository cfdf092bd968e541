"""ZCA whitening, as Deep Defense (Yan et al., NeurIPS 2018; CODE_NOTES, deep_defense) fed
its CIFAR-10 networks: a fixed linear map of the flattened NHWC images, saved to an .npz
with `mean` (D,) and `matrix` (D, D) that the models' `whitening` attribute names.
"""

from __future__ import annotations

import functools

import numpy as np

from robustgan.errors import DataError


def zca(x, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """(mean, matrix) whitening the images x (N, H, W, C): with the covariance
    U diag(S) U^T of the flattened x, matrix = U diag(1 / sqrt(S + epsilon)) U^T, and
    (x.reshape(N, D) - mean) @ matrix has covariance close to the identity."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    mean = flat.mean(axis=0)
    centered = flat - mean
    s, u = np.linalg.eigh(centered.T @ centered / len(flat))
    matrix = (u / np.sqrt(np.maximum(s, 0.0) + epsilon)) @ u.T
    return mean.astype(np.float32), matrix.astype(np.float32)


def save_zca(path, x, epsilon: float = 1e-2) -> None:
    """Write `zca(x, epsilon)` to the .npz file `path`."""
    mean, matrix = zca(x, epsilon)
    with open(path, "wb") as f:  # np.savez(path) would append '.npz' to other names
        np.savez(f, mean=mean, matrix=matrix)


@functools.lru_cache
def load_zca(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, matrix) from a `save_zca` file, read once per path (read-only float32)."""
    try:
        with np.load(path) as f:
            mean, matrix = (np.asarray(f[key], np.float32) for key in ("mean", "matrix"))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read the whitening file {path!r} (an .npz with 'mean' and "
                        f"'matrix', as robustgan.data.whitening.save_zca writes): {e}") from e
    d = mean.size
    if mean.shape != (d,) or matrix.shape != (d, d):
        raise DataError(f"whitening file {path!r}: 'mean' must have shape (D,) and 'matrix' "
                        f"(D, D); got {mean.shape} and {matrix.shape}")
    for a in (mean, matrix):
        a.setflags(write=False)
    return mean, matrix
