"""Networks of the generator attacks Jang et al. (ICCV 2019, Table 2) evaluate with, beside
the generators of models/generators.py (whose calling convention the generator here keeps:
`module(x, y, train=False, batch_stats=None)` -> a direction shaped like x):

- `AdvGANDiscriminator`: AdvGAN's D (Xiao et al., IJCAI 2018), telling x from x + G(x);
- `LinfNormalized`: GAP's scaling (Poursaeed et al., CVPR 2018, image-dependent L-inf):
  a generator's output divided by its per-example L-inf norm, so that eps times it lies on
  the eps-ball's boundary.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_TINY = 1e-12


class AdvGANDiscriminator(nn.Module):
    """D: images (N, H, W, C) -> logits (N,), D(x) = sigmoid(logit) the probability that x
    is clean. Three conv4x4 stride-2 layers of k, 2k, 4k channels with LeakyReLU(0.2),
    instance normalization after the last two, then one dense unit (after Xiao et al.'s
    C8-C16-C32-FC discriminator, k = 8)."""

    width: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.width
        h = nn.leaky_relu(nn.Conv(k, (4, 4), (2, 2), padding="SAME")(x), 0.2)
        for features in (2 * k, 4 * k):
            h = nn.Conv(features, (4, 4), (2, 2), padding="SAME", use_bias=False)(h)
            h = nn.leaky_relu(nn.InstanceNorm()(h), 0.2)
        return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]


class LinfNormalized(nn.Module):
    """`generator`'s output over its per-example L-inf norm: every example's direction
    has L-inf norm 1 (GAP's x_adv = clip(x + eps G(x) / ||G(x)||_inf))."""

    generator: nn.Module

    def __call__(self, x, y, train: bool = False, batch_stats: bool | None = None):
        g = self.generator(x, y, train=train, batch_stats=batch_stats)
        norm = jnp.abs(g).reshape(g.shape[0], -1).max(axis=1)
        return g / jnp.maximum(norm, _TINY).reshape((-1,) + (1,) * (g.ndim - 1))
