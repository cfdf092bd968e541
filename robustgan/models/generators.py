"""Perturbation generators G0-G3 of Wang & Yu (ICLR 2019), appendix Figure 4.

Every generator is called `module(x, y, train=False, batch_stats=None)` and returns a
perturbation direction shaped like x, in [-1, 1] (a final tanh: the L-inf ball, Sec. 3);
the caller scales it by eps. What each one reads (`INPUT_KINDS`): G0 and G1 the image x
(encoder-decoders), G2 only x's shape (it draws z ~ N(0, I) from the 'noise' rng: pass
rngs={'noise': key}), G3 the label y (one-hot). BatchNorm follows the classifiers'
convention (models/layers.py): batch statistics iff `train` (or `batch_stats`).

Sizes: the figures are drawn for 28x28 (G0) and 32x32 (G1-G3) inputs. Here every
generator takes any H x W divisible by 4: encoders halve twice, decoders double twice, and
G2/G3 start from an (H/4, W/4, 4k) grid, so z has 256k entries on 32x32 images as in the
paper and 196k on 28x28 (MNIST). Other sizes raise ConfigError.

Readings of the figures: G0's last layer is deconv2d(5,2,c) then tanh (the extracted
figure repeats "deconv2d(5,2,c) - BN - ReLU", which cannot end in [-1, 1]). G1's encoder
and decoder follow the authors' code (CODE_NOTES): conv(3,1,k), conv(3,2,2k), conv(3,2,4k),
six residual blocks at 4k, deconv(3,2,2k), deconv(3,2,k), conv(3,1,c), tanh; the figure's
three stride-2 deconvolutions would return 64x64 images from a 32x32 input.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustgan.errors import ConfigError
from robustgan.models.layers import (
    BatchNorm,
    ConvBNReLU,
    ConvTranspose,
    ResidualBlock,
    batch_stats_mode,
)


def _check_size(x: jax.Array, name: str) -> None:
    if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
        raise ConfigError(
            f"generator {name} takes NHWC image batches whose height and width are "
            f"multiples of 4 (e.g. 28x28 or 32x32); got an input of shape {tuple(x.shape)}"
        )


class DeconvBNReLU(nn.Module):
    """Stride-2 transposed convolution (doubles H and W), BatchNorm, ReLU."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        k = self.kernel_size
        x = ConvTranspose(self.features, (k, k), (2, 2), use_bias=False)(x)
        return nn.relu(BatchNorm(use_running_average=not use_batch_stats)(x))


class ResidualDecoder(nn.Module):
    """The trunk G1-G3 share: residual-block(3,1,4k) x6 on an (H/4, W/4) grid,
    deconv(3,2,2k)-BN-ReLU, deconv(3,2,k)-BN-ReLU, conv(3,1,c), tanh."""

    width: int
    channels: int

    @nn.compact
    def __call__(self, h: jax.Array, use_batch_stats: bool) -> jax.Array:
        k = self.width
        for _ in range(6):
            h = ResidualBlock(4 * k)(h, use_batch_stats)
        h = DeconvBNReLU(2 * k, 3)(h, use_batch_stats)
        h = DeconvBNReLU(k, 3)(h, use_batch_stats)
        return jnp.tanh(nn.Conv(self.channels, (3, 3), padding="SAME")(h))


class G0(nn.Module):
    """MNIST encoder-decoder (Figure 4a): conv(5,2,k)-BN-ReLU, conv(5,2,2k)-BN-ReLU,
    deconv(5,2,k)-BN-ReLU, deconv(5,2,c), tanh. k = 64 in the paper."""

    num_classes: int
    width: int = 64

    @nn.compact
    def __call__(self, x, y, train: bool = False, batch_stats: bool | None = None):
        del y
        _check_size(x, "g0")
        use = batch_stats_mode(train, batch_stats)
        k = self.width
        h = ConvBNReLU(k, 5, 2)(x, use)
        h = ConvBNReLU(2 * k, 5, 2)(h, use)
        h = DeconvBNReLU(k, 5)(h, use)
        h = ConvTranspose(x.shape[-1], (5, 5), (2, 2))(h)
        return jnp.tanh(h)


class G1(nn.Module):
    """Residual encoder-decoder on the image (Figure 4b, laid out as the authors' code):
    conv(3,1,k), conv(3,2,2k), conv(3,2,4k) (each BN-ReLU), then `ResidualDecoder`.
    k = 64 ("autoencoder(64 filters)"); k = 8 is the narrow one of Table 5."""

    num_classes: int
    width: int = 64

    @nn.compact
    def __call__(self, x, y, train: bool = False, batch_stats: bool | None = None):
        del y
        _check_size(x, "g1")
        use = batch_stats_mode(train, batch_stats)
        k = self.width
        h = ConvBNReLU(k, 3)(x, use)
        h = ConvBNReLU(2 * k, 3, 2)(h, use)
        h = ConvBNReLU(4 * k, 3, 2)(h, use)
        return ResidualDecoder(k, x.shape[-1])(h, use)


class G2(nn.Module):
    """Decoder from Gaussian noise (Figure 4c): z ~ N(0, I) with (H/4)(W/4)4k entries
    (256k on 32x32), reshaped to (H/4, W/4, 4k), then `ResidualDecoder`. Reads only x's
    shape; z comes from the 'noise' rng, so one key gives one z per example."""

    num_classes: int
    width: int = 64

    @nn.compact
    def __call__(self, x, y, train: bool = False, batch_stats: bool | None = None):
        del y
        _check_size(x, "g2")
        n, height, width, channels = x.shape
        grid = (n, height // 4, width // 4, 4 * self.width)
        z = jax.random.normal(self.make_rng("noise"), grid, x.dtype)
        return ResidualDecoder(self.width, channels)(z, batch_stats_mode(train, batch_stats))


class G3(nn.Module):
    """Decoder from the label (Figure 4d): one-hot y, FC to (H/4)(W/4)4k units (256k on
    32x32), reshaped to (H/4, W/4, 4k), then `ResidualDecoder`. k = 16 in the paper.
    Reads x's shape only."""

    num_classes: int
    width: int = 16

    @nn.compact
    def __call__(self, x, y, train: bool = False, batch_stats: bool | None = None):
        _check_size(x, "g3")
        n, height, width, channels = x.shape
        grid = (n, height // 4, width // 4, 4 * self.width)
        one_hot = jax.nn.one_hot(y, self.num_classes, dtype=x.dtype)
        h = nn.Dense(grid[1] * grid[2] * grid[3])(one_hot).reshape(grid)
        return ResidualDecoder(self.width, channels)(h, batch_stats_mode(train, batch_stats))


GENERATORS: dict[str, type[nn.Module]] = {"g0": G0, "g1": G1, "g2": G2, "g3": G3}
INPUT_KINDS = {"g0": "x", "g1": "x", "g2": "z", "g3": "y"}


def get_generator(name: str, num_classes: int, width: int = 0) -> nn.Module:
    """Generator `name` (one of GENERATORS) of width k = `width` (0: the paper's k)."""
    if name not in GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    if width < 0:
        raise ConfigError(f"generator width must be >= 0 (0: the paper's), got {width}")
    cls = GENERATORS[name]
    return cls(num_classes=num_classes, width=width) if width else cls(num_classes=num_classes)
