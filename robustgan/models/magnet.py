"""The MagNet reformer (Meng & Chen 2017) as Samangouei et al., "Defense-GAN" (ICLR 2018),
ran it as a baseline: an auto-encoder for 28x28 images (MNIST, Fashion-MNIST).

Encoder: appendix Table 7, Conv(64, 5x5, 2), Conv(128, 5x5, 2), Conv(256, 5x5, 2), each
LeakyReLU(0.2), then FC(128) + tanh (SAME padding: 28 -> 14 -> 7 -> 4, as the authors'
code's `MnistEncoder`, models/dataset_models.py, whose widths are net_dim x (1, 2, 4)).
Decoder: the paper gives none. This one is the Table 6 generator (`wgan.WGANGenerator`):
the encoder's 128-d code is the generator's latent size, and the authors' code saves an
encoder and the generator together (`mode == 'enc'` in models/gan.py). Its sigmoid output
is mapped onto `value_range`, so reconstructions live in the data range.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from robustgan.models import wgan
from robustgan.models.layers import check_image_shape

TABLE7_ENCODER_WIDTHS = (64, 128, 256)


class MagNetEncoder(nn.Module):
    """Table 7: images (N, 28, 28, C) -> codes (N, latent_dim) in (-1, 1)."""

    widths: tuple[int, int, int] = TABLE7_ENCODER_WIDTHS
    latent_dim: int = wgan.LATENT_DIM

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_image_shape(x, "the MagNet encoder", 28, 28)
        for width in self.widths:
            x = nn.leaky_relu(nn.Conv(width, (5, 5), strides=(2, 2), padding="SAME")(x), 0.2)
        return nn.tanh(nn.Dense(self.latent_dim)(x.reshape(x.shape[0], -1)))


class MagNetAutoEncoder(nn.Module):
    """x -> generator(encoder(x)): the reformer, images in `value_range` to images in
    `value_range`. Parameters {'encoder': Table 7, 'generator': Table 6's generator}."""

    encoder_widths: tuple[int, int, int] = TABLE7_ENCODER_WIDTHS
    generator_widths: tuple[int, int, int] = wgan.TABLE6_GENERATOR_WIDTHS
    latent_dim: int = wgan.LATENT_DIM
    channels: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)

    def setup(self):
        self.encoder = MagNetEncoder(widths=self.encoder_widths, latent_dim=self.latent_dim)
        self.generator = wgan.WGANGenerator(widths=self.generator_widths,
                                            channels=self.channels, value_range=self.value_range)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.generator(self.encoder(x))
