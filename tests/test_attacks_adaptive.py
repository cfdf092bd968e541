"""Adaptive attacks: BPDA through a defense front-end and EOT over a random classifier."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from test_attacks import CLASSES, accuracy, eval_data, linear_apply, run, trained_mlp

from robustgan import attacks
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


def test_eot_of_a_deterministic_classifier_equals_plain_pgd():
    clf = trained_mlp()
    x, y = eval_data()
    chex.assert_trees_all_equal(run("pgd", attacks.eot(clf, 2), x, y), run("pgd", clf, x, y))


def test_eot_averages_logits_over_independent_draws():
    x, y = eval_data()
    variables = {"w": jnp.ones((x.shape[1], CLASSES)), "b": jnp.zeros(CLASSES)}
    clf = Classifier(noisy_linear_apply, variables, (0.0, 1.0), CLASSES)
    rng = jax.random.key(0)
    mean_of_draws = jax.jit(lambda ks: sum(clf.logits(x, k) for k in ks) / 4)
    eot_logits = jax.jit(lambda key: attacks.eot(clf, 4).logits(x, key))
    chex.assert_trees_all_close(eot_logits(rng), mean_of_draws(jax.random.split(rng, 4)), atol=1e-5)


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
