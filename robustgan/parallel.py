"""Data parallelism: one `jax.jit` step over a ('data',) device mesh.

Parameters are replicated, batches are split along their first axis. jit partitions the
step; BatchNorm statistics over a sharded batch are global-batch statistics (sync-BN).
Multi-host runs call `initialize()` first; every process then feeds its own rows of the
global batch.

On a CPU-only machine `use_cpu_cores()` (run when robustgan is imported) splits the host
into one JAX device per core, so that the same mesh spreads a batch over the cores.
"""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robustgan.errors import ConfigError

DATA_AXIS = "data"
CPU_DEVICES_ENV = "ROBUSTGAN_CPU_DEVICES"
MAX_CPU_DEVICES = 8


def use_cpu_cores() -> int | None:
    """Gives the XLA:CPU backend one device per core (a power of two, at most 8).

    XLA:CPU (jaxlib 0.10) runs each convolution on a single thread while the other cores
    idle (measured here: 1.0 CPU-seconds per second in convolutions, 1.9 in matmuls), so
    one CPU device leaves a conv net half-served on 2 cores. With one device per core the
    ('data',) mesh shards each batch over the cores and their convolutions run side by
    side: the D1 training step went from 1125 to 2167 images/s on this 2-core machine.
    A power of two keeps the usual batch sizes divisible.

    Leaves the count alone when the user chose one (ROBUSTGAN_CPU_DEVICES=N, where 1 turns
    this off, JAX_NUM_CPU_DEVICES, or --xla_force_host_platform_device_count in
    XLA_FLAGS), when JAX_PLATFORMS excludes the CPU, or when JAX's backends already
    started. Returns the count it set, else None.
    """
    if ("JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or "cpu" not in (os.environ.get("JAX_PLATFORMS") or "cpu")
            or jax.config.jax_num_cpu_devices != -1):
        return None
    requested = os.environ.get(CPU_DEVICES_ENV)
    if requested is not None:
        if not requested.isdigit() or int(requested) < 1:
            raise ConfigError(f"{CPU_DEVICES_ENV}={requested!r}: expected a positive integer")
        count = int(requested)
    else:
        cores = min(len(os.sched_getaffinity(0)), MAX_CPU_DEVICES)
        count = 1 << (cores.bit_length() - 1)
    if count == 1:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already ran something: its device count is fixed now
        if jax.default_backend() == "cpu" and jax.device_count() == 1:
            warnings.warn(
                f"robustgan was imported after JAX started, so the CPU stays one device and "
                f"convolutions use one of the {count} cores; import robustgan before running "
                f"any JAX operation (or set {CPU_DEVICES_ENV}=1 to silence this)",
                stacklevel=3)
        return None
    return count


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
            + (f" (on a CPU, {CPU_DEVICES_ENV}=1 gives one device)"
               if mesh.devices.flat[0].platform == "cpu" else "")
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
