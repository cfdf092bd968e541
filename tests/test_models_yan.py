"""Tests for robustgan.models.yan (Deep Defense classifiers) and robustgan.data.whitening."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustgan.data.whitening import load_zca, save_zca, zca
from robustgan.errors import ConfigError, DataError
from robustgan.models import get_model

NUM_CLASSES = 7
SIZE = {"yan_mlp": 28, "yan_lenet": 28, "yan_convnet": 32, "yan_nin": 32}
SCALE, MEAN = 255.0, 33.3  # MNIST: 255 * 0.1307 = 33.3


def uniform_images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, np.float32))


def param_count(model, x):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]))


def test_parameter_counts():
    mnist, cifar = jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 32, 32, 3))
    mlp = (784 * 500 + 500) + (500 * 150 + 150) + (150 * 10 + 10)
    assert param_count(get_model("yan_mlp", 10), mnist) == mlp == 469_160
    # LeNet: 28 -5x5-> 24 -pool-> 12 -5x5-> 8 -pool-> 4, then FC 4*4*50 -> 500 -> 10.
    lenet = (5 * 5 * 20 + 20) + (5 * 5 * 20 * 50 + 50) + (4 * 4 * 50 * 500 + 500) + (500 * 10 + 10)
    assert param_count(get_model("yan_lenet", 10), mnist) == lenet == 431_080
    # ConvNet: 32 -pool-> 16 -pool-> 8 -pool-> 4 -4x4-> 1.
    convnet = ((5 * 5 * 3 * 32 + 32) + (5 * 5 * 32 * 32 + 32) + (5 * 5 * 32 * 64 + 64)
               + (4 * 4 * 64 * 64 + 64) + (64 * 10 + 10))
    assert param_count(get_model("yan_convnet", 10), cifar) == convnet == 145_578
    # NIN without BN (conv biases); with BN each conv but the last trades its bias for a
    # BN scale and bias: one more parameter per channel.
    convs = [(5, 3, 192), (1, 192, 160), (1, 160, 96), (5, 96, 192), (1, 192, 192),
             (1, 192, 192), (3, 192, 192), (1, 192, 192), (1, 192, 10)]
    nin = sum(k * k * cin * cout + cout for k, cin, cout in convs)
    assert param_count(get_model("yan_nin", 10, use_bn=False), cifar) == nin == 966_986
    bn_channels = sum(cout for _, _, cout in convs[:-1])
    assert param_count(get_model("yan_nin", 10), cifar) == nin + bn_channels
    # torchvision's AlexNet count.
    imagenet = jnp.zeros((1, 224, 224, 3))
    assert param_count(get_model("alexnet", 1000), imagenet) == 61_100_840


@pytest.fixture(scope="module")
def whitening_file(tmp_path_factory):
    """A ZCA file for 28x28x1 images in the transformed space (random, correlated)."""
    path = tmp_path_factory.mktemp("zca") / "mnist_zca.npz"
    x = SCALE * uniform_images((100, 28, 28, 1), seed=3) - MEAN
    save_zca(path, np.cumsum(np.asarray(x), axis=2))
    return str(path)


@pytest.mark.parametrize("name", list(SIZE))
def test_call_is_body_of_preprocess(name):
    # `preprocess` does the same float32 operations as the closed form: equal bit for bit.
    model = get_model(name, NUM_CLASSES, input_scale=SCALE, input_mean=MEAN)
    x = uniform_images((2, SIZE[name], SIZE[name], 3))
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    u = model.apply(variables, x, method="preprocess")
    chex.assert_trees_all_equal(u, SCALE * x - MEAN)
    logits = model.apply(variables, x)
    chex.assert_shape(logits, (2, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    np.testing.assert_allclose(model.apply(variables, u, method="body"), logits,
                               rtol=1e-5, atol=1e-5)


def test_whitened_preprocess(whitening_file):
    model = get_model("yan_mlp", NUM_CLASSES, input_scale=SCALE, input_mean=MEAN,
                      whitening=whitening_file)
    x = uniform_images((2, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    mean, matrix = load_zca(whitening_file)
    expected = ((SCALE * np.asarray(x, np.float64) - MEAN).reshape(2, -1) - mean) @ matrix
    u = model.apply(variables, x, method="preprocess")
    chex.assert_shape(u, x.shape)
    # float32 rounding, relative to the largest values (thousands: x is out of sample)
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(u, expected.reshape(x.shape), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(model.apply(variables, u, method="body"),
                               model.apply(variables, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="whitening file .* 784 values.*3136 per image"):
        model.apply(variables, jnp.zeros((1, 28, 28, 4)), method="preprocess")


def test_zca_whitens_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4000, 12)) @ rng.standard_normal((12, 12)) + 5.0)
    x = x.reshape(-1, 2, 2, 3)
    mean, matrix = zca(x, epsilon=1e-9)
    white = (x.reshape(len(x), -1) - mean) @ matrix
    np.testing.assert_allclose(white.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(12), atol=1e-3)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-5)  # ZCA: symmetric
    path = tmp_path / "zca"  # no .npz suffix: written where asked
    save_zca(path, x, epsilon=1e-9)
    for saved, computed in zip(load_zca(str(path)), (mean, matrix), strict=True):
        chex.assert_trees_all_equal(saved, computed)
    with pytest.raises(DataError, match="cannot read the whitening file"):
        load_zca(str(tmp_path / "missing.npz"))


def test_alexnet():
    model = get_model("alexnet", NUM_CLASSES, input_scale=SCALE, input_mean=MEAN)
    x = uniform_images((1, 224, 224, 3))
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    logits = jax.jit(model.apply)(variables, x)
    chex.assert_shape(logits, (1, NUM_CLASSES))
    chex.assert_tree_all_finite(logits)
    u = model.apply(variables, x, method="preprocess")
    body = jax.jit(lambda v, u: model.apply(v, u, method="body"))
    # XLA fuses preprocess into the first conv under jit: float32 rounding differs.
    np.testing.assert_allclose(body(variables, u), logits, rtol=1e-4, atol=1e-3)
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    assert not np.allclose(train(variables, x, jax.random.key(1)), logits)
