"""Building blocks shared by the classifiers: pooling, conv-BN-ReLU, the residual block.

BatchNorm everywhere uses momentum 0.9 and epsilon 1e-5. A module normalizes with batch
statistics iff `batch_stats_mode(train, batch_stats)` is true; the caller then passes
`mutable=['batch_stats']`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from robustgan.errors import ConfigError

BatchNorm = partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
TRANSPOSED_CONV_FORMS = ("subpixel", "columns")
CONV_FORMS = ("xla", "columns")
_NHWC = ("NHWC", "HWIO", "NHWC")


def batch_stats_mode(train: bool, batch_stats: bool | None) -> bool:
    """Whether BatchNorm uses the batch's statistics: `train` unless overridden."""
    return train if batch_stats is None else batch_stats


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 on NHWC input (odd trailing rows/columns dropped).

    For even H and W this is a reshape and a max, whose backward pass is a cheap
    elementwise mask instead of XLA:CPU's slow select-and-scatter; otherwise it falls
    back to `nn.max_pool`. On ties the gradient is shared among the maxima rather
    than sent to the first one.
    """
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def check_image_shape(x: jax.Array, model: str, height: int, width: int) -> None:
    """Raise ConfigError unless x is a batch of NHWC images of height x width pixels."""
    if x.ndim != 4 or x.shape[1:3] != (height, width):
        raise ConfigError(
            f"{model} takes NHWC image batches of shape (N, {height}, {width}, C) "
            f"(any channel count C); got an input of shape {tuple(x.shape)}. "
            "Resize or pad the data, or pick a model made for this image size."
        )


class ConvBNReLU(nn.Module):
    """Convolution, then BatchNorm (if `use_bn`, else a conv bias), then ReLU (if `relu`).

    `padding` is 'SAME', 'VALID' or an int p (p pixels on every side, as PyTorch's
    `padding=p`).
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: str | int = "SAME"
    use_bn: bool = True
    relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        k, s = self.kernel_size, self.strides
        x = nn.Conv(self.features, (k, k), (s, s), padding=self.padding,
                    use_bias=not self.use_bn)(x)
        if self.use_bn:
            x = BatchNorm(use_running_average=not use_batch_stats)(x)
        return nn.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
    """ResNet v1 basic block (He et al. 2016): post-activation, conv-BN-ReLU-conv-BN,
    plus the input (or a 1x1 strided conv-BN projection of it when the shape changes),
    then ReLU. 3x3 convolutions pad 1 pixel on every side (PyTorch's convention)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        y = ConvBNReLU(self.features, 3, self.strides, padding=1)(x, use_batch_stats)
        y = ConvBNReLU(self.features, 3, padding=1, relu=False)(y, use_batch_stats)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = ConvBNReLU(self.features, 1, self.strides, padding=0, relu=False)(
                x, use_batch_stats)
        return nn.relu(x + y)


class ResNetTrunk(nn.Module):
    """3x3 conv-BN-ReLU stem, then stages of `ResidualBlock`s, then global average pool.

    stage_features[i] filters and stage_blocks[i] blocks in stage i; the first block of
    stage i has stride stage_strides[i].
    """

    stem_features: int
    stage_features: Sequence[int]
    stage_blocks: Sequence[int]
    stage_strides: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        x = ConvBNReLU(self.stem_features, 3, padding=1)(x, use_batch_stats)
        stages = zip(self.stage_features, self.stage_blocks, self.stage_strides, strict=True)
        for features, blocks, strides in stages:
            for i in range(blocks):
                x = ResidualBlock(features, strides if i == 0 else 1)(x, use_batch_stats)
        return x.mean(axis=(1, 2))


class ConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, (k, k), (s, s), padding="SAME")`, same parameters and
    outputs, in a form whose derivatives XLA:CPU runs fast.

    Why: XLA:CPU computes the kernel gradient of a transposed (input-dilated) convolution
    with a slow generic loop: for G0's 7x7x128 -> 14x14x64 layer at batch 64 it took
    263 ms against 15 ms for the forward pass. Output pixel s*i + p receives the kernel
    taps t with (p + t - pad) divisible by s, from input pixel i + (p + t - pad) / s,
    where pad is the low padding lax.conv_transpose uses for 'SAME'. Two forms:
    - 'subpixel': one ordinary convolution to s*s*features channels, then a pixel shuffle;
      every derivative is an ordinary convolution.
    - 'columns': one matrix product, x @ kernel (each input pixel's k*k*features
      columns), then col2im (`_col2im`); its derivatives are matrix products and slices,
      reverse mode only. For 4x4 stride-2 kernels the sub-pixel convolution slides 3x3
      windows, 2.25x the 4 taps each output pixel uses, and XLA:CPU ran those kernel
      gradients at about 16 GFLOP/s against 45-90 for its matrix products: the L2L-DA
      U-Net's generator update (T = 2, batch 100, one CPU device) took 4.4 s in this form
      against 6.3 s (benchmarks/RESULTS.md, L2L-DA).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    use_bias: bool = True
    form: str = "subpixel"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.form not in TRANSPOSED_CONV_FORMS:
            raise ConfigError(f"unknown transposed-convolution form {self.form!r}; choose "
                              f"one of {TRANSPOSED_CONV_FORMS}")
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features))
        y = (transposed_conv_columns(x, kernel, self.strides) if self.form == "columns"
             else self._subpixel(x, kernel))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y


    def _subpixel(self, x, kernel):
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        (rows, pad_h), (cols, pad_w) = _phase_taps(kh, sh), _phase_taps(kw, sw)
        # phase_kernel[a, b, :, p, q, :]: the kernel of output phase (p, q) at window
        # offset (a, b); tap -1 picks the zero row/column appended to the kernel.
        padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
        phase_kernel = padded[rows.T[:, None, :, None], cols.T[None, :, None, :]]
        phase_kernel = phase_kernel.transpose(0, 1, 4, 2, 3, 5)
        y = lax.conv_general_dilated(
            x, phase_kernel.reshape(*phase_kernel.shape[:3], -1), (1, 1), (pad_h, pad_w),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        n, h, w, _ = y.shape
        y = y.reshape(n, h, w, sh, sw, self.features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h * sh, w * sw, self.features)


class Conv(nn.Module):
    """`nn.Conv(features, kernel_size, strides, padding="SAME")`, same parameters (the
    name `Conv_<i>` too) and outputs, with two options for XLA:CPU's sake.

    `module(x, code)`: the input is x with a per-example vector code (N, d) tiled over its
    grid as d more channels (the kernel's input features are x's and then code's). The
    tiled part is not materialized: at every output pixel it is code times the sum of the
    kernel taps that fall inside the grid (`tiled_code_conv`), a d-deep matrix product.
    x may be a list of arrays on one grid, the input their concatenation along features,
    which is not materialized either: each is convolved with its rows of the kernel.

    form 'columns' (stride 1, odd kernels): the convolution as ConvTranspose's 'columns'
    form with the same kernel (for stride 1 and an odd kernel 'SAME' pads both alike), one
    matrix product and a col2im whose derivatives are matrix products and slices. For few
    output channels XLA:CPU's convolution is slow: the L2L-DA U-Net's last layer (3x3,
    128 -> 1 channel, 28x28, batch 100) took 72 ms forward and backward against 31 ms in
    this form (benchmarks/RESULTS.md, L2L-DA)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    use_bias: bool = True
    form: str = "xla"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | Sequence[jax.Array],
                 code: jax.Array | None = None) -> jax.Array:
        if self.form not in CONV_FORMS:
            raise ConfigError(f"unknown convolution form {self.form!r}; choose one of "
                              f"{CONV_FORMS}")
        if self.form == "columns" and (tuple(self.strides) != (1, 1)
                                       or not all(k % 2 for k in self.kernel_size)):
            raise ConfigError("the 'columns' convolution takes stride 1 and odd kernels; got "
                              f"strides {self.strides}, kernel {self.kernel_size}")
        parts = list(x) if isinstance(x, (list, tuple)) else [x]
        bounds = np.cumsum([0] + [part.shape[-1] for part in parts])
        in_features = bounds[-1] + (0 if code is None else code.shape[-1])
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, int(in_features), self.features),
                            self.param_dtype)
        *parts, kernel, code = nn.dtypes.promote_dtype(*parts, kernel, code)
        y = sum(self._convolve(part, kernel[:, :, lo:hi])
                for part, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True))
        if code is not None:
            y = y + tiled_code_conv(code, kernel[:, :, bounds[-1]:], self.strides,
                                    parts[0].shape[1:3])
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,),
                               self.param_dtype)
        return y

    def _convolve(self, x, kernel):
        if self.form == "columns":
            return transposed_conv_columns(x, kernel, (1, 1))
        return lax.conv_general_dilated(x, kernel, self.strides, "SAME",
                                        dimension_numbers=_NHWC)


def tiled_code_conv(code: jax.Array, kernel: jax.Array, strides, grid) -> jax.Array:
    """conv(code (N, d) tiled over a grid (H, W), kernel, strides, 'SAME') as
    code @ tap_sums, where tap_sums[i, j] sums the kernel taps that output pixel (i, j)
    reads inside the grid: the convolution of a ones image with the kernel's d x features
    columns as output channels."""
    kh, kw, d, f = kernel.shape
    ones = jnp.ones((1, *grid, 1), kernel.dtype)
    tap_sums = lax.conv_general_dilated(ones, kernel.reshape(kh, kw, 1, d * f), strides,
                                        "SAME", dimension_numbers=_NHWC)[0]
    return jnp.einsum("nd,hwdf->nhwf", code, tap_sums.reshape(*tap_sums.shape[:2], d, f))


def transposed_conv_columns(x: jax.Array, kernel: jax.Array, strides) -> jax.Array:
    """lax.conv_transpose(x, kernel, strides, 'SAME') as x @ kernel (each input pixel's
    kh*kw*features columns) and `_col2im`."""
    kh, kw, c, f = kernel.shape
    columns = jnp.dot(x, kernel.transpose(2, 0, 1, 3).reshape(c, -1))
    return _col2im((kh, kw), tuple(strides))(columns.reshape(*x.shape[:3], kh, kw, f))


def _col2im(kernel_size: tuple[int, int], strides: tuple[int, int]):
    """col2im of a 'SAME' transposed convolution: (N, H, W, kh, kw, F) columns ->
    (N, sh H, sw W, F), output pixel s*i + p the sum of tap t of the columns of input pixel
    i + (p + t - pad) / s (`_phase_taps`); as a custom VJP (reverse mode only) whose
    backward pass is its transpose, im2col (slices of the output gradient). JAX derives a
    sum of kh*kw zero-padded copies of the columns instead, whose transposing copy took
    22 s of a 30 s generator update (T = 1) in one profile."""
    (kh, kw), (sh, sw) = kernel_size, strides
    (rows, pad_h), (cols, pad_w) = _phase_taps(kh, sh), _phase_taps(kw, sw)
    # where[t] = (p, a): tap t reaches output phase p from window position a
    where_h = {int(t): (p, a) for (p, a), t in np.ndenumerate(rows) if t >= 0}
    where_w = {int(t): (q, b) for (q, b), t in np.ndenumerate(cols) if t >= 0}

    @jax.custom_vjp
    def col2im(columns):
        n, h, w, _, _, f = columns.shape

        def tap(p, q, a, b):
            """Output phase (p, q)'s tap from window position (a, b): the columns of input
            pixel (i + a - pad_h[0], j + b - pad_w[0]) at (i, j), zero off the grid. Each
            tap is padded on its own: padding the whole column array first copied it, 5x
            this col2im's time."""
            da, db = a - pad_h[0], b - pad_w[0]
            t = columns[:, max(da, 0):h + min(da, 0), max(db, 0):w + min(db, 0),
                        rows[p, a], cols[q, b]]
            return jnp.pad(t, ((0, 0), (max(-da, 0), max(da, 0)), (max(-db, 0), max(db, 0)),
                               (0, 0)))

        def phase(p, q):  # output pixels (sh i + p, sw j + q)
            return sum(tap(p, q, a, b) for a in range(rows.shape[1])
                       for b in range(cols.shape[1]) if rows[p, a] >= 0 and cols[q, b] >= 0)

        out = jnp.stack([jnp.stack([phase(p, q) for q in range(sw)], 3) for p in range(sh)], 2)
        return out.reshape(n, h * sh, w * sw, f)

    def im2col(grad):
        n, f = grad.shape[0], grad.shape[-1]
        h, w = grad.shape[1] // sh, grad.shape[2] // sw
        # phases[:, i + pad_h[1], p, j + pad_w[1], q] = grad[:, sh i + p, sw j + q]
        phases = jnp.pad(grad.reshape(n, h, sh, w, sw, f),
                         ((0, 0), pad_h[::-1], (0, 0), pad_w[::-1], (0, 0), (0, 0)))

        def tap(t, u):
            (p, a), (q, b) = where_h[t], where_w[u]
            i, j = rows.shape[1] - 1 - a, cols.shape[1] - 1 - b
            return phases[:, i:i + h, p, j:j + w, q]

        return jnp.stack([tap(t, u) for t in range(kh) for u in range(kw)], 3).reshape(
            n, h, w, kh, kw, f)

    col2im.defvjp(lambda columns: (col2im(columns), None), lambda _, grad: (im2col(grad),))
    return col2im


def _phase_taps(k: int, s: int) -> tuple[np.ndarray, tuple[int, int]]:
    """For a 'SAME' transposed convolution of kernel size k and stride s along one axis:
    taps[p, j] = the kernel tap that output phase p applies to input offset lo + j
    (-1: none), and the (low, high) padding of the equivalent ordinary convolution."""
    pad_len = k + s - 2
    pad = k - 1 if s > k - 1 else -(-pad_len // 2)  # as lax.conv_transpose for 'SAME'
    offsets = {(p, t): (p + t - pad) // s for p in range(s) for t in range(k)
               if (p + t - pad) % s == 0}
    lo, hi = min(offsets.values()), max(offsets.values())
    taps = np.full((s, hi - lo + 1), -1)
    for (p, t), offset in offsets.items():
        taps[p, offset - lo] = t
    return taps, (-lo, hi)
