"""Classifier and substitute models A-F of Samangouei et al., "Defense-GAN" (ICLR 2018),
appendix Table 5, with the paddings of the authors' code (utils/network_builder.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from robustgan.errors import ConfigError
from robustgan.models.layers import ConvBNReLU, check_image_shape

# Layers before the output FC: ('conv', features, kernel, stride, padding) is conv + ReLU,
# ('dropout', p) drops with probability p, ('fc', units) is FC + ReLU (flattening first).
_A = (("conv", 64, 5, 1, "SAME"), ("conv", 64, 5, 2, "VALID"),
      ("dropout", 0.25), ("fc", 128), ("dropout", 0.5))
_B = (("dropout", 0.2), ("conv", 64, 8, 2, "SAME"), ("conv", 128, 6, 2, "VALID"),
      ("conv", 128, 5, 1, "VALID"), ("dropout", 0.5))
_C = (("conv", 128, 3, 1, "SAME"), ("conv", 64, 3, 2, "VALID"),
      ("dropout", 0.25), ("fc", 128), ("dropout", 0.5))
_D = (("fc", 200), ("dropout", 0.5), ("fc", 200), ("dropout", 0.5))


def _without_dropout(layers: tuple) -> tuple:
    return tuple(layer for layer in layers if layer[0] != "dropout")


# Table 5: "F (resp. E) shares the same architecture as B (resp. D) with the dropout
# layers removed".
ARCHITECTURES: dict[str, tuple] = {
    "a": _A, "b": _B, "c": _C, "d": _D, "e": _without_dropout(_D), "f": _without_dropout(_B),
}


class DefenseGANClassifier(nn.Module):
    """Defense-GAN Table 5 model `arch` ('a'..'f'), ending in FC(num_classes) logits
    (the table's softmax belongs to the loss). Takes 28x28 images (MNIST, F-MNIST).

    Dropout(p) drops with probability p, as the paper states. The authors' TF1 code passed
    p as the keep probability (model A's Dropout(0.25) keeps 25%); `tf1_keep_prob_quirk`
    reproduces that. The code's model D also lacks the table's second dropout layer.
    """

    num_classes: int
    arch: str
    tf1_keep_prob_quirk: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 batch_stats: bool | None = None) -> jax.Array:
        del batch_stats  # no BatchNorm
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"Defense-GAN model {self.arch!r} does not exist; "
                              f"choose one of {', '.join(ARCHITECTURES)}")
        check_image_shape(x, f"dgan_{self.arch}", 28, 28)
        for kind, *args in ARCHITECTURES[self.arch]:
            if kind == "conv":
                features, kernel, stride, padding = args
                x = ConvBNReLU(features, kernel, stride, padding, use_bn=False)(x, False)
            elif kind == "dropout":
                rate = 1.0 - args[0] if self.tf1_keep_prob_quirk else args[0]
                x = nn.Dropout(rate, deterministic=not train)(x)
            else:
                x = nn.relu(nn.Dense(args[0])(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
