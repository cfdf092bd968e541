"""Training methods: the registry of `MethodSpec`s, one line per method.

`train.py` knows nothing method-specific: it builds the Method that config.method names,
calls `init`, then `train_step` in a loop, then evaluates `classifier(state)` (if any).
A new method is a module here that defines its builder and spec, plus one line below
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from robustgan.errors import ConfigError
from robustgan.methods import (
    advnet,
    deep_defense,
    deepfool_at,
    defense_gan,
    eat,
    l2l_da,
    magnet,
    parseval,
    supervised,
)
from robustgan.methods.base import Method, MethodSpec

REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    supervised.STANDARD,
    supervised.PGD_AT,
    advnet.ADVNET,
    eat.EAT,
    deep_defense.DEEP_DEFENSE,
    deepfool_at.DEEPFOOL_AT,
    parseval.PARSEVAL,
    defense_gan.DEFENSE_GAN,
    l2l_da.L2L_DA,
    l2l_da.L2L,
    magnet.MAGNET,
)}


def spec(name: str) -> MethodSpec:
    """The registered method `name`, or a ConfigError listing the methods."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {tuple(REGISTRY)}")
    return REGISTRY[name]


def build(config, num_classes: int, runs=None) -> Method:
    """The Method named by config.method; runs: its references' loaded runs (`runs.py`)."""
    return spec(config.method).build(config, num_classes, runs or {})


__all__ = ["REGISTRY", "Method", "MethodSpec", "build", "spec"]
