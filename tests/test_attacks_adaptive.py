"""Adaptive attacks: BPDA through a defense front-end and EOT over a random classifier."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from test_attacks import CLASSES, accuracy, eval_data, linear_apply, mlp_apply, run, trained_mlp

from robustgan import attacks
from robustgan.attacks import common
from robustgan.classifier import Classifier


def identity_front_end(variables, x, rng=None):
    return x


def quantize(variables, x, rng=None):
    """A non-differentiable front-end (its gradient is 0 almost everywhere)."""
    return jnp.round(x * variables["levels"]) / variables["levels"]


def double(variables, x, rng=None):
    return 2 * x


def noisy_linear_apply(variables, x, rng):
    """A random classifier: Gaussian noise on the input, then a linear model."""
    return linear_apply(variables, x + 0.1 * jax.random.normal(rng, x.shape))


def test_with_front_end_applies_the_front_end_then_the_model():
    clf = trained_mlp()
    x, _ = eval_data()
    defended = attacks.with_front_end(quantize, {"levels": 4.0}, clf)
    chex.assert_trees_all_equal(defended.logits(x), clf.logits(jnp.round(x * 4) / 4))


def test_bpda_with_an_identity_front_end_equals_plain_pgd():
    clf = trained_mlp()
    x, y = eval_data()
    defended = attacks.bpda(attacks.with_front_end(identity_front_end, {}, clf))
    chex.assert_trees_all_equal(run("pgd", defended, x, y), run("pgd", clf, x, y))


def test_bpda_attacks_through_a_gradient_masking_front_end():
    clf = trained_mlp()
    x, y = eval_data()
    defended = attacks.with_front_end(quantize, {"levels": 4.0}, clf)
    # The front-end's zero gradient stops plain PGD where it starts...
    chex.assert_trees_all_equal(run("pgd", defended, x, y, random_start=False), x)
    # ... while BPDA's identity backward pass gets through.
    x_adv = run("pgd", attacks.bpda(defended), x, y, random_start=False)
    assert accuracy(defended, x_adv, y) < accuracy(defended, x, y) - 0.3


def test_bpda_backward_pass_is_the_surrogates():
    clf = trained_mlp()
    x, _ = eval_data()
    defended = attacks.with_front_end(quantize, {"levels": 4.0}, clf)

    def input_grad(classifier):
        return jax.grad(lambda x_: classifier.logits(x_)[:, 0].sum())(x)

    # d logits / dx = J_model(front_end(x)) * d surrogate / dx
    identity_grad = input_grad(attacks.bpda(defended))
    chex.assert_trees_all_close(input_grad(attacks.bpda(defended, double)), 2 * identity_grad)
    chex.assert_trees_all_close(
        identity_grad, jax.grad(lambda q: clf.logits(q)[:, 0].sum())(jnp.round(x * 4) / 4)
    )


def contrast_gain(rng, x):
    """One random contrast gain in [0.8, 1.2] per example."""
    return jax.random.uniform(rng, (x.shape[0], 1), minval=0.8, maxval=1.2)


def random_contrast(variables, x, rng):
    """A random, differentiable transformation: contrast around 0.5 by a random gain."""
    return 0.5 + contrast_gain(rng, x) * (x - 0.5)


def random_contrast_quantized(variables, x, rng):
    """A random, gradient-masking front-end: random contrast, then rounding."""
    return jnp.round(random_contrast(variables, x, rng) * 4) / 4


def test_bpda_through_a_random_front_end_uses_the_forward_passs_draw():
    clf = trained_mlp()
    x, y = eval_data()
    defended = attacks.with_front_end(random_contrast_quantized, {}, clf)
    rng = jax.random.key(0)
    front_rng, _ = jax.random.split(rng)  # FrontEndApply's half of the key

    def input_grad(classifier):
        return jax.grad(lambda x_: classifier.logits(x_, rng)[:, 0].sum())(x)

    # d logits / dx = J_model(front_end(x, draw)) * d surrogate(x, draw) / dx, one draw.
    model_grad = jax.grad(lambda q: clf.logits(q)[:, 0].sum())(
        random_contrast_quantized({}, x, front_rng)
    )
    found = input_grad(attacks.bpda(defended, random_contrast))
    chex.assert_trees_all_close(found, model_grad * contrast_gain(front_rng, x), rtol=1e-6)
    other_draw = model_grad * contrast_gain(jax.random.key(1), x)
    assert float(jnp.abs(found - other_draw).max()) > 0.1 * float(jnp.abs(found).max())
    # Plain PGD cannot move through the rounding; BPDA's PGD can.
    def accuracy_on(x_adv):
        return float(jnp.mean(defended.logits(x_adv, jax.random.key(2)).argmax(-1) == y))

    assert accuracy_on(x) > 0.8
    chex.assert_trees_all_equal(run("pgd", defended, x, y, random_start=False), x)
    x_adv = run("pgd", attacks.bpda(defended, random_contrast), x, y, random_start=False)
    assert accuracy_on(x_adv) < accuracy_on(x) - 0.3


@pytest.mark.parametrize(
    "name, settings",
    [("pgd", {}), ("pgd", {"restarts": 2, "keep_best": True}), ("apgd_ce", {}), ("fgsm", {}),
     ("cw_l2", {"steps": 20, "binary_steps": 2})],
)
def test_eot_of_a_deterministic_classifier_equals_the_plain_attack(name, settings):
    clf = trained_mlp()
    x, y = eval_data()
    chex.assert_trees_all_equal(
        run(name, attacks.eot(clf, 2), x, y, **settings), run(name, clf, x, y, **settings)
    )


def noisy_mlp_apply(variables, x, rng):
    """A random classifier: Gaussian noise on the input, then the (nonlinear) MLP."""
    return mlp_apply(variables, x + 0.2 * jax.random.normal(rng, x.shape))


def test_eot_averages_the_loss_over_draws_and_judges_on_one_draw():
    clf = Classifier(noisy_mlp_apply, trained_mlp().variables, (0.0, 1.0), CLASSES)
    x, y = eval_data()
    rng = jax.random.key(0)
    keys = jax.random.split(rng, 4)

    def loss_of(logits_fn):
        return lambda x_: common.cross_entropy(logits_fn(x_), y).sum()

    # Athalye et al.'s EOT: the gradient of the expected loss, the mean of per-draw gradients.
    per_draw = [jax.grad(loss_of(lambda x_, k=k: clf.logits(x_, k)))(x) for k in keys]
    expected = sum(per_draw) / 4
    loss, grad, logits = jax.jit(common.loss_and_input_grad, static_argnums=1)(
        attacks.eot(clf, 4), common.cross_entropy, x, y, rng
    )
    scale = float(jnp.abs(expected).max())
    assert float(jnp.abs(grad - expected).max()) <= 2e-6 * scale  # float32 round-off
    per_draw_loss = jnp.stack([common.cross_entropy(clf.logits(x, k), y) for k in keys])
    chex.assert_trees_all_close(loss, per_draw_loss.mean(0), rtol=1e-5)
    # Not the gradient of the loss of the averaged logits (what averaging logits gives).
    averaged = jax.grad(loss_of(lambda x_: sum(clf.logits(x_, k) for k in keys) / 4))(x)
    assert float(jnp.abs(averaged - expected).max()) > 0.1 * scale
    # Success is judged on one draw of the randomized model, not on averaged logits.
    chex.assert_trees_all_close(logits, clf.logits(x, keys[0]), rtol=1e-5, atol=1e-5)
    eot_logits = attacks.eot(clf, 4).logits(x, rng)
    chex.assert_trees_all_equal(eot_logits, clf.logits(x, rng))


def test_adaptive_wrappers_reject_bad_inputs():
    clf = trained_mlp()
    x, _ = eval_data()
    with pytest.raises(ValueError, match="bpda needs a classifier built with"):
        attacks.bpda(clf)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        attacks.eot(clf, 0)
    with pytest.raises(ValueError, match="needs an rng"):
        attacks.eot(clf, 2).logits(x)


def test_attacks_on_a_random_classifier_draw_fresh_keys():
    x, y = eval_data()
    variables = {"w": jnp.ones((x.shape[1], CLASSES)), "b": jnp.zeros(CLASSES)}
    clf = Classifier(noisy_linear_apply, variables, (0.0, 1.0), CLASSES)
    attack_eot = functools.partial(run, "pgd", restarts=2, keep_best=True)
    with jax.debug_key_reuse(True):  # tracing raises if a key is consumed twice
        for attack in [functools.partial(run, name) for name in attacks.ATTACKS] + [attack_eot]:
            chex.assert_shape(jax.eval_shape(attack, clf, x, y), x.shape)
        chex.assert_shape(jax.eval_shape(attack_eot, attacks.eot(clf, 2), x, y), x.shape)
