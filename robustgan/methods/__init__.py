"""Training methods. Each builds a `Method`: the pure functions `train.py` runs.

`train.py` knows nothing method-specific: it calls `init`, then `train_step` in a loop,
then evaluates `classifier(state)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from robustgan.classifier import Classifier
from robustgan.errors import ConfigError

State = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Method:
    """init(rng, sample_x) -> state; train_step(state, x, y, rng) -> (state, metrics);
    classifier(state) -> the Classifier that attacks and evaluation see."""

    init: Callable[[jax.Array, jax.Array], State]
    train_step: Callable[[State, jax.Array, jax.Array, jax.Array], tuple[State, Metrics]]
    classifier: Callable[[State], Classifier]


def build(config, num_classes: int) -> Method:
    """The Method named by config.method."""
    from robustgan.methods import advnet, eat, supervised

    builders = {"standard": supervised.standard, "pgd_at": supervised.pgd_at,
                "advnet": advnet.advnet, "eat": eat.eat}
    if config.method not in builders:
        raise ConfigError(f"unknown method {config.method!r}; choose one of {sorted(builders)}")
    return builders[config.method](config, num_classes)
