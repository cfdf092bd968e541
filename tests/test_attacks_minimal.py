"""Minimal-perturbation attacks: DeepFool and C&W-L2 against closed forms on linear models."""

import chex
import jax
import jax.numpy as jnp
import pytest
from test_attacks import (
    CLASSES,
    SETTINGS,
    N,
    accuracy,
    eval_data,
    linear_classifier,
    mlp_apply,
    random_inputs,
    run,
    trained_mlp,
)

from robustgan import attacks
from robustgan.attacks import common
from robustgan.classifier import Classifier

OVERSHOOT = 0.02


def nearest_boundary(classifier, x, y, norm, classes=None):
    """The exact smallest perturbation that makes a linear model leave class y, among
    `classes` (default: all others): r = |f_k| / ||w_k||_q^q |w_k|^(q-1) sign(w_k) for the
    nearest k, with f_k = z_k - z_y and w_k = W_k - W_y (q the dual norm)."""
    w, logits = classifier.variables["w"], classifier.logits(x)
    f = logits - jnp.take_along_axis(logits, y[:, None], 1)  # (n, C)
    diff = w.T[None] - w.T[y][:, None]  # (n, C, d)
    dual = jnp.linalg.norm(diff, axis=-1) if norm == "l2" else jnp.abs(diff).sum(-1)
    allowed = jax.nn.one_hot(y, CLASSES) == 0 if classes is None else classes
    k = jnp.where(allowed, jnp.abs(f) / dual, jnp.inf).argmin(-1)
    f_k, q_k = (jnp.take_along_axis(a, k[:, None], 1)[:, 0] for a in (f, dual))
    w_k = jnp.take_along_axis(diff, k[:, None, None], 1)[:, 0]
    if norm == "l2":
        return (jnp.abs(f_k) / q_k**2)[:, None] * w_k
    return (jnp.abs(f_k) / q_k)[:, None] * jnp.sign(w_k)


def deepfool_r(classifier, x, y, **overrides):
    return attacks.deepfool_perturbation(classifier, x, y, **{**SETTINGS["deepfool"], **overrides})


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_is_the_minimal_perturbation_on_a_linear_model(norm):
    clf = linear_classifier(seed=1)
    x = random_inputs(5, margin=0.2)
    y = clf.logits(x).argmax(-1)
    r = deepfool_r(clf, x, y, norm=norm)
    chex.assert_trees_all_close(r, (1 + OVERSHOOT) * nearest_boundary(clf, x, y, norm), atol=1e-5)
    assert jnp.all(clf.logits(x + r).argmax(-1) != y)


def test_deepfool_top_k_candidates_and_already_fooled_examples():
    clf = linear_classifier(seed=1)
    x = random_inputs(6, margin=0.2)
    predicted = clf.logits(x).argmax(-1)
    # candidates=1: only the runner-up class at x is considered.
    runner_up = jnp.where(jax.nn.one_hot(predicted, CLASSES) == 1, -jnp.inf, clf.logits(x))
    only = jax.nn.one_hot(runner_up.argmax(-1), CLASSES) == 1
    r = deepfool_r(clf, x, predicted, candidates=1)
    expected = (1 + OVERSHOOT) * nearest_boundary(clf, x, predicted, "l2", classes=only)
    chex.assert_trees_all_close(r, expected, atol=1e-5)
    # Examples whose label is not predicted are already fooled: r = 0.
    chex.assert_trees_all_equal(deepfool_r(clf, x, (predicted + 1) % CLASSES), jnp.zeros_like(x))


def test_targeted_deepfool_reaches_the_label_as_deep_defense_does_for_wrong_examples():
    clf = linear_classifier(seed=2)
    x = random_inputs(7, margin=0.2)
    y = jnp.arange(N) % CLASSES
    wrong = clf.logits(x).argmax(-1) != y
    assert 0 < wrong.sum() < N
    predicted = clf.logits(x + deepfool_r(clf, x, y, targeted=wrong)).argmax(-1)
    assert jnp.all(jnp.where(wrong, predicted == y, predicted != y))


def test_deepfool_fools_a_trained_mlp_inside_the_data_range():
    clf = trained_mlp()
    x, y = eval_data()
    x_adv = run("deepfool", clf, x, y)
    assert jnp.all((x_adv >= 0) & (x_adv <= 1))
    assert accuracy(clf, x_adv, y) <= 0.05


def test_deepfool_is_differentiable_with_respect_to_the_model_only_when_asked():
    clf = trained_mlp()
    x, y = eval_data()

    def mean_perturbation(variables, differentiable):
        model = Classifier(mlp_apply, variables, clf.bounds, CLASSES)
        r = deepfool_r(model, x, y, max_iter=5, differentiable=differentiable)
        return jnp.mean(common.per_example_norm(r, "l2"))  # Deep Defense's ||r||

    grads = jax.grad(mean_perturbation)(clf.variables, True)
    leaves = jax.tree.leaves(grads)
    assert all(jnp.all(jnp.isfinite(g)) for g in leaves)
    assert any(jnp.any(g != 0) for g in leaves)
    grads = jax.grad(mean_perturbation)(clf.variables, False)
    assert all(jnp.all(g == 0) for g in jax.tree.leaves(grads))


def test_deepfool_rejects_bad_candidates():
    clf = linear_classifier()
    x, y = eval_data()
    with pytest.raises(ValueError, match="candidates must be in"):
        deepfool_r(clf, x, y, candidates=CLASSES)
    with pytest.raises(ValueError, match="norm must be one of"):
        deepfool_r(clf, x, y, norm="l1")
    with pytest.raises(ValueError, match="overshoot must be >= 0"):
        deepfool_r(clf, x, y, overshoot=-0.1)


def test_cw_l2_finds_nearly_the_minimal_perturbation_on_a_linear_model():
    clf = linear_classifier(seed=1)
    x = random_inputs(5, margin=0.2)
    y = clf.logits(x).argmax(-1)
    minimal = common.per_example_norm(nearest_boundary(clf, x, y, "l2"), "l2")[:, 0]
    inside = jnp.all(jnp.abs(x + nearest_boundary(clf, x, y, "l2") - 0.5) < 0.5, axis=1)
    x_adv = run("cw_l2", clf, x, y)
    assert jnp.all(clf.logits(x_adv).argmax(-1) != y)
    found = common.per_example_norm(x_adv - x, "l2")[:, 0]
    assert jnp.all(found >= minimal * (1 - 1e-4))  # nothing beats the closed form
    ratio = jnp.where(inside, found / minimal, 1.0)  # where the box does not bind
    assert inside.mean() > 0.8 and jnp.max(ratio) < 1.05 and jnp.mean(ratio) < 1.02


def test_cw_l2_confidence_leaves_a_margin():
    clf = linear_classifier(seed=1)
    x = random_inputs(5, margin=0.2)
    y = clf.logits(x).argmax(-1)
    x_adv = run("cw_l2", clf, x, y, confidence=1.0)
    changed = jnp.any(x_adv != x, axis=1)
    assert changed.mean() > 0.9
    assert jnp.all(jnp.where(changed, common.margin(clf.logits(x_adv), y) > 1.0, True))


def test_cw_l2_defense_gan_setting():
    clf = trained_mlp()
    x, y = eval_data()
    x_adv = run(
        "cw_l2", clf, x, y, steps=100, learning_rate=10.0, initial_const=100.0, binary_steps=1
    )
    assert jnp.all((x_adv >= 0) & (x_adv <= 1))
    fooled = clf.logits(x_adv).argmax(-1) != y
    unchanged = jnp.all(x_adv == x, axis=1)
    assert jnp.all(fooled | unchanged)  # failures come back as they were
    assert accuracy(clf, x_adv, y) <= 0.1
