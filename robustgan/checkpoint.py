"""Resumable checkpoints with orbax `CheckpointManager`.

A run saves its whole training state every `checkpoint_every` steps; a restarted run
restores the newest one. Orbax writes each step to a temporary directory and renames
it when complete, so a run killed mid-save leaves only finished checkpoints behind.
States are saved as plain nested dicts of arrays (`flax.serialization`), never pickled.
"""

from __future__ import annotations

import os

import flax.serialization
import jax
import orbax.checkpoint as ocp

from robustgan.errors import CheckpointError


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The steps that have a checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state) -> None:
        tree = flax.serialization.to_state_dict(state)
        self._manager.save(step, args=ocp.args.StandardSave(tree))

    def restore(self, target, step: int | None = None):
        """Restores `step` (default: newest) into the structure of `target`.

        Raises CheckpointError, touching nothing on disk, when the checkpoint is
        unreadable or holds other shapes than `target` (another model or config).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        template = flax.serialization.to_state_dict(target)
        abstract = jax.tree.map(_on_this_host, template)
        where = os.path.join(self.directory, str(step))
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            state = flax.serialization.from_state_dict(target, restored)
        except Exception as e:  # orbax raises many types; all mean "cannot use this one"
            raise CheckpointError(
                f"checkpoint {where} cannot be restored into this run's state "
                f"({type(e).__name__}: {str(e)[:300]}). It is corrupt or was written by a "
                f"different model/config. Nothing was deleted: move that step directory "
                f"away to resume from an earlier checkpoint, or use a new --workdir."
            ) from e
        _check_shapes(template, flax.serialization.to_state_dict(state), where)
        return state

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _on_this_host(leaf) -> jax.ShapeDtypeStruct:
    """The leaf's shape, dtype and sharding; an abstract leaf without a sharding (an
    `eval_shape` template) goes to this host's first device, not to the devices that saved
    the checkpoint (a run trained on 8 GPUs restores on one CPU)."""
    abstract = ocp.utils.to_shape_dtype_struct(leaf)
    if getattr(abstract, "sharding", None) is None:
        abstract = jax.ShapeDtypeStruct(
            abstract.shape, abstract.dtype,
            sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return abstract


def _check_shapes(expected, restored, where: str) -> None:
    leaves_e, tree_e = jax.tree.flatten(expected)
    leaves_r, tree_r = jax.tree.flatten(restored)
    bad = tree_e != tree_r or any(
        getattr(a, "shape", None) != getattr(b, "shape", None)
        for a, b in zip(leaves_e, leaves_r, strict=True)
    )
    if bad:
        raise CheckpointError(
            f"checkpoint {where} holds arrays of other shapes than this run's model; it was "
            f"written by a different model/config. Use a new --workdir or the matching config."
        )
