"""L2L-DA (Jang et al., ICCV 2019) and the L2L baseline: the U-Net generator, the
recursion (Eq. 5), the losses (Eqs. 6-8), and end-to-end runs of Table 1's rows."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_config
from jax.flatten_util import ravel_pytree

from robustgan import config as configlib
from robustgan import runs, train
from robustgan.attacks import recursive
from robustgan.attacks.common import cross_entropy
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods import l2l_da
from robustgan.methods.supervised import supervised_net
from robustgan.models.unet import ConditionalBatchNorm, UNetGenerator, normalize_gradient

BOUNDS = (-1.0, 1.0)
# Tiny settings for CPU: width-2 U-Net, 2 recursion steps, a rolled scan (compiles faster).
TINY = {"l2l_da.generator_width": 2, "l2l_da.steps": 2, "l2l_da.unroll": 1,
        "l2l.generator_width": 2, "model.name": "lenet5", "batch_size": 8}


@pytest.fixture(autouse=True)
def fast_keys():
    """'rbg' keys only make initialization faster to compile on CPU than threefry."""
    with jax.default_prng_impl("rbg"):
        yield


def _linear(variables, x, rng=None):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def linear_classifier(key, shape, classes=3, dtype=jnp.float32):
    dim = int(np.prod(shape))
    variables = {"w": jax.random.normal(key, (dim, classes), dtype) / np.sqrt(dim) * 8,
                 "b": jnp.zeros(classes, dtype)}
    return Classifier(_linear, variables, BOUNDS, classes)


def images(key, n=4, shape=(8, 8, 1), dtype=jnp.float32):
    """Images in [-1, 1] with some pixels on the bounds, where the range clip must act."""
    x = jax.random.uniform(key, (n, *shape), dtype, minval=-1.0, maxval=1.0)
    return x.at[:, 0].set(1.0).at[:, 1].set(-1.0)


def make_generator(key, x, classes=3, **kwargs):
    """A width-2 U-Net and its initial (params, batch_stats)."""
    module = UNetGenerator(num_classes=classes, width=2, **kwargs)
    n = x.shape[0]
    variables = module.init(key, x, jnp.zeros(n, jnp.int32), jnp.zeros((n, 8), x.dtype),
                            jnp.zeros_like(x), jnp.zeros_like(x))
    return module, variables["params"], variables["batch_stats"]


def recursion(module, *, eps=0.3, step_fraction=0.25, steps=3, remat=False):
    scale = BOUNDS[1] - BOUNDS[0]
    return l2l_da.Recursion(l2l_da.GeneratorApply(module), eps=eps * scale,
                            eps_step=step_fraction * eps * scale, steps=steps, remat=remat)


# --- the generator ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_unet_returns_a_direction_shaped_like_the_image(shape):
    x = images(jax.random.key(0), 3, shape)
    module, params, stats = make_generator(jax.random.key(1), x, classes=10)
    z = jax.random.normal(jax.random.key(2), (3, 8))
    grad = jax.random.normal(jax.random.key(3), x.shape)
    out, _ = l2l_da.GeneratorApply(module)(params, stats, x, jnp.arange(3), z, 0 * x, grad)
    chex.assert_shape(out, x.shape)
    assert float(jnp.abs(out).max()) <= 1.0 and float(jnp.abs(out).std()) > 1e-3
    with pytest.raises(ConfigError, match="multiples of 4"):
        module.apply({"params": params, "batch_stats": stats}, x[:, :26, :26], jnp.arange(3),
                     z, x[:, :26, :26], x[:, :26, :26])


def test_gradient_normalization_modes():
    grad = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)) * jnp.array([1.0, 50.0])[:, None,
                                                                                       None, None]
    per_example = normalize_gradient(grad, "example")
    np.testing.assert_allclose(jnp.sqrt((per_example ** 2).sum((1, 2, 3))), 1.0, rtol=1e-5)
    per_channel = normalize_gradient(grad, "channel")
    np.testing.assert_allclose(jnp.sqrt((per_channel ** 2).sum((1, 2))), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(normalize_gradient(grad, "none"), grad)
    # The direction is kept, and scaling an example's gradient changes nothing.
    np.testing.assert_allclose(normalize_gradient(7 * grad, "example"), per_example, rtol=1e-5)
    np.testing.assert_allclose(per_example * jnp.sqrt((grad ** 2).sum((1, 2, 3), keepdims=True)),
                               grad, rtol=1e-5)


def test_conditional_batch_norm_adds_the_class_rows_to_the_shared_ones():
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 3)) * 3 + 1
    y = jnp.array([0, 1, 2, 1])
    module = ConditionalBatchNorm(num_classes=3)
    variables = module.init(jax.random.key(1), x, y, True)
    p = variables["params"]
    p = {**p, "class_offset": jax.random.normal(jax.random.key(2), (3, 3))}
    out, _ = module.apply({**variables, "params": p}, x, y, True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    normalized = (x - mean) / jnp.sqrt(var + 1e-5)
    scale = 1.0 + p["scale"] + p["class_scale"][y]
    offset = p["offset"] + p["class_offset"][y]
    np.testing.assert_allclose(out, normalized * scale[:, None, None] + offset[:, None, None],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.std(p["class_scale"]), 0.02, rtol=0.8)  # N(0, 0.02) init


@pytest.mark.parametrize("train_mode", [True, False])
def test_the_label_changes_the_output_only_through_conditional_batch_norm(train_mode):
    x = images(jax.random.key(0), 4, (8, 8, 1))
    z = jax.random.normal(jax.random.key(2), (4, 8))
    grad = jax.random.normal(jax.random.key(3), x.shape)
    y, other = jnp.array([0, 1, 2, 0]), jnp.array([1, 2, 0, 1])
    outputs = {}
    for use_y in (True, False):
        module, params, stats = make_generator(jax.random.key(1), x, use_y=use_y)
        variables = {"params": params, "batch_stats": stats}
        run = lambda labels, m=module, v=variables: m.apply(  # noqa: E731
            v, x, labels, z, 0 * x, grad, train=train_mode, mutable=["batch_stats"])[0]
        outputs[use_y] = (run(y), run(other))
    assert float(jnp.abs(outputs[True][0] - outputs[True][1]).max()) > 1e-4
    np.testing.assert_array_equal(outputs[False][0], outputs[False][1])


def test_delta_and_z_switches_remove_those_inputs():
    x = images(jax.random.key(0), 4, (8, 8, 1))
    y = jnp.array([0, 1, 2, 0])
    grad = jax.random.normal(jax.random.key(3), x.shape)
    z1, z2 = jax.random.normal(jax.random.key(4), (2, 4, 8))
    delta = 0.1 * jax.random.normal(jax.random.key(5), x.shape)

    def outputs(**kwargs):
        module, params, stats = make_generator(jax.random.key(1), x, **kwargs)
        run = lambda z, d: l2l_da.GeneratorApply(module)(params, stats, x, y, z, d, grad)[0]  # noqa: E731
        return run(z1, delta), run(z2, delta), run(z1, 0 * delta)

    base, other_z, no_delta = outputs()
    assert float(jnp.abs(base - other_z).max()) > 1e-4
    assert float(jnp.abs(base - no_delta).max()) > 1e-4
    base, other_z, no_delta = outputs(use_z=False, use_delta=False)
    np.testing.assert_array_equal(base, other_z)
    np.testing.assert_array_equal(base, no_delta)


# --- the recursion and the losses --------------------------------------------------------


def test_diversity_loss_by_hand():
    """Eq. 7 per example, then the mean: (1/T) sum_t ||dx_t||_1 / ||dz||_1."""
    x1 = jnp.zeros((2, 2, 3))  # T=2 steps, N=2 examples, 3 pixels
    x2 = jnp.array([[[1.0, -2.0, 0.0], [0.5, 0.0, 0.0]],
                    [[0.0, 0.0, 5.0], [0.0, -0.5, 0.5]]])
    z1 = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    z2 = jnp.array([[0.0, 2.0], [3.0, -1.0]])
    # example 0: (3 + 5) / 2 steps / ||(1, -1)||_1 = 4 / 2 = 2
    # example 1: (0.5 + 1) / 2 / ||(-3, 1)||_1 = 0.75 / 4 = 0.1875
    np.testing.assert_allclose(l2l_da.diversity_loss(x1, x2, z1, z2), (2 + 0.1875) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(l2l_da.diversity_loss(x1, x1, z1, z2), 0.0)


def test_recursion_is_eq5_and_stays_in_the_ball_and_the_range():
    """The scan against a Python loop of Eq. 5 at every step, with a step of half of eps so
    the ball's clip acts, and pixels on the bounds so the range clip acts."""
    x = images(jax.random.key(0), 4)
    y = jnp.array([0, 1, 2, 0])
    z = jax.random.normal(jax.random.key(2), (4, 8))
    classifier = linear_classifier(jax.random.key(3), x.shape[1:])
    module, params, stats = make_generator(jax.random.key(1), x)
    # A generator that pushes hard: scale the last convolution's kernel.
    last = max((k for k in params if k.startswith("Conv_")), key=lambda k: int(k[5:]))
    params = {**params, last: {**params[last], "kernel": 50 * params[last]["kernel"]}}
    rec = recursion(module, eps=0.3, step_fraction=0.5, steps=4)
    x_adv, losses, _ = jax.jit(l2l_da.trajectory, static_argnums=0)(
        rec, params, stats, classifier, x, y, z)
    chex.assert_shape(x_adv, (4, *x.shape))
    chex.assert_shape(losses, (4, 4))

    apply = l2l_da.GeneratorApply(module)
    ce = lambda v: cross_entropy(classifier.logits(v), y)  # noqa: E731
    delta, current = jnp.zeros_like(x), x
    for t in range(4):
        grad = jax.grad(lambda v: ce(v).sum())(current)
        direction, stats = apply(params, stats, x, y, z, delta, grad)
        delta = jnp.clip(delta + rec.eps_step * direction, -rec.eps, rec.eps)
        current = jnp.clip(x + delta, *BOUNDS)
        np.testing.assert_allclose(x_adv[t], current, atol=1e-5, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(losses[t], ce(current), rtol=1e-4, atol=1e-5)
        assert float(jnp.abs(x_adv[t] - x).max()) <= rec.eps + 1e-6
        assert BOUNDS[0] <= float(x_adv[t].min()) and float(x_adv[t].max()) <= BOUNDS[1]
    # Both projections were active: pixels at the ball's edge, and on the data bounds
    # where x + delta left the range.
    distance = jnp.abs(x_adv[-1] - x)
    assert int(jnp.sum(jnp.isclose(distance, rec.eps, atol=1e-6))) > 10
    assert int(jnp.sum((x_adv[-1] == 1.0) & (x < 1.0))) > 0
    assert float(jnp.abs(x_adv[0] - x).max()) <= rec.eps_step + 1e-6  # one step: eps_step


def test_one_step_without_z_or_diversity_is_the_l2l_baseline(tmp_path):
    """l2l (Chen et al.'s Eq. 4) is l2l_da with T=1, no z and no diversity term, and the
    l2l baseline's inputs: one train step gives the same networks; its perturbation is
    clip(x + eps g(x, grad L(x)))."""
    same = {"steps": 1, "step_fraction": 1.0, "use_z": False, "diversity_weight": 0.0,
            "use_y": False, "use_delta": False, "grad_norm": "none"}
    da = tiny_config(tmp_path, "l2l_da",
                     **{**TINY, **{f"l2l_da.{k}": v for k, v in same.items()}})
    base = tiny_config(tmp_path, "l2l", **TINY)
    assert all(base.l2l[k] == v for k, v in same.items())  # the baseline's settings
    x = images(jax.random.key(0), 8, (28, 28, 1))
    y = jnp.arange(8)
    states = []
    for method in (l2l_da.l2l_da(da, 10), l2l_da.L2L.build(base, 10, {})):
        state = method.init(jax.random.key(1), x)
        states.append((state, jax.jit(method.train_step)(state, x, y, jax.random.key(2))))
    (init_a, (after_a, metrics_a)), (init_b, (after_b, metrics_b)) = states
    chex.assert_trees_all_close(after_a, after_b)
    chex.assert_trees_all_close(metrics_a, metrics_b)
    assert "div_loss" not in metrics_b

    module = l2l_da.generator_module(base.l2l, 10)
    classifier = supervised_net(base, 10).classifier(init_b.d)
    rec = recursion(module, eps=base.l2l.eps, step_fraction=1.0, steps=1)
    x_adv, _, _ = l2l_da.trajectory(rec, init_b.g.params, init_b.g.batch_stats, classifier, x,
                                    y, jnp.zeros((8, 8)))
    grad = jax.grad(lambda v: cross_entropy(classifier.logits(v), y).sum())(x)
    direction, _ = l2l_da.GeneratorApply(module)(init_b.g.params, init_b.g.batch_stats, x,
                                                 y, None, None, grad)
    eq4 = jnp.clip(x + 2 * base.l2l.eps * direction, *BOUNDS)
    np.testing.assert_allclose(x_adv[0], eq4, atol=1e-5)
    assert float(jnp.abs(eq4 - x).max()) > 0.5  # a one-shot step of the whole eps (0.6)


def test_generator_gradient_through_the_recursion_matches_finite_differences(monkeypatch):
    """d/ds of Eq. 8 at phi + s v by central differences (float64) against jax.grad . v,
    with diversity (a duplicated batch, two z) and delta as an input. On a two-class
    linear classifier the normalized input gradient is (w_other - w_y) / norm whatever
    x_adv is, so the stop_gradient on it leaves the function's derivative unchanged.
    The attacks' cross_entropy computes in float32: here a float64 one stands in."""
    monkeypatch.setattr(recursive, "cross_entropy",
                        optax.softmax_cross_entropy_with_integer_labels)
    with jax.enable_x64(True):
        x = images(jax.random.key(0), 4, dtype=jnp.float64)
        y = jnp.array([0, 1, 1, 0])
        z = jax.random.normal(jax.random.key(2), (8, 8), jnp.float64)
        classifier = linear_classifier(jax.random.key(3), x.shape[1:], classes=2,
                                       dtype=jnp.float64)
        module, params, stats = make_generator(jax.random.key(1), x, classes=2)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        stats = jax.tree.map(lambda p: p.astype(jnp.float64), stats)
        rec = recursion(module, steps=3)

        @jax.jit
        def objective(phi):
            return l2l_da.generator_objective(rec, phi, stats, classifier, x, y, z,
                                              diversity_weight=5.0)[0]

        flat, unravel = ravel_pytree(params)
        v = jax.random.normal(jax.random.key(4), flat.shape, jnp.float64)
        h = 1e-6
        numeric = (objective(unravel(flat + h * v)) - objective(unravel(flat - h * v))) / (2 * h)
        analytic = jnp.vdot(ravel_pytree(jax.grad(objective)(params))[0], v)
        assert abs(float(analytic)) > 1e-3
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


def test_objective_is_eq8_and_remat_gives_the_same_gradient():
    """Eq. 8 = mean CE over steps and examples + lambda z_dim / x_dim * Eq. 7; sum_steps
    multiplies it by T; jax.checkpoint on the scan body changes no gradient."""
    x = images(jax.random.key(0), 4)
    y = jnp.array([0, 1, 2, 0])
    z = jax.random.normal(jax.random.key(2), (8, 8))
    classifier = linear_classifier(jax.random.key(3), x.shape[1:])
    module, params, stats = make_generator(jax.random.key(1), x)
    rec, remat = recursion(module, steps=2), recursion(module, steps=2, remat=True)

    @jax.jit
    def parts(phi):
        objective = lambda r, p, **kw: l2l_da.generator_objective(  # noqa: E731
            r, p, stats, classifier, x, y, z, diversity_weight=0.5, **kw)
        xx, yy = jnp.concatenate([x, x]), jnp.concatenate([y, y])
        return (objective(rec, phi), objective(rec, phi, sum_steps=True)[0],
                l2l_da.trajectory(rec, phi, stats, classifier, xx, yy, z),
                [jax.grad(lambda p, r=r: objective(r, p)[0])(phi) for r in (rec, remat)])

    (value, aux), summed, (x_adv, losses, _), grads = parts(params)
    div = l2l_da.diversity_loss(x_adv[:, :4], x_adv[:, 4:], z[:4], z[4:])
    np.testing.assert_allclose(value, losses.mean() + 0.5 * 8 / 64 * div, rtol=1e-5)
    np.testing.assert_allclose(aux.metrics["div_loss"], div, rtol=1e-5)
    np.testing.assert_allclose(aux.x_adv, x_adv[-1])
    np.testing.assert_allclose(summed, 2 * value, rtol=1e-5)
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)  # float32 round-off


def test_diversity_term_makes_the_two_z_give_different_perturbations_and_grows():
    """With lambda > 0 the two copies of the batch (z1, z2) take different paths, and
    ascending the objective with a large lambda spreads them further apart."""
    x = images(jax.random.key(0), 4)
    y = jnp.array([0, 1, 2, 0])
    z = jax.random.normal(jax.random.key(2), (8, 8))
    classifier = linear_classifier(jax.random.key(3), x.shape[1:])
    module, params, stats = make_generator(jax.random.key(1), x)
    rec = recursion(module, steps=2)

    @jax.jit
    def ascend(phi):
        (value, aux), grad = jax.value_and_grad(
            lambda p: l2l_da.generator_objective(rec, p, stats, classifier, x, y, z,
                                                 diversity_weight=1e3), has_aux=True)(phi)
        return jax.tree.map(lambda p, g: p + 1e-3 * g, phi, grad), aux

    divs = []
    for _ in range(4):
        params, aux = ascend(params)
        divs.append(float(aux.metrics["div_loss"]))
        x_adv = aux.x_adv
        assert float(jnp.abs(x_adv[:4] - x_adv[4:]).max()) > 1e-3
    assert divs[-1] > 1.5 * divs[0], divs


# --- end to end --------------------------------------------------------------------------


def logged(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


# End to end: the full method, the one-shot row without diversity, and the baseline (the
# other rows' switches are covered by the generator and recursion tests above; each run
# here costs ~15 s of CI time, mostly compilation).
@pytest.mark.parametrize("method, row", [
    ("l2l_da", "R O, D O"), ("l2l_da", "R X, D X"), ("l2l_da", "delta X, y X"), ("l2l", None)])
def test_each_ablation_row_and_l2l_train_end_to_end(tmp_path, method, row):
    overrides = {f"{method}.{k}": v for k, v in (l2l_da.ABLATIONS.get(row) or {}).items()}
    config = tiny_config(tmp_path, method, steps=2, **{**TINY, **overrides})
    configlib.validate(config)
    x = images(jax.random.key(0), 8, (28, 28, 1))
    method_ = l2l_da.L2L_DA.build(config, 10, {}) if method == "l2l_da" else \
        l2l_da.L2L.build(config, 10, {})
    initial = jax.jit(method_.init)(runs.init_key(config), x[:1])  # as train.prepare_run
    workdir = str(tmp_path / "run")
    _, _, state = train.train(config, workdir)
    assert (int(state.step), int(state.d.step), int(state.g.step)) == (2, 2, 2)
    for name in ("d", "g"):
        before, after = (ravel_pytree(getattr(s, name).params)[0] for s in (initial, state))
        assert bool(jnp.all(jnp.isfinite(after))) and float(jnp.abs(after - before).max()) > 0
    rows = logged(workdir)
    settings = config[method]
    for key in ("loss", "clean_loss", "adv_loss", "cls_loss", "g_objective"):
        assert np.isfinite(rows[-1][key]), key
    assert ("div_loss" in rows[-1]) == bool(settings.diversity_weight)
    if settings.steps == 1:
        assert rows[-1]["first_step_loss"] == rows[-1]["last_step_loss"]
    # LeNet-5 has no BatchNorm or dropout: the classifier step saw the recursion's x_adv^(T).
    np.testing.assert_allclose(rows[-1]["last_step_loss"], rows[-1]["adv_loss"], rtol=1e-5)


def test_validation_names_the_bad_key(tmp_path):
    with pytest.raises(ConfigError, match="use_z"):
        configlib.validate(tiny_config(tmp_path, "l2l_da", **{"l2l_da.use_z": False}))
    with pytest.raises(ConfigError, match="l2l.grad_norm"):
        configlib.validate(tiny_config(tmp_path, "l2l", **{"l2l.grad_norm": "frobenius"}))
    with pytest.raises(ConfigError, match="l2l_da.steps"):
        configlib.validate(tiny_config(tmp_path, "l2l_da", **{"l2l_da.steps": 0}))
