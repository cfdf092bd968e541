"""The classifiers of Yan et al., "Deep Defense" (NeurIPS 2018), Sec. 4, laid out as the
MatConvNet reference models of the authors' code (CODE_NOTES, deep_defense): an MNIST
MLP and LeNet, a CIFAR-10 ConvNet and network in network, and AlexNet for ImageNet.

Each model is `__call__(x) = body(preprocess(x))`: `preprocess` is a fixed map of the
[0, 1] images into the space the authors fed their nets, where their regularizer's
DeepFool runs, via `module.apply(variables, u, method="body")`.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from robustgan.data.whitening import load_zca
from robustgan.errors import ConfigError
from robustgan.models.layers import ConvBNReLU, batch_stats_mode, check_image_shape, max_pool_2x2


class InputTransform(nn.Module):
    """Base of the models below. `preprocess(x) -> u`: u = input_scale * x - input_mean,
    then, if `whitening` names a `robustgan.data.whitening.save_zca` file, the ZCA map
    u <- (u.reshape(N, D) - mean) @ matrix (D = H*W*C, flattened NHWC). Nothing in it is
    trained. The authors' MNIST space, 0..255 minus the mean, is input_scale=255 and
    input_mean=255 * (MNIST train mean). Their CIFAR data were also ZCA-whitened, after a
    per-image contrast normalization that is not a fixed map and is not done here.
    Subclasses define `body(u, train=False, batch_stats=None) -> logits`.
    """

    num_classes: int
    input_scale: float = 1.0
    input_mean: float = 0.0
    whitening: str = ""

    def preprocess(self, x: jax.Array) -> jax.Array:
        u = self.input_scale * x - self.input_mean
        if not self.whitening:
            return u
        mean, matrix = load_zca(self.whitening)
        d = math.prod(u.shape[1:])
        if mean.shape != (d,):
            raise ConfigError(
                f"the whitening file {self.whitening!r} is for images of {mean.size} values; "
                f"this input of shape {tuple(u.shape)} has {d} per image")
        flat = jnp.dot(u.reshape(u.shape[0], d) - mean, matrix, precision=lax.Precision.HIGHEST)
        return flat.reshape(u.shape)

    def __call__(self, x: jax.Array, train: bool = False,
                 batch_stats: bool | None = None) -> jax.Array:
        return self.body(self.preprocess(x), train, batch_stats)


class YanMLP(InputTransform):
    """The MNIST MLP 784-500-150-10 with ReLU (Sec. 4.1). Takes 28x28 images."""

    @nn.compact
    def body(self, u: jax.Array, train: bool = False,
             batch_stats: bool | None = None) -> jax.Array:
        del train, batch_stats  # no dropout and no BatchNorm
        check_image_shape(u, "yan_mlp", 28, 28)
        u = nn.relu(nn.Dense(500)(u.reshape(u.shape[0], -1)))
        u = nn.relu(nn.Dense(150)(u))
        return nn.Dense(self.num_classes)(u)


class YanLeNet(InputTransform):
    """MatConvNet's MNIST LeNet (Sec. 4.1): conv5x5x20, maxpool 2, conv5x5x50, maxpool 2,
    FC 500, ReLU, FC; unpadded convolutions with no ReLU after them. Takes 28x28 images
    (28 -> 24 -> 12 -> 8 -> 4).
    """

    @nn.compact
    def body(self, u: jax.Array, train: bool = False,
             batch_stats: bool | None = None) -> jax.Array:
        del train, batch_stats  # no dropout and no BatchNorm
        check_image_shape(u, "yan_lenet", 28, 28)
        conv = partial(ConvBNReLU, kernel_size=5, padding="VALID", use_bn=False, relu=False)
        u = max_pool_2x2(conv(20)(u, False))
        u = max_pool_2x2(conv(50)(u, False))
        u = nn.relu(nn.Dense(500)(u.reshape(u.shape[0], -1)))
        return nn.Dense(self.num_classes)(u)


class YanConvNet(InputTransform):
    """The CIFAR-10 "ConvNet" (Sec. 4.2; MatConvNet's cifar LeNet): conv5x5x32, maxpool 2,
    ReLU, conv5x5x32, ReLU, avgpool 2, conv5x5x64, ReLU, avgpool 2, conv4x4x64 (unpadded),
    ReLU, conv1x1 to the logits. The 5x5 convs pad 2 pixels per side; pooling is 2x2 with
    stride 2 (MatConvNet's net pools 3x3 with stride 2 and padding). Takes 32x32 images
    (32 -> 16 -> 8 -> 4 -> 1).
    """

    @nn.compact
    def body(self, u: jax.Array, train: bool = False,
             batch_stats: bool | None = None) -> jax.Array:
        del train, batch_stats  # no dropout and no BatchNorm
        check_image_shape(u, "yan_convnet", 32, 32)
        conv = partial(ConvBNReLU, kernel_size=5, padding=2, use_bn=False)
        avg_pool = partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))
        u = max_pool_2x2(conv(32)(u, False))  # ReLU, max-pool: as the code's max-pool, ReLU
        u = avg_pool(conv(32)(u, False))
        u = avg_pool(conv(64)(u, False))
        u = ConvBNReLU(64, 4, padding="VALID", use_bn=False)(u, False)
        u = ConvBNReLU(self.num_classes, 1, use_bn=False, relu=False)(u, False)
        return u.reshape(u.shape[0], self.num_classes)  # fails unless the map is 1x1


class YanNIN(InputTransform):
    """The CIFAR-10 network in network (Sec. 4.2; MatConvNet's cifar NIN): three blocks of
    a conv (5x5x192, 5x5x192, 3x3x192) and two 1x1 "cccp" convs (160, 96; 192, 192;
    192, num_classes), ReLU after every conv but the last; 3x3 stride-2 max-pooling after
    block 1 and average pooling after block 2 (SAME padding, averages over the pixels
    inside the image, as MatConvNet), global average pooling at the end. No dropout.
    With `use_bn`, BatchNorm follows every conv but the last (the authors' NIN has it;
    Deep Defense keeps it frozen). Takes 32x32 images (32 -> 16 -> 8).
    """

    use_bn: bool = True

    @nn.compact
    def body(self, u: jax.Array, train: bool = False,
             batch_stats: bool | None = None) -> jax.Array:
        check_image_shape(u, "yan_nin", 32, 32)
        use_batch_stats = batch_stats_mode(train, batch_stats)
        conv = partial(ConvBNReLU, use_bn=self.use_bn)
        pool = {"window_shape": (3, 3), "strides": (2, 2), "padding": "SAME"}
        for features, kernel in ((192, 5), (160, 1), (96, 1)):
            u = conv(features, kernel)(u, use_batch_stats)
        u = nn.max_pool(u, **pool)
        for features, kernel in ((192, 5), (192, 1), (192, 1)):
            u = conv(features, kernel)(u, use_batch_stats)
        u = nn.avg_pool(u, **pool, count_include_pad=False)
        for features, kernel in ((192, 3), (192, 1)):
            u = conv(features, kernel)(u, use_batch_stats)
        u = ConvBNReLU(self.num_classes, 1, use_bn=False, relu=False)(u, False)
        return u.mean(axis=(1, 2))


class AlexNet(InputTransform):
    """AlexNet for ImageNet (Sec. 4.2), torchvision's layout: conv11x11x64 stride 4 pad 2,
    maxpool 3/2, conv5x5x192 pad 2, maxpool 3/2, conv3x3x384, conv3x3x256, conv3x3x256
    (pad 1), maxpool 3/2, then dropout 0.5, FC 4096, dropout 0.5, FC 4096, FC; ReLU after
    every conv and hidden FC. Takes 224x224 images, whose final feature map is already
    the 6x6 that torchvision's adaptive average pooling outputs.
    """

    @nn.compact
    def body(self, u: jax.Array, train: bool = False,
             batch_stats: bool | None = None) -> jax.Array:
        del batch_stats  # no BatchNorm
        check_image_shape(u, "alexnet", 224, 224)
        conv = partial(ConvBNReLU, use_bn=False)
        pool = partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
        u = pool(conv(64, 11, strides=4, padding=2)(u, False))
        u = pool(conv(192, 5, padding=2)(u, False))
        for features in (384, 256, 256):
            u = conv(features, 3, padding=1)(u, False)
        u = pool(u).reshape(u.shape[0], 6 * 6 * 256)  # fails unless the map is 6x6
        for _ in range(2):
            u = nn.Dropout(0.5, deterministic=not train)(u)
            u = nn.relu(nn.Dense(4096)(u))
        return nn.Dense(self.num_classes)(u)
