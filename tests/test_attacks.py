"""Gradient attacks (FGSM family, PGD, APGD), the registry and argument checks.

Also the tiny models every tests/test_attacks*.py file builds on: a linear model, whose
attacks have closed forms, and an MLP trained on synthetic data. Every test uses one batch
shape and `SETTINGS`' static arguments, so each compiled attack is reused across tests.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from robustgan import attacks, models
from robustgan.attacks import autopgd, common
from robustgan.classifier import Classifier, ModelApply

N, DIM, CLASSES = 128, 12, 4
EPS = 0.1
SETTINGS = {  # what every test runs each attack with (eps may vary: it is traced)
    "fgsm": dict(eps=EPS),
    "fgsm_predicted": dict(eps=EPS),
    "ll_fgs": dict(eps=EPS),
    "rand_fgsm": dict(eps=EPS),
    "pgd": dict(eps=EPS, step_size=EPS / 4, steps=10, unroll=1),
    "apgd_ce": dict(eps=EPS, steps=10, unroll=1),
    "apgd_dlr": dict(eps=EPS, steps=10, unroll=1),
    "cw_l2": dict(steps=200, binary_steps=8, learning_rate=0.02, initial_const=0.1, unroll=1),
    "deepfool": dict(max_iter=10, unroll=1),
    "random_search": dict(eps=EPS, samples=10, unroll=1),
}


def run(name, classifier, x, y, seed=0, *, rng=None, **overrides):
    """Attack `name` with SETTINGS[name], some of them overridden, with the key rng or
    key(seed)."""
    attack = attacks.make_attack(name, **{**SETTINGS[name], **overrides})
    return attack(classifier, x, y, jax.random.key(seed) if rng is None else rng)


def linear_apply(variables, x, rng=None):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def linear_classifier(seed=0, classes=CLASSES, bounds=(0.0, 1.0)):
    rng = np.random.default_rng(seed)
    variables = {
        "w": jnp.asarray(rng.normal(size=(DIM, classes)), jnp.float32),
        "b": jnp.asarray(0.1 * rng.normal(size=classes), jnp.float32),
    }
    return Classifier(linear_apply, variables, bounds, classes)


def random_inputs(seed, bounds=(0.0, 1.0), margin=0.0):
    """Uniform inputs in the data range shrunk by `margin`; with no margin, two rows sit on
    the bounds."""
    low, high = bounds
    x = np.random.default_rng(seed).uniform(low + margin, high - margin, size=(N, DIM))
    if margin == 0.0:
        x[0], x[1] = low, high
    return jnp.asarray(x, jnp.float32)


def synthetic_data(seed, n=N):
    """Overlapping Gaussian blobs in [0, 1]^DIM, one per class."""
    centers = np.random.default_rng(1000).uniform(0.3, 0.7, size=(CLASSES, DIM))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = np.clip(centers[y] + 0.12 * rng.normal(size=(n, DIM)), 0.0, 1.0)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.Dense(CLASSES)(x)


def mlp_apply(variables, x, rng=None):
    return MLP().apply(variables, x)


def symmetric_mlp_apply(variables, x, rng=None):
    """The MLP for data in [-1, 1]: maps them back to the [0, 1] it was trained on."""
    return mlp_apply(variables, (x + 1) / 2)


def train(apply_fn, variables, steps=300):
    x, y = synthetic_data(0, 512)
    optimizer = optax.adam(3e-2)

    def step(state, _):
        params, opt_state = state
        grads = jax.grad(lambda p: common.cross_entropy(apply_fn(p, x), y).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    fit = jax.jit(lambda v: jax.lax.scan(step, (v, optimizer.init(v)), None, steps)[0][0])
    return Classifier(apply_fn, fit(variables), (0.0, 1.0), CLASSES)


@functools.cache
def trained_mlp():
    return train(mlp_apply, jax.jit(MLP().init)(jax.random.key(0), jnp.zeros((1, DIM))))


@functools.cache
def trained_linear():
    return train(linear_apply, linear_classifier().variables)


@functools.cache
def eval_data():
    return synthetic_data(1)


def accuracy(classifier, x, y):
    return float(jnp.mean(classifier.logits(x).argmax(-1) == y))


# --- FGSM family: closed forms on linear models ---------------------------------------


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 1.0)])
def test_fgsm_moves_eps_along_sign_of_weight_difference(bounds):
    clf = linear_classifier(classes=2, bounds=bounds)
    x = random_inputs(1, bounds=bounds, margin=0.3)
    y = jnp.arange(N) % 2
    w = clf.variables["w"]
    toward_other = jnp.sign(w[:, 1 - y] - w[:, y]).T
    expected = x + EPS * (bounds[1] - bounds[0]) * toward_other  # eps in pixel units
    chex.assert_trees_all_close(run("fgsm", clf, x, y), expected)
    if bounds == (0.0, 1.0):  # targeted at the other class: the same step
        chex.assert_trees_all_close(run("fgsm", clf, x, 1 - y, targeted=True), expected)


def test_fgsm_predicted_attacks_the_predicted_label():
    clf = linear_classifier()
    x = random_inputs(2, margin=0.2)
    predicted = clf.logits(x).argmax(-1)
    wrong = (predicted + 1) % CLASSES
    chex.assert_trees_all_equal(
        run("fgsm_predicted", clf, x, wrong), run("fgsm", clf, x, predicted)
    )


def test_ll_fgs_is_equation_12():
    clf = linear_classifier()
    x = random_inputs(3, margin=0.2)
    logits = clf.logits(x)
    least_likely = logits.argmin(-1)
    # grad_x CE(Wx + b, t) = W (softmax - onehot_t)
    grad = (jax.nn.softmax(logits) - jax.nn.one_hot(least_likely, CLASSES)) @ clf.variables["w"].T
    expected = x - EPS * jnp.sign(grad)
    chex.assert_trees_all_close(run("ll_fgs", clf, x, None), expected)


def test_rand_fgsm_is_a_random_sign_step_then_an_fgsm_step():
    clf = linear_classifier(classes=2)
    x = random_inputs(4, margin=0.3)
    y = jnp.zeros(N, jnp.int32)
    alpha = 0.05
    x_adv = run("rand_fgsm", clf, x, y, alpha=alpha)
    w = clf.variables["w"]
    noise = x_adv - x - (EPS - alpha) * jnp.sign(w[:, 1] - w[:, 0])
    chex.assert_trees_all_close(jnp.abs(noise), jnp.full_like(x, alpha), atol=1e-6)
    assert 0.4 < float(jnp.mean(noise > 0)) < 0.6  # sign(N(0, I))
    assert not jnp.array_equal(run("rand_fgsm", clf, x, y, seed=1, alpha=alpha), x_adv)


# --- every attack stays in its ball and the data range ----------------------------------


BALL_CASES = [
    (name, "linf", (0.0, 1.0))
    for name in ("fgsm", "fgsm_predicted", "ll_fgs", "rand_fgsm", "pgd", "apgd_ce", "apgd_dlr")
] + [("pgd", "l2", (0.0, 1.0)), ("apgd_ce", "l2", (-1.0, 1.0)), ("pgd", "linf", (-1.0, 1.0))] + [
    ("random_search", "linf", (0.0, 1.0)), ("random_search", "l2", (-1.0, 1.0))]


@pytest.mark.parametrize("name, norm, bounds", BALL_CASES)
def test_attacks_stay_in_their_ball_and_the_data_range(name, norm, bounds):
    apply_fn = mlp_apply if bounds == (0.0, 1.0) else symmetric_mlp_apply
    clf = Classifier(apply_fn, trained_mlp().variables, bounds, CLASSES)
    extra = {} if norm == "linf" else {"norm": norm}
    for seed in range(3):
        x = random_inputs(seed, bounds=bounds)
        y = jnp.asarray(np.random.default_rng(seed).integers(0, CLASSES, N))
        eps = [0.03, 0.1, 0.3][seed] * (1 if norm == "linf" else 5)
        if name == "rand_fgsm":
            extra["alpha"] = eps / 2
        x_adv = run(name, clf, x, y, seed, eps=eps, **extra)
        chex.assert_equal_shape([x_adv, x])
        size = common.per_example_norm(x_adv - x, norm)
        assert jnp.all(size <= eps * (bounds[1] - bounds[0]) * (1 + 1e-5))
        assert jnp.all((x_adv >= bounds[0]) & (x_adv <= bounds[1]))
        assert jnp.any(x_adv != x)


# --- strength on trained models ---------------------------------------------------------


def test_pgd_with_restarts_is_at_least_as_strong_as_rand_fgsm():
    clf = trained_mlp()
    x, y = eval_data()
    assert accuracy(clf, x, y) > 0.85
    rand_fgsm_acc = accuracy(clf, run("rand_fgsm", clf, x, y), y)
    pgd_acc = accuracy(clf, run("pgd", clf, x, y, restarts=3, keep_best=True), y)
    assert pgd_acc <= min(rand_fgsm_acc, accuracy(clf, run("fgsm", clf, x, y), y))
    assert pgd_acc < accuracy(clf, x, y) - 0.3


@pytest.mark.parametrize("keep_best", [False, True])
def test_pgd_restarts_keep_each_examples_best_restart(keep_best):
    clf = trained_mlp()
    x, y = eval_data()
    settings = dict(keep_best=keep_best, step_size=EPS / 8)  # small steps: restarts differ
    restarts = 4
    combined = run("pgd", clf, x, y, seed=0, restarts=restarts, **settings)
    # Each restart on its own, with the key common.best_of_restarts gives it.
    keys = jax.random.split(jax.random.key(0), restarts)
    singles = [run("pgd", clf, x, y, rng=k, **settings) for k in keys]
    fooled = jnp.stack([clf.logits(s).argmax(-1) != y for s in singles])
    loss = jnp.stack([common.cross_entropy(clf.logits(s), y) for s in singles])
    assert jnp.any(fooled.any(0) & ~fooled.all(0))  # restarts disagree on some examples
    assert jnp.any(~fooled.any(0))  # and none fools some others
    combined_fooled = clf.logits(combined).argmax(-1) != y
    np.testing.assert_array_equal(combined_fooled, fooled.any(0))
    combined_loss = common.cross_entropy(clf.logits(combined), y)
    assert jnp.all(combined_fooled | (combined_loss >= loss.max(0) - 1e-6))
    # Each example's result is one of its restarts' results.
    assert jnp.all(jnp.stack([jnp.all(combined == s, axis=1) for s in singles]).any(0))


def test_pgd_drives_a_trained_linear_model_to_zero_at_large_eps():
    clf = trained_linear()
    x, y = eval_data()
    assert accuracy(clf, x, y) > 0.85
    assert accuracy(clf, run("pgd", clf, x, y, eps=0.3, step_size=0.075), y) == 0.0
    assert accuracy(clf, run("pgd", clf, x, y, eps=1.5, step_size=0.4, norm="l2"), y) == 0.0


def test_targeted_pgd_reaches_the_target():
    clf = trained_mlp()
    x, y = eval_data()
    target = (y + 1) % CLASSES
    x_adv = run("pgd", clf, x, target, eps=0.3, step_size=0.075, targeted=True)
    assert float(jnp.mean(clf.logits(x_adv).argmax(-1) == target)) >= 0.98


def test_keep_best_is_never_worse_than_the_last_iterate():
    clf = trained_mlp()
    x, y = eval_data()
    # Steps as large as the ball: the loss oscillates, so the last iterate is often not the best.
    last = run("pgd", clf, x, y, step_size=EPS)
    best = run("pgd", clf, x, y, step_size=EPS, keep_best=True)
    fooled_last, fooled_best = (clf.logits(v).argmax(-1) != y for v in (last, best))
    assert jnp.all(fooled_best | ~fooled_last)
    loss_last, loss_best = (common.cross_entropy(clf.logits(v), y) for v in (last, best))
    assert jnp.all(fooled_best | (loss_best >= loss_last - 1e-6))
    assert jnp.any(loss_best > loss_last)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(loss):
    clf = trained_mlp()
    x, y = eval_data()
    for seed in range(3):
        pgd_acc = accuracy(clf, run("pgd", clf, x, y, seed, loss=loss), y)
        assert accuracy(clf, run(f"apgd_{loss}", clf, x, y, seed), y) <= pgd_acc


def test_apgd_checkpoints_follow_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2)
    assert autopgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert autopgd.checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_dlr_loss_closed_form():
    logits = jnp.array([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = jnp.array([0, 0])
    # -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
    chex.assert_trees_all_close(common.dlr(logits, y), jnp.array([-2.0 / 3.0, 2.0 / 1.5]))
    chex.assert_trees_all_close(common.dlr(3 * logits + 7, y), common.dlr(logits, y))


# --- plumbing: gradients, tracing, registry, bad inputs ---------------------------------


@pytest.mark.parametrize("name", ["d1", "lenet5"])
def test_model_logits_gives_the_plain_input_gradient_of_a_conv_net(name):
    module = models.get_model(name, 10)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    clf = Classifier(ModelApply(module), variables, (0.0, 1.0), 10)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    labels = jnp.arange(8) % 10

    def input_grad(logits_fn):
        return jax.jit(jax.grad(lambda x_: common.cross_entropy(logits_fn(x_), labels).sum()))(x)

    plain = input_grad(clf.logits)
    assert float(jnp.abs(plain).max()) > 0
    # Bit for bit: the restated convolutions run the same kernels on the same numbers.
    chex.assert_trees_all_equal(input_grad(lambda x_: common.model_logits(clf, x_)), plain)


@pytest.mark.parametrize("padding,strides", [
    ("VALID", (1, 1)), ("SAME", (2, 2)), (((2, 2), (2, 2)), (1, 1)), (((1, 0), (0, 2)), (2, 1))])
def test_im2col_convolutions_equal_xla_convolutions_to_second_order(padding, strides):
    """im2col_convolutions(fn) has fn's value, input gradient and the gradient of an
    input-gradient norm with respect to the kernel (what Deep Defense differentiates),
    in float64; a dilated convolution, which im2col does not compute, is left as it is."""
    with jax.enable_x64(True):
        kx, kk = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (2, 7, 6, 3), jnp.float64)
        kernel = jax.random.normal(kk, (3, 2, 3, 4), jnp.float64)

        def conv(x, kernel, dilation=(1, 1)):
            return jnp.tanh(lax.conv_general_dilated(
                x, kernel, strides, padding, rhs_dilation=dilation,
                dimension_numbers=("NHWC", "HWIO", "NHWC")))

        def grad_norm(conv_fn, kernel):
            return jnp.sum(jax.grad(lambda x: conv_fn(x, kernel).sum())(x) ** 2)

        ours = common.im2col_convolutions(conv)
        np.testing.assert_allclose(ours(x, kernel), conv(x, kernel), rtol=1e-12)
        assert "conv_general_dilated" not in str(jax.make_jaxpr(ours)(x, kernel))
        second_order = [jax.grad(functools.partial(grad_norm, fn))(kernel) for fn in (ours, conv)]
        np.testing.assert_allclose(*second_order, rtol=1e-10)
        dilated = common.im2col_convolutions(lambda x, k: conv(x, k, (2, 1)))
        assert "conv_general_dilated" in str(jax.make_jaxpr(dilated)(x, kernel))


def test_random_search_keeps_the_best_sample_as_update_best_ranks_them():
    clf = trained_mlp()
    x, y = eval_data()
    rng = jax.random.key(5)
    x_best = run("random_search", clf, x, y, rng=rng, eps=0.2)
    # The samples, drawn as random_search draws them: key i -> (point key, model key).
    samples = [
        jnp.clip(x + common.random_in_ball(jax.random.split(k)[0], x.shape, 0.2, "linf"), 0, 1)
        for k in jax.random.split(rng, SETTINGS["random_search"]["samples"])
    ]
    fooled = jnp.stack([clf.logits(s).argmax(-1) != y for s in samples])
    loss = jnp.stack([common.cross_entropy(clf.logits(s), y) for s in samples])
    assert jnp.any(fooled.any(0) & ~fooled.all(0)) and jnp.any(~fooled.any(0))
    # The highest loss among the samples that fool, else among all.
    best = jnp.argmax(jnp.where(fooled.any(0) & ~fooled, -jnp.inf, loss), 0)
    chex.assert_trees_all_close(x_best, jnp.stack(samples)[best, jnp.arange(N)], atol=1e-6)


def test_pgd_result_carries_no_gradient_to_the_model():
    clf = linear_classifier()
    x, y = eval_data()

    def adversarial_sum(variables):
        return jnp.sum(run("pgd", Classifier(linear_apply, variables, clf.bounds, CLASSES), x, y))

    grads = jax.grad(adversarial_sum)(clf.variables)
    assert all(jnp.all(g == 0) for g in jax.tree.leaves(grads))


TRACES = []


def counting_apply(variables, x, rng=None):
    TRACES.append(1)  # runs only while tracing
    return linear_apply(variables, x)


def test_changing_eps_does_not_retrace():
    clf = Classifier(counting_apply, linear_classifier().variables, (0.0, 1.0), CLASSES)
    x, y = eval_data()
    run("pgd", clf, x, y)
    traced = len(TRACES)
    assert traced > 0
    for eps in (0.2, 0.3):
        run("pgd", clf, x, y, eps=eps, step_size=eps / 4)
    assert len(TRACES) == traced


def test_registry_builds_every_attack_from_its_name():
    assert set(attacks.ATTACKS) == set(SETTINGS)
    clf = trained_mlp()
    x, y = eval_data()
    for name in attacks.ATTACKS:
        x_adv = run(name, clf, x, y)
        chex.assert_shape(x_adv, x.shape)
        chex.assert_type(x_adv, x.dtype)
        assert accuracy(clf, x_adv, y) < accuracy(clf, x, y), name
    with pytest.raises(ValueError, match="unknown attack 'pgd2'"):
        attacks.make_attack("pgd2")


def test_bad_inputs_raise_clear_errors():
    clf = linear_classifier()
    x, y = eval_data()
    with pytest.raises(ValueError, match="norm must be one of"):
        run("pgd", clf, x, y, norm="l1")
    with pytest.raises(ValueError, match="loss must be one of"):
        run("pgd", clf, x, y, loss="hinge")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        run("pgd", clf, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        run("pgd", clf, x, y, step_size=-0.1)
    with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
        run("pgd", clf, x, y, restarts=0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        run("fgsm", clf, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="alpha <= eps"):
        run("rand_fgsm", clf, x, y, eps=0.03, alpha=0.05)
    with pytest.raises(ValueError, match="norm must be one of"):
        run("apgd_ce", clf, x, y, norm="l0")
    with pytest.raises(ValueError, match="DLR loss needs at least 3 classes"):
        run("apgd_dlr", linear_classifier(classes=2), x, y % 2)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        run("random_search", clf, x, y, samples=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        run("random_search", clf, x, y, norm="l1")
