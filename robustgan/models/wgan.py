"""The WGAN-GP generator and critic of Samangouei et al., "Defense-GAN" (ICLR 2018),
appendix Table 6, for 28x28 images (MNIST, Fashion-MNIST).

Readings of the table, checked against the authors' code (models/dataset_models.py):
- Generator: FC(4096) = 4x4x256, ReLU, then three 5x5 transposed convolutions of stride 2
  (the table's stride 1 cannot grow 4x4 to 28x28), the first cropped from 8x8 to 7x7 as
  in the code, ReLU between them, sigmoid at the end. The table's widths are
  (256, 256, 128) (reshape, ConvT, ConvT); the code's net_dim=64 gives (256, 128, 64).
- Critic: Conv(64, 5x5, 2), Conv(128, 5x5, 2), Conv(256, 5x5, 2), each LeakyReLU(0.2),
  then FC(1). The table's first row is missing in the extraction and its last row says
  Sigmoid; the code (and WGAN-GP) has Conv(64) first and a linear output, which this
  follows: a WGAN critic scores, it does not classify.
- No BatchNorm (the code's configs set USE_BN: False).

The generator's transposed convolutions are `layers.ConvTranspose` in its 'columns' form
(the parameters and outputs of `nn.ConvTranspose(padding="SAME")`): XLA:CPU ran the
input-dilated convolutions of the plain form 9x slower than PyTorch in the forward pass
and slowly in the kernel gradient (benchmarks/RESULTS.md, Defense-GAN projection).

The generator's sigmoid is mapped onto `value_range` (low + (high - low) * sigmoid), so
its samples live in the data range the run uses ([0, 1]: exactly the paper's).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from robustgan.models.layers import ConvTranspose, check_image_shape

LATENT_DIM = 128  # the paper's and the code's z dimension
TABLE6_GENERATOR_WIDTHS = (256, 256, 128)
AUTHORS_GENERATOR_WIDTHS = (256, 128, 64)
CRITIC_WIDTHS = (64, 128, 256)


class WGANGenerator(nn.Module):
    """G: z (N, latent) -> images (N, 28, 28, channels) in `value_range` (Table 6).

    widths: (channels of the 4x4 grid the FC layer is reshaped to, then of the first two
    transposed convolutions).
    """

    widths: tuple[int, int, int] = TABLE6_GENERATOR_WIDTHS
    channels: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        grid, first, second = self.widths
        x = nn.relu(nn.Dense(4 * 4 * grid)(z)).reshape(z.shape[0], 4, 4, grid)
        x = nn.relu(ConvTranspose(first, (5, 5), (2, 2), form="columns")(x))
        x = x[:, :7, :7]  # 8x8 -> 7x7, so two more doublings give 28x28
        x = nn.relu(ConvTranspose(second, (5, 5), (2, 2), form="columns")(x))
        x = ConvTranspose(self.channels, (5, 5), (2, 2), form="columns")(x)
        low, high = self.value_range
        return low + (high - low) * nn.sigmoid(x)


class WGANCritic(nn.Module):
    """D: images (N, 28, 28, C) -> scores (N,), unbounded (Table 6, linear output)."""

    widths: tuple[int, int, int] = CRITIC_WIDTHS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_image_shape(x, "the Defense-GAN critic", 28, 28)
        for width in self.widths:
            x = nn.leaky_relu(nn.Conv(width, (5, 5), strides=(2, 2), padding="SAME")(x), 0.2)
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]
