"""Minimal-perturbation attacks: DeepFool and C&W-L2 against closed forms on linear models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attacks import (
    CLASSES,
    DIM,
    SETTINGS,
    N,
    accuracy,
    eval_data,
    linear_apply,
    linear_classifier,
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


def boxed_binary_model(seed=0):
    """A two-class linear model, f = z_1 - z_0 = v.x + b, and inputs of class 0 pinned near
    the box's edge (0.03 from it) along the three largest |v_i|, where DeepFool moves most:
    its unclipped step leaves [0, 1]."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=DIM)
    x = rng.uniform(0.3, 0.7, size=(N, DIM))
    top = np.argsort(-np.abs(v))[:3]
    x[:, top] = np.where(v[top] > 0, 0.97, 0.03)
    b = -(x @ v).max() - 0.5
    variables = {"w": jnp.asarray(np.stack([np.zeros(DIM), v], 1), jnp.float32),
                 "b": jnp.asarray([0.0, b], jnp.float32)}
    return Classifier(linear_apply, variables, (0.0, 1.0), 2), x, v, b


def minimal_in_box(x, v, b, norm):
    """The smallest L2 / L-inf r with v.(x + r) + b = 0 and x + r in [0, 1]: by the KKT
    conditions r = clip(x + lam * d, 0, 1) - x with d = v (L2) or sign(v) (L-inf), lam
    found by bisection (v.r grows with lam)."""
    d = v if norm == "l2" else np.sign(v)
    need = -(x @ v + b)
    low, high = np.zeros(len(x)), np.full(len(x), 100.0)
    for _ in range(200):
        lam = (low + high) / 2
        enough = (np.clip(x + lam[:, None] * d, 0, 1) - x) @ v >= need
        low, high = np.where(enough, low, lam), np.where(enough, lam, high)
    return np.clip(x + high[:, None] * d, 0, 1) - x


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_clipped_deepfool_reaches_the_minimal_perturbation_inside_the_box(norm):
    clf, x, v, b = boxed_binary_model()
    y = jnp.zeros(N, jnp.int32)
    size = lambda r: np.asarray(common.per_example_norm(jnp.asarray(r), norm))[:, 0]
    unclipped = np.asarray(deepfool_r(clf, x, y, norm=norm, max_iter=50))
    assert np.all(np.any((x + unclipped > 1) | (x + unclipped < 0), axis=1))
    clipped = np.asarray(deepfool_r(clf, x, y, norm=norm, max_iter=50, clip=True))
    assert np.all((x + clipped >= -1e-6) & (x + clipped <= 1 + 1e-6))
    assert np.all(clf.logits(np.clip(x + clipped, 0, 1)).argmax(-1) == 1)
    # The iterates clip(x + s d) converge to the box-constrained minimum (KKT), and cross
    # the boundary by ~1e-4 (foolbox's step past it): no perturbation inside the box is
    # shorter, and it is longer than the unclipped one, which leaves the box.
    ratio = size(clipped) / size(minimal_in_box(x, v, b, norm))
    assert np.all(ratio >= 1 - 1e-5) and np.all(ratio <= 1 + 2e-3), (ratio.min(), ratio.max())
    assert np.all(size(clipped) >= size(unclipped))
    # early_stop: the same iterates, without the steps after every example is done.
    chex.assert_trees_all_close(
        deepfool_r(clf, x, y, norm=norm, max_iter=50, clip=True, early_stop=True), clipped,
        atol=1e-6,
    )


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


@pytest.mark.parametrize("clip", [False, True])
def test_deepfool_is_differentiable_with_respect_to_the_model_only_when_asked(clip):
    clf = linear_classifier(seed=1)
    x = random_inputs(5, margin=0.2)
    y = clf.logits(x).argmax(-1)
    minimal = nearest_boundary(clf, x, y, "l2")
    inside = jnp.all(jnp.abs(x + 1.05 * minimal - 0.5) < 0.5, axis=1)  # the box never binds
    assert inside.mean() > 0.5

    def total_perturbation(variables, differentiable):
        model = clf.replace(variables=variables)
        r = deepfool_r(model, x, y, clip=clip, differentiable=differentiable)
        return jnp.sum(jnp.where(inside, common.per_example_norm(r, "l2")[:, 0], 0.0))

    # One step reaches the nearest boundary k: ||r|| = (1 + overshoot) (|f_k| / ||w_k||
    # (+ 1e-4 with clip)), f_k = z_k - z_y = x.w_k + b_k - b_y < 0, w_k = W_k - W_y; so
    # d||r|| / db = (1 + overshoot) / ||w_k|| (e_y - e_k).
    logits, w = clf.logits(x), clf.variables["w"]
    f = logits - jnp.take_along_axis(logits, y[:, None], 1)
    dual = jnp.linalg.norm(w.T[None] - w.T[y][:, None], axis=-1)
    k = jnp.where(jax.nn.one_hot(y, CLASSES) == 1, jnp.inf, jnp.abs(f) / dual).argmin(-1)
    slope = jnp.where(inside, (1 + OVERSHOOT) / jnp.take_along_axis(dual, k[:, None], 1)[:, 0],
                      0.0)
    expected = slope @ (jax.nn.one_hot(y, CLASSES) - jax.nn.one_hot(k, CLASSES))
    grads = jax.grad(total_perturbation)(clf.variables, True)
    chex.assert_trees_all_close(grads["b"], expected, rtol=1e-4, atol=1e-4)
    grads = jax.grad(total_perturbation)(clf.variables, False)
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
    with pytest.raises(ValueError, match="differentiable=True needs early_stop=False"):
        deepfool_r(clf, x, y, early_stop=True, differentiable=True)


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


def test_targeted_cw_l2_reaches_the_target_at_nearly_the_minimal_distance():
    clf = linear_classifier(seed=1)
    x = random_inputs(5, margin=0.2)
    logits = clf.logits(x)
    target = runner_up = jnp.argsort(logits, axis=1)[:, -2]  # the runner-up class
    # Projection onto {z_t >= z_y}: r0 = (z_y - z_t) / ||W_t - W_y||^2 (W_t - W_y). Where
    # t is then the top class and x + r0 stays in the box, r0 is the minimal targeted
    # perturbation (the other constraints z_t >= z_j do not bind).
    w, y = clf.variables["w"], logits.argmax(-1)
    direction = (w[:, runner_up] - w[:, y]).T
    gap = jnp.take_along_axis(logits, y[:, None], 1) - jnp.take_along_axis(
        logits, target[:, None], 1)
    r0 = gap / jnp.sum(direction**2, axis=1, keepdims=True) * direction
    exact = (clf.logits(x + 1.001 * r0).argmax(-1) == target) & jnp.all(
        jnp.abs(x + r0 - 0.5) < 0.5, axis=1)
    assert exact.mean() > 0.6
    x_adv = run("cw_l2", clf, x, target, targeted=True)
    assert jnp.all(clf.logits(x_adv).argmax(-1) == target)
    minimal = common.per_example_norm(r0, "l2")[:, 0]
    found = common.per_example_norm(x_adv - x, "l2")[:, 0]
    ratio = jnp.where(exact, found / minimal, 1.0)
    assert jnp.min(ratio) >= 1 - 1e-4  # nothing beats the closed form
    assert jnp.max(ratio) < 1.05 and jnp.sum(ratio - 1) / exact.sum() < 0.02


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
