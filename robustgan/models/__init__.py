"""Flax Linen classifiers, looked up by name with `get_model`.

Every classifier is called as `module(x, train=False, batch_stats=None) -> logits`
(float32, (N, num_classes)) on float32 NHWC images. Dropout is active iff `train` (pass
rngs={'dropout': key}); BatchNorm uses batch statistics iff `train` (or `batch_stats`
when given), and the caller then passes mutable=['batch_stats']. The Deep Defense models
(models.yan) are also `body(preprocess(x))`, both callable through `apply(..., method=)`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import flax.linen as nn

from robustgan.errors import ConfigError
from robustgan.models.convnets import D1, LeNet5
from robustgan.models.dgan_classifiers import ARCHITECTURES, DefenseGANClassifier
from robustgan.models.resnet import D2, ResNet18
from robustgan.models.yan import AlexNet, YanConvNet, YanLeNet, YanMLP, YanNIN

# The fixed input transform of the Deep Defense models (models.yan.InputTransform).
_YAN_INPUT = ("input_scale", "input_mean", "whitening")

# name -> (module class, fixed constructor arguments, keyword arguments a caller may set)
_REGISTRY: dict[str, tuple[type[nn.Module], dict, tuple[str, ...]]] = {
    "d1": (D1, {}, ("use_bn",)),
    "d2": (D2, {}, ("width",)),
    "lenet5": (LeNet5, {}, ()),
    "resnet18": (ResNet18, {}, ()),
    **{f"dgan_{arch}": (DefenseGANClassifier, {"arch": arch}, ("tf1_keep_prob_quirk",))
       for arch in ARCHITECTURES},
    "yan_mlp": (YanMLP, {}, _YAN_INPUT),
    "yan_lenet": (YanLeNet, {}, _YAN_INPUT),
    "yan_convnet": (YanConvNet, {}, _YAN_INPUT),
    "yan_nin": (YanNIN, {}, (*_YAN_INPUT, "use_bn")),
    "alexnet": (AlexNet, {}, ("input_scale", "input_mean")),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)



def _is_positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


# keyword argument -> (test of its value, what the test requires)
_KWARG_CHECKS = {
    "use_bn": (lambda v: isinstance(v, bool), "a bool"),
    "tf1_keep_prob_quirk": (lambda v: isinstance(v, bool), "a bool"),
    "width": (_is_positive_int, "a positive int"),
    "input_scale": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "input_mean": (_is_number, "a finite number"),
    "whitening": (lambda v: isinstance(v, str), "a str (the path of an .npz file, or '')"),
}


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The classifier `name` (one of MODEL_NAMES) with `num_classes` outputs."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    cls, fixed, allowed = _REGISTRY[name]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model {name!r} takes no argument(s) {', '.join(unknown)}; it accepts "
            f"{', '.join(allowed) or 'only num_classes'} (models: {', '.join(MODEL_NAMES)})"
        )
    if not _is_positive_int(num_classes):
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    for key, value in kwargs.items():
        valid, requirement = _KWARG_CHECKS[key]
        if not valid(value):
            raise ConfigError(f"model {name!r}: {key} must be {requirement}, got {value!r}")
    return cls(num_classes=int(num_classes), **fixed, **kwargs)
