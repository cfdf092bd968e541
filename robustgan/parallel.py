"""Data parallelism: one `jax.jit` step over a ('data',) device mesh.

Parameters are replicated, batches are split along their first axis. jit partitions the
step; BatchNorm statistics over a sharded batch are global-batch statistics (sync-BN).
Multi-host runs call `initialize()` first; every process then feeds its own rows of the
global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robustgan.errors import ConfigError

DATA_AXIS = "data"


def initialize() -> None:
    """Starts multi-host JAX when a launcher set the coordinator (no-op on one host)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("ROBUSTGAN_MULTIHOST"):
        jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over all (or the first num_devices) devices with Auto axis types."""
    devices = jax.devices()[: num_devices or None]
    return Mesh(
        np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"config.{key}={batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Places a pytree (parameters, optimizer state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree, mesh: Mesh):
    """Places a global host batch on the mesh, split along axis 0.

    Each process contributes its own contiguous slice of the global batch, so a
    multi-host run reads the same examples as a single-host one.
    """
    sharding = batch_sharded(mesh)
    count, index = jax.process_count(), jax.process_index()

    def put(x):
        x = np.asarray(x)
        rows = x.shape[0] // count
        local = x[index * rows : (index + 1) * rows]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree.map(put, tree)
