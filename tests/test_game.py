"""Tests for robustgan.game: F (Eq. 4), the regularized D-gradient (Eqs. 8-9), G's ascent."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from robustgan import game

N, FEATURES, HIDDEN, CLASSES = 6, 5, 4, 3
EPS = 0.5


def mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def discriminator(theta, stats, x, rng):
    return mlp(theta, x), stats


def generator(phi, stats, x, y, rng):
    return jnp.tanh(mlp(phi, x)), stats


def init_mlp(seed, d_in, d_out, dtype):
    r = np.random.default_rng(seed)
    shapes = {"w1": (d_in, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, d_out), "b2": (d_out,)}
    return {k: jnp.asarray(r.normal(size=s), dtype) for k, s in shapes.items()}


def setup(dtype=jnp.float32, clip=False):
    players = game.Game(discriminator, generator, eps=EPS, bounds=(-1.0, 1.0), clip=clip)
    r = np.random.default_rng(0)
    x = jnp.asarray(r.uniform(-1, 1, (N, FEATURES)), dtype)
    y = jnp.asarray(r.integers(0, CLASSES, N), jnp.int32)
    theta = init_mlp(1, FEATURES, CLASSES, dtype)
    phi = init_mlp(2, FEATURES, FEATURES, dtype)
    return players, theta, phi, x, y


@functools.partial(jax.jit, static_argnames=("players", "gradreg"))
def gradient(players, theta, phi, x, y, gradreg, gamma, fd_step=1e-3):
    grad, _ = game.d_gradient(players, theta, phi, ({}, {}), x, y, jax.random.key(0),
                              gradreg=gradreg, gamma=gamma, fd_step=fd_step)
    return ravel_pytree(grad)[0]


def regularizer_term(players, theta, phi, x, y, gradreg, fd_step=1e-3):
    """What `gradreg` adds to grad_theta F at gamma = 1."""
    plain = gradient(players, theta, phi, x, y, "none", 0.0)
    return gradient(players, theta, phi, x, y, gradreg, 1.0, fd_step) - plain


@functools.partial(jax.jit, static_argnames="players")
def hessian_reference(players, theta, phi, x, y):
    """H_theta_phi v with v = grad_phi F, from the full Hessian of F on flat parameters."""
    flat_theta, unravel_theta = ravel_pytree(theta)
    flat_phi, unravel_phi = ravel_pytree(phi)
    n = flat_theta.size

    def f(z):
        value, _ = game.objective(players, unravel_theta(z[:n]), unravel_phi(z[n:]), ({}, {}),
                                  x, y, jax.random.key(0))
        return value

    z = jnp.concatenate([flat_theta, flat_phi])
    hessian = jax.hessian(f)(z)
    v = jax.grad(f)(z)[n:]
    return hessian[:n, n:] @ v


def test_objective_is_eq4_clean_plus_weighted_adversarial_loss():
    players, theta, phi, x, y = setup()
    value, aux = game.objective(players, theta, phi, ({}, {}), x, y, jax.random.key(0))
    ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    x_adv = x + EPS * jnp.tanh(mlp(phi, x))
    np.testing.assert_allclose(value, ce(mlp(theta, x)) + ce(mlp(theta, x_adv)), rtol=1e-6)
    weighted = game.Game(discriminator, generator, EPS, (-1.0, 1.0), adv_weight=0.25,
                         clip=False)
    value, aux = game.objective(weighted, theta, phi, ({}, {}), x, y, jax.random.key(0))
    np.testing.assert_allclose(value, aux.metrics["clean_loss"] + 0.25 * aux.metrics["adv_loss"],
                               rtol=1e-6)


def test_exact_term_is_the_hessian_block_times_grad_phi():
    with jax.enable_x64(True):
        players, theta, phi, x, y = setup(jnp.float64)
        term = regularizer_term(players, theta, phi, x, y, "exact")
        np.testing.assert_allclose(term, hessian_reference(players, theta, phi, x, y),
                                   rtol=1e-9, atol=1e-12)


def test_exact_gradient_is_the_gradient_of_eq8():
    """grad_theta [F + gamma/2 ||grad_phi F||^2] = grad_theta F + gamma H_theta_phi v."""
    gamma = 0.3
    with jax.enable_x64(True):
        players, theta, phi, x, y = setup(jnp.float64)

        def regularized(theta_):
            f = lambda p: game.objective(players, theta_, p, ({}, {}), x, y,
                                         jax.random.key(0))[0]
            g = ravel_pytree(jax.grad(f)(phi))[0]
            return f(phi) + gamma / 2 * g @ g

        expected = ravel_pytree(jax.jit(jax.grad(regularized))(theta))[0]
        np.testing.assert_allclose(gradient(players, theta, phi, x, y, "exact", gamma),
                                   expected, rtol=1e-9)


def test_finite_difference_converges_to_the_exact_term():
    with jax.enable_x64(True):
        players, theta, phi, x, y = setup(jnp.float64)
        exact = regularizer_term(players, theta, phi, x, y, "exact")
        steps = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
        errors = [float(jnp.linalg.norm(
            regularizer_term(players, theta, phi, x, y, "finite_difference", h) - exact))
            for h in steps]
        scale = float(jnp.linalg.norm(exact))
    # First order in h: each decade of h takes off about a decade of error.
    assert all(b < a / 5 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-4 * scale, errors


def test_authors_code_adds_the_negated_finite_difference_term():
    players, theta, phi, x, y = setup()
    fd = regularizer_term(players, theta, phi, x, y, "finite_difference")
    authors = regularizer_term(players, theta, phi, x, y, "authors_code")
    np.testing.assert_allclose(authors, -fd, rtol=1e-5, atol=1e-6)
    assert float(jnp.linalg.norm(fd)) > 1e-3


def test_authors_code_uses_the_unweighted_adversarial_loss_whatever_lambda():
    """The code's v = grad_phi CE(D(x_adv)) and (g_adv(phi) - g_adv(phi + h v)) / h carry no
    lambda; with lambda = 3 Eq. 9's finite difference is 9x that (lambda in v and in the
    difference)."""
    h = 1e-3
    with jax.enable_x64(True):
        _, theta, phi, x, y = setup(jnp.float64)
        weighted = game.Game(discriminator, generator, EPS, (-1.0, 1.0), adv_weight=3.0,
                             clip=False)
        unit = game.Game(discriminator, generator, EPS, (-1.0, 1.0), clip=False)

        def adv_loss(game_, theta_, phi_):
            return game.objective(game_, theta_, phi_, ({}, {}), x, y,
                                  jax.random.key(0))[1].metrics["adv_loss"]

        g_adv = lambda p: ravel_pytree(jax.grad(adv_loss, argnums=1)(unit, theta, p))[0]
        v = jax.grad(adv_loss, argnums=2)(unit, theta, phi)
        shifted = jax.tree.map(lambda p, d: p + h * d, phi, v)
        expected = -(g_adv(shifted) - g_adv(phi)) / h
        authors = regularizer_term(weighted, theta, phi, x, y, "authors_code", h)
        np.testing.assert_allclose(authors, expected, rtol=1e-6, atol=1e-10)
        fd = regularizer_term(weighted, theta, phi, x, y, "finite_difference", h)
        np.testing.assert_allclose(fd, -9 * expected, rtol=1e-2)


@pytest.mark.parametrize("gradreg", game.GRADREGS)
def test_gamma_zero_gives_the_plain_gradient(gradreg):
    players, theta, phi, x, y = setup()
    f = lambda t: game.objective(players, t, phi, ({}, {}), x, y, jax.random.key(0))[0]
    plain = ravel_pytree(jax.grad(f)(theta))[0]
    np.testing.assert_allclose(gradient(players, theta, phi, x, y, gradreg, 0.0), plain,
                               rtol=1e-5, atol=1e-7)


def test_unknown_gradreg_is_refused():
    players, theta, phi, x, y = setup()
    with pytest.raises(ValueError, match="gradreg must be one of"):
        gradient(players, theta, phi, x, y, "second_order", 0.01)


def test_perturbation_stays_within_eps_and_clipping_keeps_the_data_range():
    x = jnp.linspace(-1.0, 1.0, 200).reshape(2, 100)
    direction = jnp.tanh(jax.random.normal(jax.random.key(0), x.shape) * 5)
    clipped = game.perturb(x, direction, 0.3, (-1.0, 1.0))
    assert float(jnp.abs(clipped - x).max()) <= 0.3 + 1e-6
    assert float(clipped.min()) >= -1.0 and float(clipped.max()) <= 1.0
    free = game.perturb(x, direction, 0.3)  # clip=False: the authors' code
    np.testing.assert_allclose(free - x, 0.3 * direction, atol=1e-6)
    assert float(jnp.abs(free).max()) > 1.0


def test_clip_setting_decides_whether_adversarial_images_leave_the_range():
    for clip in (True, False):
        players, theta, phi, x, y = setup(clip=clip)
        captured = {}

        def spy(theta_, stats, x_, rng, captured=captured):
            captured.setdefault("inputs", []).append(x_)
            return discriminator(theta_, stats, x_, rng)

        spied = game.Game(spy, generator, EPS, (-1.0, 1.0), clip=clip)
        game.objective(spied, theta, phi, ({}, {}), x, y, jax.random.key(0))
        x_adv = captured["inputs"][1]
        assert float(jnp.abs(x_adv - x).max()) <= EPS + 1e-6
        assert (float(jnp.abs(x_adv).max()) <= 1.0) == clip


def test_generator_ascent_raises_the_adversarial_loss_against_a_fixed_d():
    players, theta, phi, x, y = setup()
    tx = optax.sgd(0.1, momentum=0.9)
    new_phi, _, _, losses = game.ascend_generator(
        players, tx, theta, phi, tx.init(phi), ({}, {}), x, y, jax.random.key(0), steps=20)
    _, after = game.objective(players, theta, new_phi, ({}, {}), x, y, jax.random.key(0))
    assert losses.shape == (20,)
    assert float(after.metrics["adv_loss"]) > float(losses[0]) + 0.05
    assert float(losses[-1]) > float(losses[0])



def test_one_ascent_step_is_the_first_of_many_and_runs_outside_a_loop():
    players, theta, phi, x, y = setup()
    tx = optax.sgd(0.1, momentum=0.9)

    def ascend(phi, steps):
        return game.ascend_generator(players, tx, theta, phi, tx.init(phi), ({}, {}), x, y,
                                     jax.random.key(0), steps=steps, unroll=steps)

    _, _, _, loss = ascend(phi, 1)
    _, _, _, losses = ascend(phi, 2)
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss[0], losses[0], rtol=1e-6)
    # XLA:CPU runs convolutions in a while loop ~10x slower: a one-step ascent has none.
    assert "while" not in jax.jit(lambda p: ascend(p, 1)).lower(phi).as_text()


class BNNet(nn.Module):
    """Dense + BatchNorm, in the models/ calling convention."""

    features: int

    @nn.compact
    def __call__(self, x, y=None, train=False, batch_stats=None):
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(8)(x))
        return nn.Dense(self.features)(nn.relu(h))


class BNGenerator(BNNet):
    @nn.compact
    def __call__(self, x, y=None, train=False, batch_stats=None):
        return jnp.tanh(BNNet(self.features)(x, train=train))


def test_d_running_averages_take_the_clean_then_the_adversarial_batch():
    """The BatchNorm policy inside F: D runs in training mode on the clean batch, then on
    the adversarial batch, and its running mean moves with each (momentum 0.9)."""
    d, g = BNNet(CLASSES), BNGenerator(FEATURES)
    players = game.Game(game.TrainMode(d), game.TrainMode(g), EPS, (-1.0, 1.0), clip=False)
    _, _, _, x, y = setup()
    d_vars, g_vars = d.init(jax.random.key(1), x), g.init(jax.random.key(2), x)
    stats = (d_vars["batch_stats"], g_vars["batch_stats"])
    stats = (jax.tree.map(lambda s: s + 0.5, stats[0]), stats[1])  # not the init values
    _, aux = game.objective(players, d_vars["params"], g_vars["params"], stats, x, y,
                            jax.random.key(0))
    direction, _ = game.TrainMode(g)(g_vars["params"], stats[1], x, None, rng=jax.random.key(3))
    dense = d_vars["params"]["Dense_0"]
    pre_bn = lambda z: (z @ dense["kernel"] + dense["bias"]).mean(0)
    old = stats[0]["BatchNorm_0"]["mean"]
    expected = 0.9 * (0.9 * old + 0.1 * pre_bn(x)) + 0.1 * pre_bn(x + EPS * direction)
    np.testing.assert_allclose(aux.d_stats["BatchNorm_0"]["mean"], expected, rtol=1e-5)


def test_batch_norm_runs_in_train_mode_and_only_aux_carries_the_averages():
    d, g = BNNet(CLASSES), BNGenerator(FEATURES)
    players = game.Game(game.TrainMode(d), game.TrainMode(g), EPS, (-1.0, 1.0))
    _, _, _, x, y = setup()
    d_vars = d.init(jax.random.key(1), x)
    g_vars = g.init(jax.random.key(2), x)
    stats = (d_vars["batch_stats"], g_vars["batch_stats"])
    objective = jax.jit(game.objective, static_argnums=0)
    value, aux = objective(players, d_vars["params"], g_vars["params"], stats, x, y,
                           jax.random.key(0))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), aux.d_stats, stats[0])
    assert max(jax.tree.leaves(moved)) > 0  # two train-mode passes updated D's averages
    other = jax.tree.map(lambda s: s + 3.0, stats)
    value2, _ = objective(players, d_vars["params"], g_vars["params"], other, x, y,
                          jax.random.key(0))
    np.testing.assert_allclose(value, value2, rtol=1e-6)  # batch statistics, not averages
    d_gradient = jax.jit(game.d_gradient, static_argnums=0, static_argnames="gradreg")
    grad, aux = d_gradient(players, d_vars["params"], g_vars["params"], stats, x, y,
                           jax.random.key(0), gradreg="exact", gamma=0.01, fd_step=1e-3)
    assert jax.tree.structure(grad) == jax.tree.structure(d_vars["params"])
    assert jax.tree.structure(aux.d_stats) == jax.tree.structure(stats[0])
