"""Small MNIST convolutional classifiers: Wang & Yu's D1 and LeNet-5."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax

from robustgan.models.layers import ConvBNReLU, batch_stats_mode, check_image_shape, max_pool_2x2


class D1(nn.Module):
    """Model D1 of Wang & Yu, "A direct approach to robust deep learning using adversarial
    networks" (ICLR 2019), appendix Figure 3(a): conv3x3x16, conv5x5x32, maxpool 2,
    conv5x5x64, maxpool 2, FC. SAME padding; every conv is followed by BatchNorm and ReLU
    (with `use_bn=False`: a conv bias and ReLU). Takes 28x28 images (MNIST).
    """

    num_classes: int
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 batch_stats: bool | None = None) -> jax.Array:
        check_image_shape(x, "d1", 28, 28)
        use_batch_stats = batch_stats_mode(train, batch_stats)
        conv = partial(ConvBNReLU, use_bn=self.use_bn)
        x = conv(16, 3)(x, use_batch_stats)
        x = max_pool_2x2(conv(32, 5)(x, use_batch_stats))
        x = max_pool_2x2(conv(64, 5)(x, use_batch_stats))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class LeNet5(nn.Module):
    """LeNet-5 as in the L2L-DA code (Jang et al., ICCV 2019; CODE_NOTES, l2l_da):
    conv5x5x6 (pad 2), ReLU, maxpool 2, conv5x5x16, ReLU, maxpool 2, conv5x5x120, ReLU,
    FC 84, ReLU, FC. Unpadded convolutions except the first; takes 28x28 images, which the
    third convolution reduces to 1x1.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 batch_stats: bool | None = None) -> jax.Array:
        del train, batch_stats  # no dropout and no BatchNorm
        check_image_shape(x, "lenet5", 28, 28)
        conv = partial(ConvBNReLU, use_bn=False)
        x = max_pool_2x2(conv(6, 5, padding=2)(x, False))
        x = max_pool_2x2(conv(16, 5, padding="VALID")(x, False))
        x = conv(120, 5, padding="VALID")(x, False)
        x = nn.relu(nn.Dense(84)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)
