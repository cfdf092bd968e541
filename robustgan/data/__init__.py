"""Datasets: sources (tfds, idx, imagefolder, npz, embedded), scaling, batch iterators.

`load_dataset(config.data)` returns a `Dataset` of raw uint8 pixels; `scale` maps them to
the model's value range; `train_batches` and `eval_batches` iterate over them.
"""

from robustgan.data.batches import eval_batches, scale, train_batches
from robustgan.data.dataset import Dataset
from robustgan.data.load import default_source, load_dataset

__all__ = [
    "Dataset",
    "default_source",
    "eval_batches",
    "load_dataset",
    "scale",
    "train_batches",
]
