"""The L2L-DA perturbation generator g_phi(x, y, z, delta, grad) of Jang et al. (ICCV
2019, Sec. 5.1 "Implementation"), laid out as the authors' code (CODE_NOTES "l2l_da"):

  input = concat[x, normalized grad, delta, z tiled] (delta and z when used);
  down0: conv3x3 s1, LeakyReLU(0.2)                         -> H,   k
  down1: [z tiled] conv4x4 s2, conditional BN, LeakyReLU    -> H/2, 2k
  down2: [z tiled] conv4x4 s2, LeakyReLU                    -> H/4, 4k
  up2:   convT4x4 s2, conditional BN, ReLU, concat down1    -> H/2
  up1:   convT4x4 s2, conditional BN, ReLU, concat down0    -> H
  out:   conv3x3 to C channels, tanh: a direction in [-1, 1] that Eq. 5 scales by eps_step.

z (8 dims from N(0, I), drawn by the caller) goes through a 2-layer MLP and is tiled
spatially onto every down block's input ("the input and the first two convolutional
layers", Sec. 5.1). The label enters only through class-conditional BatchNorm
(De Vries et al.; Dumoulin et al.): per-class scale and offset rows added to shared ones.
The channel widths k, 2k, 4k are this module's reading (the code's base width is 64).

Ablation switches (Table 1b): `use_delta`, `use_y` (off: plain BatchNorm, shared scale and
offset), `use_z` (off: the L2L baseline's deterministic generator) and `grad_norm`:
'example' divides the gradient by its per-example Frobenius norm (Sec. 5.2.1), 'channel'
by its L2 norm over H x W per channel (the authors' code), 'none' leaves it raw (L2L*).
Any H x W divisible by 4 (28x28, 32x32). BatchNorm uses batch statistics iff `train`
(models/layers.py convention); the caller then passes mutable=['batch_stats'].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustgan.errors import ConfigError
from robustgan.models.layers import BatchNorm, Conv, ConvTranspose, batch_stats_mode

GRAD_NORMS = ("example", "channel", "none")
_TINY = 1e-12


def normalize_gradient(grad: jax.Array, mode: str) -> jax.Array:
    """The gradient input: divided by its per-example ('example') or per-channel
    ('channel') L2 norm, or as it is ('none')."""
    if mode == "none":
        return grad
    axes = (1, 2, 3) if mode == "example" else (1, 2)
    norm = jnp.sqrt(jnp.sum(jnp.square(grad), axis=axes, keepdims=True))
    return grad / jnp.maximum(norm, _TINY)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine part, then scale = shared + per-class[y] and
    offset = shared + per-class[y] (shared scale N(1, 0.02), per-class N(0, 0.02), offsets
    0, as the authors' code). use_y=False: the shared rows only (plain BatchNorm)."""

    num_classes: int
    use_y: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, use_batch_stats: bool) -> jax.Array:
        h = BatchNorm(use_running_average=not use_batch_stats, use_scale=False,
                      use_bias=False)(x)
        c = x.shape[-1]
        normal = nn.initializers.normal(0.02)
        scale = 1.0 + self.param("scale", normal, (c,))
        offset = self.param("offset", nn.initializers.zeros_init(), (c,))
        if self.use_y:
            scale = scale + self.param("class_scale", normal, (self.num_classes, c))[y]
            offset = offset + self.param(
                "class_offset", nn.initializers.zeros_init(), (self.num_classes, c))[y]
            scale, offset = scale[:, None, None, :], offset[:, None, None, :]
        return h * scale + offset


class UNetGenerator(nn.Module):
    """g_phi of Eq. 5: `module(x, y, z, delta, grad, train=False, batch_stats=None)` ->
    direction shaped like x, in [-1, 1]. z: (N, z_dim); the unused inputs (delta with
    use_delta=False, y with use_y=False, z with use_z=False) are ignored."""

    num_classes: int
    width: int = 64
    z_dim: int = 8
    use_z: bool = True
    use_y: bool = True
    use_delta: bool = True
    grad_norm: str = "example"

    @nn.compact
    def __call__(self, x, y, z, delta, grad, train: bool = False,
                 batch_stats: bool | None = None):
        if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
            raise ConfigError(
                "the U-Net generator takes NHWC image batches whose height and width are "
                f"multiples of 4 (e.g. 28x28 or 32x32); got an input of shape {tuple(x.shape)}")
        if self.grad_norm not in GRAD_NORMS:
            raise ConfigError(f"grad_norm must be one of {GRAD_NORMS}, got {self.grad_norm!r}")
        use = batch_stats_mode(train, batch_stats)
        k = self.width
        code = None
        if self.use_z:
            code = nn.Dense(self.z_dim)(nn.relu(nn.Dense(self.z_dim)(z.astype(x.dtype))))
        inputs = [x, normalize_gradient(grad, self.grad_norm)]
        if self.use_delta:
            inputs.append(delta)
        h = jnp.concatenate(inputs, axis=-1)
        d0 = nn.leaky_relu(Conv(k, (3, 3))(h, code), 0.2)
        d1 = Conv(2 * k, (4, 4), (2, 2), use_bias=False)(d0, code)
        d1 = nn.leaky_relu(ConditionalBatchNorm(self.num_classes, self.use_y)(d1, y, use), 0.2)
        d2 = nn.leaky_relu(Conv(4 * k, (4, 4), (2, 2))(d1, code), 0.2)
        u2 = ConvTranspose(2 * k, (4, 4), (2, 2), use_bias=False, form="columns")(d2)
        u2 = nn.relu(ConditionalBatchNorm(self.num_classes, self.use_y)(u2, y, use))
        u1 = ConvTranspose(k, (4, 4), (2, 2), use_bias=False, form="columns")(
            jnp.concatenate([u2, d1], axis=-1))
        u1 = nn.relu(ConditionalBatchNorm(self.num_classes, self.use_y)(u1, y, use))
        out = Conv(x.shape[-1], (3, 3), form="columns")([u1, d0])
        return jnp.tanh(out)
