"""Per-example outputs of a jitted function over a dataset, one padded batch at a time."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from robustgan import data, parallel

AttackFn = Callable  # (classifier, x, y, rng) -> x_adv


def map_batches(fn, tree, x, y, *, batch_size: int, rng, value_range=None, mesh=None,
                progress: bool = False, desc: str = "eval"):
    """Per-example outputs of the jitted `fn(tree, x_batch, y_batch, key)` over (x, y).

    Batches are padded to one shape (`data.eval_batches`), so fn compiles once; only the
    real rows come back, as numpy arrays (a pytree like fn's output). Batch i gets the
    key fold_in(rng, i). x: uint8 pixels scaled by `value_range`, or floats in the data
    range when value_range is None. y may be None (zeros are passed). With a mesh, tree
    is replicated and batches are sharded over it.
    """
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("no examples to evaluate")
    if value_range is not None and x.dtype != np.uint8:
        raise ValueError(
            f"with value_range={tuple(value_range)} x must hold uint8 pixels, got {x.dtype}; "
            "pass value_range=None for float inputs already in the data range"
        )
    y = np.zeros(len(x), np.int32) if y is None else np.asarray(y)
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh)
        tree = parallel.replicate(tree, mesh)
    outputs = []
    batches = tqdm(data.eval_batches(x, y, batch_size), total=-(-len(x) // batch_size),
                   disable=not progress, desc=desc, unit="batch")
    for i, (xb, yb, mask) in enumerate(batches):
        if value_range is not None:
            xb = data.scale(xb, value_range)
        if mesh is not None:
            xb, yb = parallel.shard_batch((xb, yb), mesh)
        out = jax.device_get(fn(tree, xb, yb, jax.random.fold_in(rng, i)))
        outputs.append(jax.tree.map(lambda v, m=mask: np.asarray(v)[m], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
