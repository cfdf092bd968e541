"""deep_defense (Yan et al. 2018) and its baselines deepfool_at (Adv. Train I) and parseval:
the differentiated DeepFool against finite differences and closed forms, the regularizer's
branches, frozen BatchNorm, the layer mask, warm starts, Parseval's projection, and tiny
end-to-end fine-tunes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import tiny_config

from robustgan import attacks, main, nets, runs
from robustgan.classifier import Classifier, ModelApply
from robustgan.errors import ConfigError
from robustgan.methods import deep_defense, parseval


def _linear(variables, x, rng=None):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def _smooth(variables, x, rng=None):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w1"])
    return h @ variables["w2"]


def _points(n=6, d=5, seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), (n, d), dtype)


def test_regularizer_picks_exp_minus_c_for_correct_and_exp_d_for_misclassified():
    ratio = jnp.array([0.1, 0.2, 0.3])
    correct = jnp.array([True, False, True])
    expected = (np.exp(-25 * 0.1) + np.exp(5 * 0.2) + np.exp(-25 * 0.3)) / 3
    value = deep_defense.regularizer(ratio, correct, c=25.0, d=5.0)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    # Growing a correct example's ratio lowers the penalty; a misclassified one's raises it.
    grad = jax.grad(lambda r: deep_defense.regularizer(r, correct, c=25.0, d=5.0))(ratio)
    assert grad[0] < 0 < grad[1] and grad[2] < 0


@pytest.mark.parametrize("num_classes", [2, 4])
def test_perturbation_ratio_on_a_linear_classifier_has_its_closed_form(num_classes):
    """Linear f: DeepFool lands on the nearest boundary in one step, so ||r|| =
    1.02 min_k |f_k - f_y| / ||w_k - w_y|| for a correct example (the minimum over all
    other classes), and for a misclassified one the distance to the boundary with y.
    With 2 classes both branches are one step; with 4 every example is correct (a
    misclassified one may need several steps when a third class is in the way)."""
    key_w, key_b = jax.random.split(jax.random.key(1))
    variables = {"w": jax.random.normal(key_w, (5, num_classes)),
                 "b": jax.random.normal(key_b, (num_classes,))}
    classifier = Classifier(_linear, variables, (-10.0, 10.0), num_classes)
    x = _points()
    predicted = _linear(variables, x).argmax(-1)
    y = jnp.array([0, 1, 0, 1, 1, 0]) if num_classes == 2 else predicted

    def closed_form(variables):
        logits, w = _linear(variables, x), variables["w"].T
        ratios = []
        for i in range(len(x)):
            t, others = int(y[i]), [k for k in range(num_classes) if k != int(y[i])]
            dist = min(abs(logits[i, k] - logits[i, t]) / jnp.linalg.norm(w[k] - w[t])
                       for k in others)
            ratios.append(1.02 * dist / jnp.linalg.norm(x[i]))
        return jnp.stack(ratios)

    def ratio_of(variables):
        ratio, _ = deep_defense.perturbation_ratio(
            classifier.replace(variables=variables), x, y, steps=5, overshoot=0.02)
        return ratio

    np.testing.assert_allclose(ratio_of(variables), closed_form(variables), rtol=1e-4)
    _, correct = deep_defense.perturbation_ratio(classifier, x, y, steps=5, overshoot=0.02)
    if num_classes == 2:
        assert 0 < int(correct.sum()) < len(x)  # both branches present
    # The regularizer's gradient through the unrolled DeepFool is the closed form's.
    loss = lambda ratio_fn: lambda v: deep_defense.regularizer(ratio_fn(v), correct, c=25.0,
                                                                 d=5.0)
    g, g_ref = jax.grad(loss(ratio_of))(variables), jax.grad(loss(closed_form))(variables)
    for k in variables:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-3, atol=1e-6)


def test_the_nearest_boundary_is_not_the_runner_up_class():
    """A linear classifier at x = 0 where class 1 has the smaller logit gap (0.1) but a
    far boundary (gap / ||w_1 - w_0|| = 0.1 / 0.01 = 10) and class 2 the larger gap (1)
    but the nearest boundary (1 / 10 = 0.1): DeepFool's r and its gradient follow class
    2, the argmin of the distance, not the most likely other class."""
    with jax.enable_x64(True):
        x = jnp.array([[0.0, 0.0, 1.0]])  # the third input is constant 1: ||x|| = 1
        w = jnp.array([[0.0, 0.01, 0.0], [0.0, 0.0, 10.0], [0.0, 0.0, 0.0]])
        variables = {"w": w, "b": jnp.array([0.0, -0.1, -1.0])}
        y = jnp.array([0])

        def ratio_of(v):
            classifier = Classifier(_linear, v, (-100.0, 100.0), 3)
            return deep_defense.perturbation_ratio(classifier, x, y, steps=1,
                                                   overshoot=0.02)[0][0]

        # r = 1.02 * (1 / ||w_2 - w_0||^2) (w_2 - w_0) = 0.102 e_2; d ratio / d w[1, 2]
        # = 1.02 * d(|b_2| / w[1, 2]) / d w[1, 2] = -1.02 * 1 / 100.
        np.testing.assert_allclose(ratio_of(variables), 0.102, rtol=1e-9)
        grad = jax.grad(ratio_of)(variables)
        np.testing.assert_allclose(grad["w"][1, 2], -1.02 / 100, rtol=1e-9)
        np.testing.assert_allclose(grad["w"][0, 1], 0.0, atol=1e-12)


def _relu_net(variables, x, rng=None):
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ variables["w1"]) @ variables["w2"]


def test_degenerate_examples_give_finite_gradients():
    """An example whose ReLUs are all off has no input gradient (r = 0) and one whose
    DeepFool step explodes would overflow exp(d ratio): the loss and its gradient stay
    finite and bounded (the MNIST MLP went NaN at step ~1,500 before the guards)."""
    variables = {"w1": jnp.abs(jax.random.normal(jax.random.key(12), (5, 4))),
                 "w2": jax.random.normal(jax.random.key(13), (4, 3))}
    x = jnp.concatenate([-jnp.ones((1, 5)), _points(3, seed=14)])  # row 0: every ReLU off
    y = jnp.array([0, 1, 2, 0])

    def reg(v):
        ratio, correct = deep_defense.perturbation_ratio(
            Classifier(_relu_net, v, (-10.0, 10.0), 3), x, y, steps=5, overshoot=0.02)
        return deep_defense.regularizer(ratio, correct, c=25.0, d=5.0)

    grads = jax.grad(reg)(variables)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    capped = deep_defense.regularizer(jnp.array([1e6]), jnp.array([False]), c=25.0, d=5.0)
    np.testing.assert_allclose(capped, np.exp(5.0 * deep_defense.MAX_RATIO), rtol=1e-5)


def test_fooled_examples_stop_moving():
    """Once across the boundary, further iterations add nothing: 1 step = 5 steps on a
    linear classifier, and an example already misclassified (untargeted) gets r = 0."""
    variables = {"w": jax.random.normal(jax.random.key(2), (5, 3)), "b": jnp.zeros(3)}
    classifier = Classifier(_linear, variables, (-10.0, 10.0), 3)
    x = _points(8, seed=3)
    predicted = _linear(variables, x).argmax(-1)
    r1, r5 = (attacks.deepfool_perturbation(classifier, x, predicted, max_iter=n)
              for n in (1, 5))
    np.testing.assert_allclose(r1, r5, rtol=1e-6, atol=1e-7)
    wrong = (predicted + 1) % 3
    np.testing.assert_array_equal(attacks.deepfool_perturbation(classifier, x, wrong), 0.0)


def test_differentiated_deepfool_matches_finite_differences_in_float64():
    """d/dt reg(theta + t v) by central differences (float64) against jax.grad . v, on a
    small tanh net where DeepFool takes several steps."""
    with jax.enable_x64(True):
        k1, k2, kv = jax.random.split(jax.random.key(4), 3)
        variables = {"w1": jax.random.normal(k1, (5, 8), jnp.float64),
                     "w2": jax.random.normal(k2, (8, 3), jnp.float64)}
        x = _points(6, seed=5, dtype=jnp.float64)
        y = jnp.array([0, 1, 2, 0, 1, 2])

        def reg(v):
            classifier = Classifier(_smooth, v, (-10.0, 10.0), 3)
            ratio, correct = deep_defense.perturbation_ratio(classifier, x, y, steps=5,
                                                             overshoot=0.02)
            return deep_defense.regularizer(ratio, correct, c=3.0, d=2.0)

        direction = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape, jnp.float64),
                                 variables, dict(zip(variables, jax.random.split(kv), strict=True)))
        h = 1e-6
        shifted = lambda t: jax.tree.map(lambda p, v: p + t * v, variables, direction)
        numeric = (reg(shifted(h)) - reg(shifted(-h))) / (2 * h)
        grad = jax.grad(reg)(variables)
        analytic = sum(jnp.vdot(grad[k], direction[k]) for k in variables)
        assert abs(float(analytic)) > 1e-3  # a real gradient
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


def test_remat_gives_the_same_gradient():
    variables = {"w1": jax.random.normal(jax.random.key(6), (5, 8)),
                 "w2": jax.random.normal(jax.random.key(7), (8, 3))}
    x, y = _points(6, seed=8), jnp.array([0, 1, 2, 0, 1, 2])

    def reg(v, remat):
        ratio, correct = deep_defense.perturbation_ratio(
            Classifier(_smooth, v, (-10.0, 10.0), 3), x, y, steps=5, overshoot=0.02,
            remat=remat)
        return deep_defense.regularizer(ratio, correct, c=3.0, d=2.0)

    a, b = jax.grad(reg)(variables, False), jax.grad(reg)(variables, True)
    for k in variables:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


class _BNNet(nn.Module):
    """Dense, BatchNorm, ReLU, Dense: a model with BatchNorm to freeze."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False, batch_stats=None):
        h = nn.Dense(8)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not (train if batch_stats is None else batch_stats),
                         momentum=0.9)(h)
        return nn.Dense(self.num_classes)(nn.relu(h))


def _settings(**overrides) -> ml_collections.ConfigDict:
    s = deep_defense.defaults()
    s.space = "data"
    s.update(overrides)
    return s


def _bn_net():
    import optax
    return nets.SupervisedNet(module=_BNNet(), tx=deep_defense.frozen_batch_norm(
        optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))),
        num_classes=3, bounds=(-10.0, 10.0))


def test_batch_norm_stays_frozen_while_the_rest_trains():
    net = _bn_net()
    x, y = _points(8, seed=9).reshape(8, 5), jnp.arange(8) % 3
    state = net.init(jax.random.key(0), x)
    # Non-trivial averages, so "frozen" is not "left at the initial zeros and ones".
    state = state.replace(batch_stats=jax.tree.map(lambda a: a + 0.3, state.batch_stats))
    loss_fn = deep_defense.DeepDefenseLoss(net, _settings(c=3.0))
    frozen_stats = state.batch_stats
    for _ in range(3):
        grads = jax.grad(lambda p: loss_fn(p, frozen_stats, x, y)[0])(state.params)
        state = nets.apply_gradients(state, net.tx, grads)
    start = net.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats,
                 jax.tree.map(lambda a: a + 0.3, start.batch_stats))
    jax.tree.map(np.testing.assert_array_equal, state.params["BatchNorm_0"],
                 start.params["BatchNorm_0"])
    assert not np.allclose(state.params["Dense_0"]["kernel"], start.params["Dense_0"]["kernel"])


def test_layer_mask_sends_the_regularizer_gradient_to_one_layer_only():
    net = _bn_net()
    x, y = _points(8, seed=10), jnp.arange(8) % 3
    params = net.init(jax.random.key(1), x).params
    batch_stats = net.init(jax.random.key(1), x).batch_stats
    only_reg = dict(clean_weight=0.0, c=3.0)
    grad = lambda s: jax.grad(lambda p: deep_defense.DeepDefenseLoss(net, s)(
        p, batch_stats, x, y)[0])(params)
    masked, full = grad(_settings(layers=("Dense_1",), **only_reg)), grad(_settings(**only_reg))
    np.testing.assert_allclose(masked["Dense_1"]["kernel"], full["Dense_1"]["kernel"], rtol=1e-6)
    assert float(jnp.abs(full["Dense_0"]["kernel"]).max()) > 0
    np.testing.assert_array_equal(masked["Dense_0"]["kernel"], 0.0)
    with pytest.raises(ConfigError, match="Dense_7.*its layers"):
        deep_defense.check_layers(params, ("Dense_7",))


def test_fgs_term_is_cross_entropy_on_fgs_images():
    net = _bn_net()
    x, y = _points(8, seed=11), jnp.arange(8) % 3
    state = net.init(jax.random.key(2), x)
    s = _settings(weight=0.0, clean_weight=0.5, fgs_weight=0.5, fgs_eps=0.05)
    loss, metrics = deep_defense.DeepDefenseLoss(net, s)(state.params, state.batch_stats, x, y)
    classifier = Classifier(ModelApply(net.module), nets.variables(state.params,
                                                                   state.batch_stats),
                            net.bounds, 3)
    x_fgs = attacks.fgsm(classifier, x, y, eps=0.05)
    ce = lambda z: attacks.common.cross_entropy(classifier.logits(z), y).mean()
    np.testing.assert_allclose(metrics["fgs_loss"], ce(x_fgs), rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * ce(x) + 0.5 * ce(x_fgs), rtol=1e-5)


def test_parseval_projection_converges_to_orthonormal_rows_and_keeps_them():
    kernel = 0.3 * jax.random.normal(jax.random.key(3), (40, 12))  # 12 rows of W, 40 inputs
    gram = lambda k: k.T @ k
    for i in range(300):
        kernel = parseval.project_rows(kernel, jax.random.key(i), beta=0.3, fraction=0.3)
    np.testing.assert_allclose(gram(kernel), np.eye(12), atol=1e-3)
    # A tight frame is a fixed point: one more step (the paper's beta) changes nothing.
    again = parseval.project_rows(kernel, jax.random.key(999), beta=1e-4, fraction=0.3)
    np.testing.assert_allclose(again, kernel, atol=1e-6)


def test_parseval_updates_a_fraction_of_rows_of_convolution_kernels():
    kernel = jax.random.normal(jax.random.key(4), (3, 3, 2, 10))
    new = parseval.project_rows(kernel, jax.random.key(5), beta=0.1, fraction=0.3)
    changed = np.any(np.asarray(new != kernel).reshape(-1, 10), axis=0)
    assert changed.sum() == 3  # 30% of the 10 output channels


# --- end to end -------------------------------------------------------------------------


def _yan_tiny(tmp_path, method, reference, steps=2, **overrides):
    base = {"model.name": "lenet5", "optimizer.name": "sgd", "optimizer.learning_rate": 5e-4,
            "init_from.run": reference, "batch_size": 8, "deep_defense.space": "data"}
    return tiny_config(tmp_path, method, steps=steps, **{**base, **overrides})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    config = tiny_config(tmp, "standard", steps=12, **{"model.name": "lenet5"})
    main.run(config, str(tmp / "ref"), "train")
    return tmp, str(tmp / "ref")


def test_init_from_starts_deep_defense_at_the_reference_parameters(reference):
    tmp, ref = reference
    config = _yan_tiny(tmp, "deep_defense", ref)
    method = runs.build_method(config)
    x = jnp.zeros((1, 28, 28, 1))
    state = runs.warm_start(method, method.init(jax.random.key(9), x), config)
    jax.tree.map(np.testing.assert_array_equal, state.params, runs.load_run(ref).state.params)


@pytest.mark.parametrize("method, overrides", [
    ("deep_defense", {}),
    ("deep_defense", {"deep_defense.weight": 0.0, "deep_defense.clean_weight": 0.5,
                      "deep_defense.fgs_weight": 0.5}),  # Adv. Train II
    ("deep_defense", {"deep_defense.fgs_weight": 1.0}),  # combined
    ("deepfool_at", {"deepfool_at.steps": 3}),
    ("parseval", {}),
], ids=["deep_defense", "adv_train_ii", "combined", "deepfool_at", "parseval"])
def test_each_fine_tuning_row_runs_end_to_end_and_moves_off_the_reference(
        reference, method, overrides):
    tmp, ref = reference
    if method == "deepfool_at":
        overrides = {**overrides, "deepfool_at.source": ref}
    workdir = str(tmp / f"{method}_{len(overrides)}")
    results = main.run(_yan_tiny(tmp, method, ref, **overrides), workdir, "train")
    assert {"clean", "fgsm", "pgd"} <= set(results)
    start, end = runs.load_run(ref).state.params, runs.load_run(workdir).state.params
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(start), jax.tree.leaves(end), strict=True))
    assert moved > 0


def test_bad_configs_are_stopped_with_the_key_named(tmp_path):
    from robustgan import config as configlib
    with pytest.raises(ConfigError, match="init_from.run"):
        configlib.validate(tiny_config(tmp_path, "deep_defense", **{"model.name": "lenet5"}))
    with pytest.raises(ConfigError, match="deep_defense.space"):
        configlib.validate(_yan_tiny(tmp_path, "deep_defense", "somewhere",
                                     **{"deep_defense.space": "pixels"}))
    with pytest.raises(ConfigError, match="deepfool_at.source"):
        configlib.validate(_yan_tiny(tmp_path, "deepfool_at", "somewhere"))


def test_model_input_space_refuses_a_model_without_a_fixed_first_layer():
    """No silent fallback to the data space: rho in 'model_input' space, and the space
    itself, need a model with `preprocess` and `body`."""
    from robustgan.classifier import model_input_space
    from robustgan.evaluate import measures

    variables = {"w": jnp.ones((5, 3)), "b": jnp.zeros(3)}
    classifier = Classifier(_linear, variables, (0.0, 1.0), 3)
    with pytest.raises(ValueError, match="no fixed first layer"):
        model_input_space(classifier, _points())
    with pytest.raises(ValueError, match="no fixed first layer"):
        measures.rho(classifier, np.zeros((4, 5), np.float32), np.zeros(4, np.int32),
                     batch_size=4, space="model_input")
