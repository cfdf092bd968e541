"""Tests for robustgan.models.generators: G0-G3 shapes, ranges, inputs, BatchNorm, errors."""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustgan.errors import ConfigError
from robustgan.models.generators import GENERATORS, INPUT_KINDS, get_generator
from robustgan.models.layers import CONV_FORMS, TRANSPOSED_CONV_FORMS, Conv, ConvTranspose

NUM_CLASSES = 10


def batch(size, channels, n=4, seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.uniform(-1, 1, (n, size, size, channels)), jnp.float32)
    return x, jnp.asarray(r.integers(0, NUM_CLASSES, n), jnp.int32)


@functools.cache
def initialized(name, size, channels):
    """(module, variables, jitted train-mode apply) for a width-2 generator."""
    g = get_generator(name, NUM_CLASSES, width=2)
    x, y = batch(size, channels)
    # 'rbg' keys only make initialization faster to compile on CPU than threefry.
    keys = {"params": jax.random.key(0, impl="rbg"), "noise": jax.random.key(1, impl="rbg")}
    variables = jax.jit(functools.partial(g.init, train=False))(keys, x, y)

    @jax.jit
    def train_apply(variables, x, y, key):
        return g.apply(variables, x, y, train=True, mutable=["batch_stats"],
                       rngs={"noise": key})

    return g, variables, train_apply


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
@pytest.mark.parametrize("name", list(GENERATORS))
def test_output_is_a_direction_shaped_like_the_image(name, size, channels):
    _, variables, train_apply = initialized(name, size, channels)
    x, y = batch(size, channels)
    out, updates = train_apply(variables, x, y, jax.random.key(2))
    assert out.shape == x.shape
    assert float(jnp.abs(out).max()) <= 1.0 and float(jnp.abs(out).max()) > 0.0
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"],
                         variables["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0  # train mode updates the running averages


def test_input_kinds_decide_what_each_generator_reads():
    assert INPUT_KINDS == {"g0": "x", "g1": "x", "g2": "z", "g3": "y"}
    x, y = batch(28, 1)
    x2, _ = batch(28, 1, seed=5)
    y2 = (y + 1) % NUM_CLASSES
    for name in GENERATORS:
        g, variables, _ = initialized(name, 28, 1)
        apply = jax.jit(lambda v, x_, y_, k, g=g: g.apply(v, x_, y_, rngs={"noise": k}))
        base = apply(variables, x, y, jax.random.key(0))
        same = {
            "x": np.allclose(base, apply(variables, x2, y, jax.random.key(0))),
            "y": np.allclose(base, apply(variables, x, y2, jax.random.key(0))),
            "z": np.allclose(base, apply(variables, x, y, jax.random.key(9))),
        }
        reads = {k for k, unchanged in same.items() if not unchanged}
        assert reads == {INPUT_KINDS[name]}, name


def test_paper_widths_and_latent_sizes():
    x, y = batch(32, 3, n=1)
    keys = {"params": jax.random.key(0), "noise": jax.random.key(1)}

    def params(name, **kw):
        g = get_generator(name, NUM_CLASSES, **kw)
        return jax.eval_shape(functools.partial(g.init, train=False), keys, x, y)["params"]

    # G0 and G1: k = 64 by default, G1's encoder ends at 4k channels; k = 8 narrows it.
    assert params("g0")["ConvBNReLU_0"]["Conv_0"]["kernel"].shape == (5, 5, 3, 64)
    assert params("g1")["ConvBNReLU_2"]["Conv_0"]["kernel"].shape[-1] == 256
    assert params("g1", width=8)["ConvBNReLU_0"]["Conv_0"]["kernel"].shape[-1] == 8
    # G3: FC from the one-hot label to 256k units on 32x32, k = 16.
    assert params("g3")["Dense_0"]["kernel"].shape == (NUM_CLASSES, 256 * 16)
    # G2: z of 256k entries reshaped to 8x8x4k feeds 4k-channel residual blocks.
    block = params("g2")["ResidualDecoder_0"]["ResidualBlock_0"]
    assert block["ConvBNReLU_0"]["Conv_0"]["kernel"].shape == (3, 3, 256, 256)
    total = sum(math.prod(a.shape) for a in jax.tree.leaves(params("g0")))
    assert total > 100_000


def test_eval_mode_needs_no_mutable_state_and_is_deterministic():
    g, variables, _ = initialized("g1", 28, 1)
    x, y = batch(28, 1)
    a = g.apply(variables, x, y, train=False)
    b = g.apply(variables, x[:1], y[:1], train=False)
    np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)  # no batch statistics


@pytest.mark.parametrize("name", list(GENERATORS))
def test_image_sizes_not_divisible_by_four_are_refused(name):
    g = get_generator(name, NUM_CLASSES, width=2)
    x, y = batch(30, 1, n=1)
    with pytest.raises(ConfigError, match=f"generator {name} .* multiples of 4"):
        jax.eval_shape(functools.partial(g.init, train=False),
                       {"params": jax.random.key(0), "noise": jax.random.key(1)}, x, y)


def test_unknown_generator_and_bad_width_are_refused():
    with pytest.raises(ConfigError, match="unknown generator 'g9'"):
        get_generator("g9", NUM_CLASSES)
    with pytest.raises(ConfigError, match="width must be >= 0"):
        get_generator("g1", NUM_CLASSES, width=-1)


@pytest.mark.parametrize("form", TRANSPOSED_CONV_FORMS)
@pytest.mark.parametrize("kernel,stride,size", [(5, 2, 7), (3, 2, 8), (4, 2, 5), (3, 3, 4)])
def test_transposed_conv_forms_equal_flax_conv_transpose(kernel, stride, size, form):
    """layers.ConvTranspose in each form (whose gradients XLA:CPU runs fast) computes what
    nn.ConvTranspose(padding='SAME') does, outputs and gradients, with the same params."""
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    reference = nn.ConvTranspose(4, (kernel, kernel), (stride, stride), padding="SAME")
    variables = reference.init(jax.random.key(1), x)
    ours = ConvTranspose(4, (kernel, kernel), (stride, stride), form=form)
    chex.assert_trees_all_equal_shapes(ours.init(jax.random.key(1), x), variables)
    loss = lambda module: lambda v, x: (module.apply(v, x) ** 2).sum()
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x),
                               atol=1e-5)
    ours_grads = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    reference_grads = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
    chex.assert_trees_all_close(ours_grads, reference_grads, atol=1e-4, rtol=1e-4)


def test_unknown_transposed_conv_form_is_refused():
    with pytest.raises(ConfigError, match="unknown transposed-convolution form 'fft'"):
        ConvTranspose(4, (3, 3), (2, 2), form="fft").init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("code_dim", [0, 3])
@pytest.mark.parametrize("form,kernel,stride,size", [
    ("xla", 3, 1, 6), ("xla", 4, 2, 8), ("xla", 4, 2, 7), ("xla", 3, 2, 5),
    ("columns", 3, 1, 6), ("columns", 5, 1, 5), ("columns", 1, 1, 4)])
def test_conv_forms_and_tiled_code_equal_flax_conv(form, kernel, stride, size, code_dim, split):
    """layers.Conv(x, code) computes what nn.Conv(padding='SAME') does on x with code
    tiled over its grid as more channels, outputs and gradients (to x, code and params),
    with the same params and the same initial values; so does x given as a list of parts
    (split) whose concatenation is the input."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), 2)
        x = jax.random.normal(keys[0], (2, size, size, 3), jnp.float64)
        code = jax.random.normal(keys[1], (2, code_dim), jnp.float64) if code_dim else None
        tiled = lambda x, code: x if code is None else jnp.concatenate(
            [x, jnp.broadcast_to(code[:, None, None, :], (*x.shape[:3], code.shape[-1]))], -1)
        reference = nn.Conv(4, (kernel, kernel), (stride, stride), padding="SAME",
                            param_dtype=jnp.float64)
        variables = reference.init(jax.random.key(1), tiled(x, code))
        ours = Conv(4, (kernel, kernel), (stride, stride), form=form, param_dtype=jnp.float64)
        # float32 parameters: the same initial values as nn.Conv's
        chex.assert_trees_all_equal(
            Conv(4, (kernel, kernel), (stride, stride), form=form).init(
                jax.random.key(1), x.astype(jnp.float32),
                      None if code is None else code.astype(jnp.float32)),
            nn.Conv(4, (kernel, kernel), (stride, stride), padding="SAME").init(
                jax.random.key(1), tiled(x, code).astype(jnp.float32)))
        apply_ours = lambda v, x, code: ours.apply(v, [x[..., :1], x[..., 1:]] if split else x,
                                                   code)
        apply_reference = lambda v, x, code: reference.apply(v, tiled(x, code))
        np.testing.assert_allclose(apply_ours(variables, x, code),
                                   apply_reference(variables, x, code), atol=1e-12)
        loss = lambda apply: lambda v, x, code: (jnp.sin(apply(v, x, code)) ** 2).sum()
        grads = lambda apply: jax.grad(loss(apply), argnums=(0, 1, 2))(variables, x, code)
        chex.assert_trees_all_close(grads(apply_ours), grads(apply_reference), atol=1e-12,
                                    rtol=1e-10)


def test_bad_conv_forms_are_refused():
    x = jnp.ones((1, 4, 4, 2))
    with pytest.raises(ConfigError, match="unknown convolution form 'fft'"):
        Conv(4, (3, 3), form="fft").init(jax.random.key(0), x)
    for kernel, stride in (((3, 3), (2, 2)), ((4, 4), (1, 1))):
        with pytest.raises(ConfigError, match="'columns' convolution takes stride 1 and odd"):
            Conv(4, kernel, stride, form="columns").init(jax.random.key(0), x)
    assert CONV_FORMS == ("xla", "columns")
