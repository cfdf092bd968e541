"""Tests for robustgan.models: calling convention, parameter counts, pooling, errors."""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustgan.errors import ConfigError
from robustgan.models import MODEL_NAMES, get_model
from robustgan.models.layers import max_pool_2x2

NUM_CLASSES = 7
BATCH = 2
# every other model takes 28x28
IMAGE_SIZE = {"d2": 32, "resnet18": 32, "yan_convnet": 32, "yan_nin": 32, "alexnet": 224}
WITH_BN = {"d1", "d2", "resnet18", "yan_nin"}
WITH_DROPOUT = {"dgan_a", "dgan_b", "dgan_c", "dgan_d", "alexnet"}
# The generic tests below run every model but AlexNet, slow on CPU at 224x224 (its test
# is in test_models_yan.py).
GENERIC_MODELS = tuple(name for name in MODEL_NAMES if name != "alexnet")


def random_array(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def images(name):
    size = IMAGE_SIZE.get(name, 28)
    return random_array((BATCH, size, size, 3))


def param_count(model, x):
    """Parameters (not batch statistics), from shapes only: nothing is computed."""
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]))


@functools.cache
def initialized_model(name, **kwargs):
    """(model, images, variables), initialized once per test session.

    The 'rbg' key only makes initialization faster to compile on CPU than threefry does.
    """
    model = get_model(name, NUM_CLASSES, **kwargs)
    x = images(name)
    return model, x, jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)


@pytest.fixture(params=GENERIC_MODELS)
def initialized(request):
    return request.param, *initialized_model(request.param)


def test_model_names():
    assert MODEL_NAMES == (
        "d1",
        "d2",
        "lenet5",
        "resnet18",
        "dgan_a",
        "dgan_b",
        "dgan_c",
        "dgan_d",
        "dgan_e",
        "dgan_f",
        "yan_mlp",
        "yan_lenet",
        "yan_convnet",
        "yan_nin",
        "alexnet",
    )


def test_eval_mode_is_deterministic_and_leaves_batch_stats(initialized):
    name, model, x, variables = initialized
    logits, updates = model.apply(variables, x, mutable=["batch_stats"])
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    assert ("batch_stats" in variables) == (name in WITH_BN)
    if name in WITH_BN:
        chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
    chex.assert_trees_all_equal(model.apply(variables, x), logits)


def test_train_mode(initialized):
    name, model, x, variables = initialized
    rngs = {"dropout": jax.random.key(1)}
    logits, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    eval_logits = model.apply(variables, x)
    if name in WITH_BN:  # the running averages moved towards the batch's statistics
        changed = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"]
        )
        assert all(jax.tree.leaves(changed))
    if name in WITH_BN | WITH_DROPOUT:
        assert not np.allclose(logits, eval_logits)
    else:
        np.testing.assert_allclose(logits, eval_logits, rtol=1e-5, atol=1e-6)


def test_batch_stats_mode(initialized):
    name, model, x, variables = initialized
    logits, _ = model.apply(variables, x, batch_stats=True, mutable=["batch_stats"])
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    # No dropout without `train`, so no rng is needed and the result is repeatable.
    again, _ = model.apply(variables, x, batch_stats=True, mutable=["batch_stats"])
    chex.assert_trees_all_equal(logits, again)
    assert np.allclose(logits, model.apply(variables, x)) == (name not in WITH_BN)
    if name not in WITH_DROPOUT:  # train=True, batch_stats=False: running averages, immutable
        logits = model.apply(variables, x, train=True, batch_stats=False)
        np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-5, atol=1e-6)


def test_dropout_differs_between_rngs():
    model, x, variables = initialized_model("dgan_a")
    first, second = (
        model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(k)}) for k in (1, 2)
    )
    assert not np.allclose(first, second)


def test_tf1_keep_prob_quirk():
    rngs = {"dropout": jax.random.key(1)}

    def train_logits(name, quirk):
        _, x, variables = initialized_model(name)  # the quirk changes no parameter
        model = get_model(name, NUM_CLASSES, tf1_keep_prob_quirk=quirk)
        return model.apply(variables, x, train=True, rngs=rngs)

    # Model D has only Dropout(0.5), where keep and drop probabilities coincide.
    chex.assert_trees_all_equal(train_logits("dgan_d", False), train_logits("dgan_d", True))
    assert not np.allclose(train_logits("dgan_a", False), train_logits("dgan_a", True))


def test_d1_parameter_count():
    # MNIST (1 channel), 10 classes; convs have no bias, each BN has scale and bias.
    # conv3x3x16: 3*3*1*16 = 144, BN 2*16 = 32; conv5x5x32: 5*5*16*32 = 12800, BN 64;
    # conv5x5x64: 5*5*32*64 = 51200, BN 128; 28 -> 14 -> 7, FC: 7*7*64*10 + 10 = 31370.
    expected = 144 + 32 + 12800 + 64 + 51200 + 128 + 31370
    assert expected == 95738
    x = jnp.zeros((1, 28, 28, 1))
    assert param_count(get_model("d1", 10), x) == expected
    # Without BN each conv has a bias instead of a BN scale and bias: 16 + 32 + 64 fewer.
    assert param_count(get_model("d1", 10, use_bn=False), x) == expected - 112


def test_d2_parameter_count():
    # CIFAR (3 channels), 10 classes, width 1; convs have no bias, BN has 2 per channel.
    stem = 3 * 3 * 3 * 16 + 2 * 16  # 464
    block16 = 2 * (3 * 3 * 16 * 16 + 2 * 16)  # 4672, identity shortcut
    block32 = 2 * (3 * 3 * 32 * 32 + 2 * 32)  # 18560
    block64 = 2 * (3 * 3 * 64 * 64 + 2 * 64)  # 73984
    # First block of a stage: 3x3 conv from the narrower input, and a 1x1 projection + BN.
    first32 = 3 * 3 * 16 * 32 + 3 * 3 * 32 * 32 + 2 * 2 * 32 + 16 * 32 + 2 * 32  # 14528
    first64 = 3 * 3 * 32 * 64 + 3 * 3 * 64 * 64 + 2 * 2 * 64 + 32 * 64 + 2 * 64  # 57728
    fc = 64 * 10 + 10
    expected = stem + 3 * block16 + first32 + 2 * block32 + first64 + 2 * block64 + fc
    assert expected == 272474  # ResNet-20 with projection shortcuts
    assert param_count(get_model("d2", 10), jnp.zeros((1, 32, 32, 3))) == expected


def test_other_parameter_counts():
    mnist, cifar = jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 32, 32, 3))
    # LeNet-5: 28 -pad2-> 28 -pool-> 14 -5x5-> 10 -pool-> 5 -5x5-> 1.
    lenet = (
        (5 * 5 * 6 + 6)
        + (5 * 5 * 6 * 16 + 16)
        + (5 * 5 * 16 * 120 + 120)
        + (120 * 84 + 84)
        + (84 * 10 + 10)
    )
    assert param_count(get_model("lenet5", 10), mnist) == lenet == 61706
    # The familiar count of the CIFAR ResNet-18 (e.g. kuangliu/pytorch-cifar).
    assert param_count(get_model("resnet18", 10), cifar) == 11_173_962
    # Defense-GAN B: 28 -8x8/2 SAME-> 14 -6x6/2-> 5 -5x5-> 1; F = B without dropout.
    b = (8 * 8 * 64 + 64) + (6 * 6 * 64 * 128 + 128) + (5 * 5 * 128 * 128 + 128) + 128 * 10 + 10
    assert param_count(get_model("dgan_b", 10), mnist) == b
    assert param_count(get_model("dgan_f", 10), mnist) == b
    # Defense-GAN D (= E): 784 -> 200 -> 200 -> 10.
    d = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert param_count(get_model("dgan_d", 10), mnist) == d
    assert param_count(get_model("dgan_e", 10), mnist) == d


def test_wide_d2_has_about_100x_conv_parameters():
    x = jnp.zeros((1, 32, 32, 3))

    def conv_params(width):
        variables = jax.eval_shape(get_model("d2", 10, width=width).init, jax.random.key(0), x)
        return sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]) if a.ndim == 4)

    # Every conv but the stem (3 input channels: only 10x) scales by width**2 = 100.
    assert 99 < conv_params(10) / conv_params(1) < 100


@pytest.mark.parametrize("shape", [(3, 8, 12, 5), (2, 7, 9, 1)])  # even, and odd (fallback)
def test_max_pool_2x2_matches_flax_max_pool(shape):
    x = random_array(shape)  # random floats: no ties
    reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
    weights = random_array(reference(x).shape, seed=1)
    grads = [
        jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x) * weights)))(x)
        for pool in (max_pool_2x2, reference)
    ]
    np.testing.assert_array_equal(*grads)


def test_d1_input_gradient_under_jit():
    model, x, variables = initialized_model("d1")
    grad = jax.jit(jax.grad(lambda x: model.apply(variables, x)[:, 0].sum()))(x)
    chex.assert_shape(grad, x.shape)
    chex.assert_tree_all_finite(grad)
    assert jnp.any(grad != 0)


def test_unknown_model_name_lists_the_models():
    with pytest.raises(ConfigError, match="unknown model 'resnet50'.*d1, d2, lenet5"):
        get_model("resnet50", 10)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("lenet5", {"width": 2}, "takes no argument.*width.*models: d1"),
        ("d1", {"width": 2}, "accepts use_bn"),
        ("d2", {"width": 0}, "width must be a positive int"),
        ("d1", {"use_bn": "yes"}, "use_bn must be a bool"),
        ("yan_mlp", {"input_scale": 0}, "input_scale must be a positive finite number"),
        ("yan_lenet", {"input_mean": "0.13"}, "input_mean must be a finite number"),
        ("yan_nin", {"whitening": None}, "whitening must be a str"),
        ("alexnet", {"whitening": "zca.npz"}, "accepts input_scale, input_mean "),
    ],
)
def test_bad_kwargs(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        get_model(name, 10, **kwargs)


@pytest.mark.parametrize("num_classes", [0, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ConfigError, match="num_classes must be a positive int"):
        get_model("d1", num_classes)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_image_shape(name):
    size = IMAGE_SIZE.get(name, 28)
    wrong = 28 if size == 32 else 32
    model = get_model(name, 10)
    expected = rf"{name} takes .*\(N, {size}, {size}, C\).*got .*\(1, {wrong}, {wrong}, 1\)"
    with pytest.raises(ConfigError, match=expected):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, wrong, wrong, 1)))
    with pytest.raises(ConfigError, match="got an input of shape"):  # no batch axis
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((size, size, 1)))
