"""The one view of a trained model that attacks and evaluation see.

A `Classifier` is a pytree: its variables are leaves (so it passes through `jax.jit`
and `jax.grad` like any array), while the apply function, the data bounds and the class
count are static. A defense front-end (Defense-GAN's projection, ATGAN's generator) is
part of `apply_fn`, so every attack runs against every defended model the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from flax import struct

ApplyFn = Callable[[Any, jax.Array, jax.Array | None], jax.Array]


@struct.dataclass
class Classifier:
    """`logits(x, rng)` of a model in inference mode, with its input bounds.

    apply_fn: (variables, x, rng) -> logits; must be hashable and compare by value
      (a `ModelApply` or a module-level function) so jitted attacks do not retrace.
    variables: the model's parameters and state (a pytree).
    bounds: (low, high) of valid inputs: the data range.
    num_classes: number of output classes.
    """

    apply_fn: ApplyFn = struct.field(pytree_node=False)
    variables: Any
    bounds: tuple[float, float] = struct.field(pytree_node=False)
    num_classes: int = struct.field(pytree_node=False)

    def logits(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return self.apply_fn(self.variables, x, rng)


@dataclasses.dataclass(frozen=True)
class ModelApply:
    """Applies a Flax Linen module without changing its state.

    batch_norm='eval' uses the running averages; 'batch_stats' normalizes with the
    statistics of the batch being attacked (as Wang & Yu's code evaluated) and throws
    the updated averages away. Dropout is off in both. Modules follow the models/
    calling convention `module(x, train=..., batch_stats=...)`. method: the module's
    method to apply (None: `__call__`; 'body': a model with a fixed first layer, applied
    to inputs already in its input space, as Deep Defense measures perturbations there).
    """

    module: nn.Module
    batch_norm: str = "eval"
    method: str | None = None

    def __post_init__(self):
        if self.batch_norm not in ("eval", "batch_stats"):
            raise ValueError(f"batch_norm must be 'eval' or 'batch_stats', got {self.batch_norm!r}")

    def __call__(self, variables, x, rng=None):
        if self.batch_norm == "eval":
            return self.module.apply(variables, x, train=False, method=self.method)
        logits, _ = self.module.apply(
            variables, x, train=False, batch_stats=True, mutable=["batch_stats"],
            method=self.method,
        )
        return logits


def has_input_layer(classifier: Classifier) -> bool:
    """Whether the classifier's model has a fixed first layer (a module with `preprocess`
    and `body` methods, models/yan.py)."""
    fn = classifier.apply_fn
    return (isinstance(fn, ModelApply) and fn.method is None
            and hasattr(fn.module, "preprocess") and hasattr(fn.module, "body"))


def model_input_space(classifier: Classifier, x: jax.Array) -> tuple[Classifier, jax.Array]:
    """(the classifier from its model's input space on, x mapped into that space) for a
    model with a fixed first layer (`has_input_layer`: the authors' mean-subtracted 0-255
    or whitened inputs in models/yan.py), where Deep Defense measures ||r|| / ||x||. The
    bounds stay the data's: only attacks that ignore them (unclipped DeepFool) apply. A
    model without such a layer has no separate input space: ValueError."""
    if not has_input_layer(classifier):
        raise ValueError("model_input_space: the model has no fixed first layer (a module "
                         "with preprocess and body, models/yan.py); measure in 'data' or "
                         "'pixels' space instead")
    fn = classifier.apply_fn
    u = fn.module.apply(classifier.variables, x, method="preprocess")
    return classifier.replace(apply_fn=dataclasses.replace(fn, method="body")), u
