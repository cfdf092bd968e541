"""Defense-GAN (Samangouei et al., ICLR 2018): the Table 6 networks, the WGAN-GP method,
and the projection of Eq. 8 as a classifier front end (robustgan/attacks/projection.py)."""

import dataclasses
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from robustgan import attacks, main, methods, runs, train
from robustgan import config as configlib
from robustgan.attacks import common
from robustgan.attacks import projection as proj
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods import defense_gan
from robustgan.models import wgan

TINY = {"defense_gan.generator_widths": (8, 8, 4), "defense_gan.critic_widths": (4, 8, 8),
        "defense_gan.learning_rate": 1e-3, "defense_gan.critic_steps": 2}


def _linear(v, z):
    """G(z) = W z on 4x4 images; W has orthonormal columns, so G is invertible on its range."""
    return (z @ v["w"].T).reshape(z.shape[0], 4, 4, 1)


def _tanh(v, z):
    """A small non-convex generator: several local minima, so restarts matter."""
    return jnp.tanh(jnp.tanh(3.0 * z @ v["w1"]) @ v["w2"]).reshape(z.shape[0], 4, 4, 1)


def _double_tanh(v, z):
    """_tanh's images in a range twice as wide."""
    return 2.0 * _tanh(v, z)


def _tanh_variables(seed=0, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w1": jax.random.normal(k1, (2, 8), dtype), "w2": jax.random.normal(k2, (8, 16), dtype)}


def _targets(n=6, seed=1, dtype=jnp.float32):
    return jax.random.uniform(jax.random.key(seed), (n, 4, 4, 1), dtype, -1.0, 1.0)


class ConvGenerator(nn.Module):
    """A tiny transposed-convolution generator in float64 (the FD test's)."""

    @nn.compact
    def __call__(self, z):
        x = jnp.tanh(nn.Dense(8, param_dtype=jnp.float64)(z)).reshape(z.shape[0], 2, 2, 2)
        x = nn.ConvTranspose(1, (3, 3), strides=(2, 2), padding="SAME",
                             param_dtype=jnp.float64)(x)
        return jnp.tanh(x)


def _conv_apply(variables, z):
    return ConvGenerator().apply(variables, z)


def _tanh_classifier(variables, x, rng=None):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w"])


def _linear_classifier(w, x, rng=None):
    return x.reshape(x.shape[0], -1) @ w


def _classifier():
    w = jax.random.normal(jax.random.key(7), (16, 3))
    return Classifier(_tanh_classifier, {"w": w}, (-1.0, 1.0), 3)


# ---------------------------------------------------------------- the projection (Eq. 8)

def test_projection_recovers_the_latent_code_of_an_invertible_generator():
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (16, 3)))
    z_true = jax.random.normal(jax.random.key(1), (5, 3))
    x = _linear({"w": q}, z_true)
    # The error's gradient is (z - z_true) / 8 here: step 4 halves the distance per step.
    out = proj.project(_linear, {"w": q}, x, jax.random.key(2), latent_dim=3, steps=40,
                       restarts=3, step_size=4.0, momentum=0.5)
    chex.assert_shape((out.reconstruction, out.error, out.z), (x.shape, (5,), (5, 3)))
    np.testing.assert_allclose(out.z, z_true, atol=1e-4)
    np.testing.assert_allclose(out.reconstruction, x, atol=1e-5)
    assert float(out.error.max()) < 1e-9


def test_more_restarts_never_raise_the_error_and_the_outputs_agree():
    v, x = _tanh_variables(), _targets()
    settings = dict(latent_dim=2, steps=10, step_size=0.5, momentum=0.7, unroll=1)
    outs = [proj.project(_tanh, v, x, jax.random.key(3), restarts=r, **settings)
            for r in (1, 3, 6)]
    errors = np.stack([o.error for o in outs])
    assert np.all(np.diff(errors, axis=0) <= 1e-6)  # starts 0..R-1 extend starts 0..R-2
    assert np.max(errors[0] - errors[-1]) > 1e-3  # and other starts do win
    best = outs[-1]
    np.testing.assert_allclose(best.reconstruction, _tanh(v, best.z), atol=1e-6)
    np.testing.assert_allclose(best.error, jnp.mean((best.reconstruction - x) ** 2,
                                                    axis=(1, 2, 3)), rtol=1e-6)
    # Errors are in [0, 1] pixel units: the same images in a range twice as wide, same error.
    wide = proj.project(_double_tanh, v, 2 * x, jax.random.key(3), restarts=6,
                        data_scale=2.0, **settings)
    np.testing.assert_allclose(wide.error, best.error, rtol=1e-4, atol=1e-7)


def test_unrolled_projection_gradient_matches_finite_differences_in_float64():
    """d/dt f(x + t u) by central differences against jax.grad . u, through L = 6 momentum
    steps, the step-size decay, two restarts and a transposed convolution (conv_friendly's
    second derivatives on CPU); remat gives the same gradient."""
    with jax.enable_x64(True):
        z = jnp.zeros((1, 2), jnp.float64)
        variables = ConvGenerator().init(jax.random.key(0), z)
        x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), jnp.float64, -0.8, 0.8)
        u = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
        weights = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)

        def f(x_, remat=False):
            out = proj.project(_conv_apply, variables, x_, jax.random.key(4), latent_dim=2,
                               steps=6, restarts=2, step_size=2.0, momentum=0.5,
                               schedule="authors_decay", remat=remat)
            return jnp.vdot(weights, out.reconstruction) + out.error.sum()

        h = 1e-6
        numeric = (f(x + h * u) - f(x - h * u)) / (2 * h)
        grad = jax.grad(f)(x)
        analytic = jnp.vdot(grad, u)
        assert abs(float(analytic)) > 1e-3
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
        np.testing.assert_allclose(jax.grad(lambda x_: f(x_, remat=True))(x), grad,
                                   rtol=1e-10, atol=1e-12)


def test_the_authors_policy_passes_no_gradient_through_z_star():
    v, x = _tanh_variables(), _targets()
    settings = dict(latent_dim=2, steps=5, restarts=3, step_size=0.5, momentum=0.7, unroll=1)
    weights = jax.random.normal(jax.random.key(5), x.shape)

    def run(gradient):
        return proj.project(_tanh, v, x, jax.random.key(6), gradient=gradient, **settings)

    chex.assert_trees_all_close(run("none"), run("unrolled"))  # the same forward pass

    def grad(gradient):
        return jax.grad(lambda x_: jnp.vdot(weights, proj.project(
            _tanh, v, x_, jax.random.key(6), gradient=gradient, **settings).reconstruction))(x)

    np.testing.assert_array_equal(grad("none"), 0.0)
    assert float(jnp.abs(grad("unrolled")).max()) > 1e-3


def test_eot_averages_the_defended_classifier_over_random_starts():
    v, x = _tanh_variables(), _targets(4)
    y = jnp.array([0, 1, 2, 0])
    front = proj.ProjectionFrontEnd(_tanh, latent_dim=2, steps=3, restarts=1, step_size=0.5,
                                    unroll=1)
    classifier = _classifier()
    defended = attacks.with_front_end(front, v, classifier)
    rng = jax.random.key(8)
    draws = jax.random.split(rng, 4)
    # One draw: the classifier on the projection whose starts come from the front end's
    # half of the key.
    for key in draws:
        front_key = jax.random.split(key)[0]
        rec = front(v, x, front_key)
        np.testing.assert_allclose(defended.logits(x, key), classifier.logits(rec), atol=1e-6)
    direct = proj.project(_tanh, v, x, jax.random.split(draws[0])[0], latent_dim=2, steps=3,
                          restarts=1, step_size=0.5, unroll=1)
    np.testing.assert_array_equal(front(v, x, jax.random.split(draws[0])[0]),
                                  direct.reconstruction)
    per_draw = jnp.stack([common.cross_entropy(defended.logits(x, k), y) for k in draws])
    assert float(per_draw.std(axis=0).max()) > 1e-3  # the starts change the logits
    loss, logits = common.attack_objective(attacks.eot(defended, 4), common.cross_entropy,
                                           x, y, rng)
    np.testing.assert_allclose(loss, per_draw.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(logits, defended.logits(x, draws[0]), atol=1e-5)
    _, grad, _ = common.loss_and_input_grad(attacks.eot(defended, 4), common.cross_entropy,
                                            x, y, rng)
    per_draw_grads = [jax.grad(lambda x_, k=k: common.cross_entropy(
        defended.logits(x_, k), y).sum())(x) for k in draws]
    np.testing.assert_allclose(grad, jnp.mean(jnp.stack(per_draw_grads), axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="random starts"):
        defended.logits(x)


def test_fixed_starts_make_the_defense_deterministic_and_known_to_the_attacker():
    v, x = _tanh_variables(), _targets(4)
    y = jnp.array([0, 1, 2, 0])
    settings = dict(latent_dim=2, steps=3, restarts=2, step_size=0.5, unroll=1)
    fixed = attacks.with_front_end(proj.ProjectionFrontEnd(_tanh, starts="fixed", **settings),
                                   v, _classifier())
    drawn = attacks.with_front_end(proj.ProjectionFrontEnd(_tanh, **settings), v, _classifier())
    keys = jax.random.split(jax.random.key(11), 2)
    known = proj.project(_tanh, v, x, jax.random.key(proj.FIXED_STARTS_SEED), **settings)
    for key in keys:  # whatever key the judge or the attacker holds: the same starts
        np.testing.assert_allclose(fixed.logits(x, key),
                                   _classifier().logits(known.reconstruction), atol=1e-6)
    np.testing.assert_array_equal(fixed.logits(x), fixed.logits(x, keys[0]))
    assert "optimization_barrier" in jax.jit(fixed.logits).lower(x).as_text()  # not a constant

    def input_grad(clf, key):
        return common.loss_and_input_grad(clf, common.cross_entropy, x, y, key)[1]

    np.testing.assert_array_equal(input_grad(fixed, keys[0]), input_grad(fixed, keys[1]))
    assert float(jnp.abs(input_grad(drawn, keys[0]) - input_grad(drawn, keys[1])).max()) > 1e-4
    with pytest.raises(ValueError, match="starts must be one of"):
        dataclasses.replace(fixed.apply_fn.front_end, starts="kept")(v, x, keys[0])


def test_bpda_backward_through_the_defended_classifier_is_the_identity():
    v, x = _tanh_variables(), _targets(3)
    front = proj.ProjectionFrontEnd(_tanh, latent_dim=2, steps=4, restarts=2, step_size=0.5,
                                    gradient="none")
    classifier = _classifier()
    defended = attacks.with_front_end(front, v, classifier)
    rng = jax.random.key(9)
    c = jax.random.normal(jax.random.key(10), (3, 3))

    def objective(clf):
        return lambda x_: jnp.vdot(c, clf.logits(x_, rng))

    rec = front(v, x, jax.random.split(rng)[0])
    bpda = attacks.bpda(defended)
    np.testing.assert_array_equal(bpda.logits(x, rng), defended.logits(x, rng))
    np.testing.assert_array_equal(jax.grad(objective(defended))(x), 0.0)
    expected = jax.grad(lambda r: jnp.vdot(c, classifier.logits(r)))(rec)
    np.testing.assert_allclose(jax.grad(objective(bpda))(x), expected, rtol=1e-6)
    at_x = jax.grad(lambda r: jnp.vdot(c, classifier.logits(r)))(x)
    assert float(jnp.abs(expected - at_x).max()) > 1e-3  # evaluated at G(z*), not x


# ---------------------------------------------------------------- WGAN-GP

def test_gradient_penalty_matches_a_hand_computation():
    """critic(x) = 0.5 sum a x^2 has gradient a * x_hat at each interpolate."""
    k = jax.random.split(jax.random.key(11), 4)
    a = jax.random.uniform(k[0], (5, 4, 2), minval=0.1, maxval=1.0)
    real, fake = jax.random.normal(k[1], (3, 5, 4, 2)), jax.random.normal(k[2], (3, 5, 4, 2))
    alpha = jax.random.uniform(k[3], (3,))
    critic = lambda x: 0.5 * jnp.sum(a * x**2, axis=(1, 2, 3))
    a_, r, f, al = (np.asarray(t, np.float64) for t in (a, real, fake, alpha))
    g = a_ * (r + al[:, None, None, None] * (f - r))
    image = np.mean((np.sqrt((g**2).sum(axis=(1, 2, 3))) - 1) ** 2)
    height = np.mean((np.sqrt((g**2).sum(axis=1)) - 1) ** 2)  # (3, 4, 2) norms
    np.testing.assert_allclose(
        defense_gan.gradient_penalty(critic, real, fake, alpha, norm="image"), image, rtol=1e-5)
    np.testing.assert_allclose(
        defense_gan.gradient_penalty(critic, real, fake, alpha, norm="authors_code"), height,
        rtol=1e-5)
    assert abs(image - height) > 0.1


def test_critic_score_and_its_penalty_gradient_equal_the_flax_critic_in_float64(tmp_path):
    """WGANGP.score (im2col convolutions on CPU) is critic.apply: values, input gradients
    and the penalty's parameter gradient (a gradient differentiated again), float64."""
    with jax.enable_x64(True):
        gan = dataclasses.replace(defense_gan.wgan_gp(tiny_config(tmp_path, "defense_gan"), 1),
                                  critic=wgan.WGANCritic(widths=(3, 4, 5)))
        k = jax.random.split(jax.random.key(19), 4)
        real, fake = (jax.random.uniform(key, (2, 28, 28, 1), jnp.float64) for key in k[:2])
        params = jax.tree.map(lambda p: p.astype(jnp.float64),
                              gan.critic.init(k[2], real)["params"])
        alpha = jax.random.uniform(k[3], (2,), jnp.float64)
        flax_fn = lambda p, x: gan.critic.apply({"params": p}, x)
        for fn in (gan.score, flax_fn):
            assert fn(params, real).dtype == jnp.float64

        def penalty_grad(fn):
            return jax.grad(lambda p: defense_gan.gradient_penalty(
                lambda x: fn(p, x), real, fake, alpha))(params)

        np.testing.assert_allclose(gan.score(params, real), flax_fn(params, real), rtol=1e-12)
        input_grad = jax.grad(lambda fn, x: fn(params, x).sum(), argnums=1)
        np.testing.assert_allclose(input_grad(gan.score, real), input_grad(flax_fn, real),
                                   rtol=1e-10, atol=1e-14)
        expected = penalty_grad(flax_fn)
        chex.assert_trees_all_close(penalty_grad(gan.score), expected, rtol=1e-10, atol=1e-14)
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected)) > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, method, initial state, a batch) of defense_gan with narrow networks."""
    config = tiny_config(tmp_path_factory.mktemp("tiny"), "defense_gan", **TINY)
    configlib.validate(config)
    x = jax.random.uniform(jax.random.key(12), (8, 28, 28, 1), minval=-1.0, maxval=1.0)
    method = methods.build(config, 10)
    return config, method, jax.jit(method.init)(jax.random.key(13), x), x


def test_critic_and_generator_steps_each_lower_their_own_loss(tiny):
    config, _, state, x = tiny
    gan = defense_gan.wgan_gp(config, 1)
    rng = jax.random.key(14)

    @jax.jit
    def critic_loss(s):
        return gan.critic_loss(s.critic.params, s.generator.params, x, rng)[0]

    after, metrics = jax.jit(gan.critic_step)(state, x, rng)
    assert float(critic_loss(after)) < float(critic_loss(state))
    np.testing.assert_allclose(metrics["critic_loss"], critic_loss(state), rtol=1e-6)
    chex.assert_trees_all_equal(after.generator, state.generator)

    @jax.jit
    def generator_loss(s):
        return gan.generator_loss(s.generator.params, s.critic.params, 8, rng)

    after, _ = jax.jit(gan.generator_step, static_argnums=1)(state, 8, rng)
    assert float(generator_loss(after)) < float(generator_loss(state))
    chex.assert_trees_all_equal(after.critic, state.critic)


def test_a_train_step_is_critic_steps_on_interleaved_rows_then_a_generator_step(tiny):
    """One generator iteration of the authors' order: critic step i on rows i, i + k, ...
    of the batch (k = critic_steps = 2 here), then a generator step of the critic's batch
    size; the same as calling the steps one by one."""
    config, method, state, x = tiny
    gan = defense_gan.wgan_gp(config, 1)
    rng = jax.random.key(20)
    after, metrics = jax.jit(method.train_step)(state, x, None, rng)
    assert (int(after.step), int(after.critic.step), int(after.generator.step)) == (1, 2, 1)
    assert set(metrics) == {"critic_loss", "wasserstein", "gradient_penalty", "generator_loss"}
    keys = jax.random.split(rng, 3)

    @jax.jit
    def by_hand(s):
        s, first = gan.critic_step(s, x[0::2], keys[0])
        s, second = gan.critic_step(s, x[1::2], keys[1])
        s, _ = gan.generator_step(s, 4, keys[2])
        return s, (first["critic_loss"] + second["critic_loss"]) / 2

    expected, critic_loss = by_hand(state)
    chex.assert_trees_all_close(after.critic.params, expected.critic.params, rtol=1e-5)
    chex.assert_trees_all_close(after.generator.params, expected.generator.params, rtol=1e-5)
    np.testing.assert_allclose(metrics["critic_loss"], critic_loss, rtol=1e-5)


def test_table6_networks_have_the_papers_shapes_and_the_data_range():
    z = jax.random.normal(jax.random.key(15), (3, wgan.LATENT_DIM))
    images = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    params = jax.eval_shape(wgan.WGANGenerator().init, jax.random.key(16), z)["params"]
    assert params["Dense_0"]["kernel"].shape == (128, 4096)
    kernels = [params[f"ConvTranspose_{i}"]["kernel"].shape for i in range(3)]
    assert kernels == [(5, 5, 256, 256), (5, 5, 256, 128), (5, 5, 128, 1)]
    critic = wgan.WGANCritic()
    critic_params = jax.eval_shape(critic.init, jax.random.key(17), images)["params"]
    assert [critic_params[f"Conv_{i}"]["kernel"].shape for i in range(3)] == [
        (5, 5, 1, 64), (5, 5, 64, 128), (5, 5, 128, 256)]
    assert critic_params["Dense_0"]["kernel"].shape == (4 * 4 * 256, 1)
    chex.assert_shape(jax.eval_shape(critic.apply, {"params": critic_params}, images), (3,))
    # The sigmoid mapped onto the data range (narrow widths: the same code, less compute).
    unit = wgan.WGANGenerator(widths=(8, 8, 4))
    wide = wgan.WGANGenerator(widths=(8, 8, 4), value_range=(-1.0, 1.0))
    variables = jax.jit(unit.init)(jax.random.key(18), z)
    out = jax.jit(unit.apply)(variables, z)
    chex.assert_shape(out, (3, 28, 28, 1))
    assert float(out.min()) > 0.0 and float(out.max()) < 1.0
    np.testing.assert_allclose(jax.jit(wide.apply)(variables, z), 2 * out - 1, atol=1e-6)


def test_bad_configs_are_stopped_with_the_key_named(tmp_path):
    for key, value in (("defense_gan.gp_norm", "height"),
                       ("defense_gan.projection.gradient", "bpda"),
                       ("defense_gan.projection.restarts", 0),
                       ("defense_gan.projection.starts", "secret")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            configlib.validate(tiny_config(tmp_path, "defense_gan", **{key: value}))


def test_defense_gan_trains_checkpoints_resumes_and_defends(tmp_path):
    config = tiny_config(tmp_path, "defense_gan", steps=8, **TINY)
    workdir = str(tmp_path / "gan")
    assert main.run(config, workdir, "train") == {}  # no classifier, nothing evaluated
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert {"critic_loss", "wasserstein", "gradient_penalty", "generator_loss"} <= set(rows[0])
    run = runs.load_run(workdir)
    assert run.step == 8 and set(run.method.networks) == {"generator", "critic"}
    assert int(run.network("generator").step) == 8
    # Resumes (the projection's settings may change: evaluation only) and trains on.
    longer = tiny_config(tmp_path, "defense_gan", steps=10,
                         **{**TINY, "defense_gan.projection.steps": 3})
    _, _, state = train.train(longer, workdir)
    assert (int(state.step), int(state.generator.step), int(state.critic.step)) == (10, 10, 20)
    # The trained generator behind a classifier: reconstructions in the data range.
    w = jax.random.normal(jax.random.key(20), (784, 10))
    clf = Classifier(_linear_classifier, w, (-1.0, 1.0), 10)
    defended = defense_gan.defended_classifier(longer, state, clf)
    x = jax.random.uniform(jax.random.key(18), (2, 28, 28, 1), minval=-1.0, maxval=1.0)
    rec = defense_gan.front_end(longer)(
        {"params": state.generator.params}, x, jax.random.split(jax.random.key(19))[0])
    assert float(jnp.abs(rec).max()) <= 1.0
    np.testing.assert_allclose(defended.logits(x, jax.random.key(19)), clf.logits(rec),
                               rtol=1e-5)
