"""CIFAR-style ResNets (v1, post-activation basic blocks; see layers.ResidualBlock)."""

from __future__ import annotations

import flax.linen as nn
import jax

from robustgan.models.layers import ResNetTrunk, batch_stats_mode, check_image_shape


class D2(nn.Module):
    """Model D2 of Wang & Yu (ICLR 2019), appendix Figure 3(b), laid out as the authors'
    code does (CODE_NOTES, advnet): ResNet-20, i.e. a conv3x3x16 stem, then 3 stages of
    3 basic blocks with 16/32/64 filters (stride 2 at the start of stages 2 and 3; 1x1
    projection shortcuts), global average pooling (the paper's avgpool(8)) and FC. The
    figure's first line, "conv2d(3,1,16) x3", is read as stem + stage 1 of the code.
    `width` multiplies every filter count (width=10: the wide variant of Table 8).
    ResNet v1: conv-BN-ReLU blocks, addition before the last ReLU. 3x3 convs pad 1 pixel
    per side (PyTorch style; the authors' TF code used SAME, which pads a stride-2 conv
    on the bottom/right only). Takes 32x32 images.
    """

    num_classes: int
    width: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 batch_stats: bool | None = None) -> jax.Array:
        check_image_shape(x, "d2", 32, 32)
        w = self.width
        trunk = ResNetTrunk(16 * w, (16 * w, 32 * w, 64 * w), (3, 3, 3), (1, 2, 2))
        x = trunk(x, batch_stats_mode(train, batch_stats))
        return nn.Dense(self.num_classes)(x)


class ResNet18(nn.Module):
    """The standard CIFAR ResNet-18 (He et al. 2016, CIFAR variant): conv3x3x64 stem with
    no max-pool, 4 stages of 2 basic blocks with 64/128/256/512 filters and strides
    1/2/2/2 (1x1 projection shortcuts), global average pooling, FC. ResNet v1 blocks as
    in D2. Takes 32x32 images.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 batch_stats: bool | None = None) -> jax.Array:
        check_image_shape(x, "resnet18", 32, 32)
        trunk = ResNetTrunk(64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
        x = trunk(x, batch_stats_mode(train, batch_stats))
        return nn.Dense(self.num_classes)(x)
