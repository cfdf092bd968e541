"""Measures: rho (Deep Defense Eq. 7) and eps_ref against closed forms on linear models,
robustness curves, sanity checks on a normal and a gradient-masked classifier.

Also the tiny models tests/test_blackbox.py builds on: a linear model (closed forms) and an
MLP trained for a few steps on synthetic blobs.
"""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_attacks_minimal import boxed_binary_model, minimal_in_box

from robustgan import attacks, report
from robustgan.attacks import common
from robustgan.classifier import Classifier
from robustgan.evaluate import measures

N, DIM, CLASSES = 64, 12, 4
BATCH = 32
OVERSHOOT = 0.02


def key(seed=0):
    """A fresh key per use (the tests also run under jax_debug_key_reuse)."""
    return jax.random.key(seed)


def linear_apply(variables, x, rng=None):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def linear_classifier(seed=0, classes=CLASSES, bounds=(0.0, 1.0), bias=None):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(DIM, classes)), jnp.float32)
    b = jnp.asarray(0.1 * rng.normal(size=classes), jnp.float32) if bias is None else bias
    return Classifier(linear_apply, {"w": w, "b": b}, bounds, classes)


def blobs(seed, n=N):
    """Gaussian blobs in [0, 1]^DIM, one per class."""
    centers = np.random.default_rng(1000).uniform(0.3, 0.7, size=(CLASSES, DIM))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = np.clip(centers[y] + 0.12 * rng.normal(size=(n, DIM)), 0.0, 1.0)
    return x.astype(np.float32), y.astype(np.int32)


class MLP(nn.Module):
    """Follows models/' calling convention, so it can also be a substitute module."""

    num_classes: int = CLASSES

    @nn.compact
    def __call__(self, x, train=False, batch_stats=None):
        x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def mlp_apply(variables, x, rng=None):
    return MLP().apply(variables, x)


def quantized_mlp_apply(variables, x, rng=None):
    """A broken defense: a rounding front-end whose gradient is zero almost everywhere."""
    return mlp_apply(variables, jnp.round(x * 8) / 8)


@functools.cache
def trained_mlp():
    x, y = blobs(0, 512)
    optimizer = optax.adam(3e-2)

    def step(state, _):
        params, opt_state = state
        grads = jax.grad(lambda p: common.cross_entropy(mlp_apply(p, x), y).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    variables = MLP().init(jax.random.key(0), jnp.zeros((1, DIM)))
    fit = jax.jit(lambda v: jax.lax.scan(step, (v, optimizer.init(v)), None, 200)[0][0])
    return Classifier(mlp_apply, fit(variables), (0.0, 1.0), CLASSES)


@functools.cache
def eval_data():
    return blobs(1)


def accuracy(classifier, x, y):
    return float(jnp.mean(classifier.logits(x).argmax(-1) == y))


# --- rho --------------------------------------------------------------------------------


def closed_form_ratio(clf, x, norm):
    """(1 + overshoot) * distance to the nearest boundary of the predicted class over ||x||:
    min_k |z_k - z_pred| / ||w_k - w_pred||_q, q the dual norm (2 for L2, 1 for L-inf)."""
    w, logits = np.asarray(clf.variables["w"]), np.asarray(clf.logits(x))
    pred = logits.argmax(-1)
    diff = w.T[None] - w.T[pred][:, None]  # (n, C, d)
    dual = np.linalg.norm(diff, axis=-1) if norm == "l2" else np.abs(diff).sum(-1)
    gap = np.abs(logits - logits[np.arange(len(x)), pred][:, None])
    own = np.arange(CLASSES) == pred[:, None]
    distance = np.where(own, np.inf, gap / np.where(own, 1.0, dual)).min(-1)
    x_norm = np.linalg.norm(x, axis=1) if norm == "l2" else np.abs(x).max(axis=1)
    return (1 + OVERSHOOT) * distance / x_norm


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_rho_on_a_linear_model_is_the_closed_form(norm):
    clf = linear_classifier(seed=1)
    x = np.random.default_rng(2).uniform(0.2, 0.8, size=(N, DIM)).astype(np.float32)
    result = measures.rho(clf, x, None, norm, batch_size=BATCH, max_iter=5)
    expected = closed_form_ratio(clf, x, norm)
    np.testing.assert_allclose(result["per_example"], expected, rtol=1e-4)
    assert result["rho"] == pytest.approx(expected.mean(), rel=1e-4)
    assert result["fooled"] == 1.0 and result["rho_fooled"] == pytest.approx(result["rho"])
    assert result["num_examples"] == N


def test_rho_true_label_mode_and_value_range_independence():
    clf = linear_classifier(seed=1)
    x = np.random.default_rng(3).uniform(0.2, 0.8, size=(N, DIM)).astype(np.float32)
    predicted = np.asarray(clf.logits(x).argmax(-1))
    by_prediction = measures.rho(clf, x, None, batch_size=BATCH, max_iter=5)
    by_label = measures.rho(clf, x, predicted, batch_size=BATCH, max_iter=5, label="true")
    np.testing.assert_allclose(by_label["per_example"], by_prediction["per_example"])
    # The same model on [-1, 1] data: pixel-space rho is unchanged, data-space rho is not.
    w, b = clf.variables["w"], clf.variables["b"]
    shifted = Classifier(
        linear_apply, {"w": w / 2, "b": b + w.sum(0) / 2}, (-1.0, 1.0), CLASSES
    )  # z(x') = z((x' + 1) / 2)
    x_sym = 2 * x - 1
    pixels = measures.rho(shifted, x_sym, None, batch_size=BATCH, max_iter=5)
    assert pixels["rho"] == pytest.approx(by_prediction["rho"], rel=1e-4)
    data_space = measures.rho(shifted, x_sym, None, batch_size=BATCH, max_iter=5, space="data")
    assert data_space["rho"] != pytest.approx(pixels["rho"], rel=1e-2)
    with pytest.raises(ValueError, match="needs the labels"):
        measures.rho(clf, x, None, batch_size=BATCH, label="true")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_rho_with_clipped_deepfool_is_the_distance_to_a_valid_image(norm):
    clf, x, v, b = boxed_binary_model()  # the unclipped DeepFool step leaves [0, 1]
    x = x.astype(np.float32)
    clipped = measures.rho(clf, x, None, norm, batch_size=BATCH, clip=True)
    unclipped = measures.rho(clf, x, None, norm, batch_size=BATCH)
    x_norm = np.linalg.norm(x, axis=1) if norm == "l2" else np.abs(x).max(axis=1)
    r = minimal_in_box(x, v, b, norm)
    r_norm = np.linalg.norm(r, axis=1) if norm == "l2" else np.abs(r).max(axis=1)
    np.testing.assert_allclose(clipped["per_example"], r_norm / x_norm, rtol=2e-3)
    assert clipped["fooled"] == 1.0 and unclipped["fooled"] == 1.0
    assert np.all(clipped["per_example"] > unclipped["per_example"])


# --- eps_ref ----------------------------------------------------------------------------


def test_eps_ref_bisection_finds_the_closed_form_on_a_linear_binary_model():
    # Boundary through the centre of the box; inputs near it so FGS never hits the box.
    clf = linear_classifier(seed=4, classes=2, bias=jnp.zeros(2))
    w = clf.variables["w"]
    clf = clf.replace(variables={"w": w, "b": -0.5 * w.sum(0)})
    x = (0.5 + np.random.default_rng(5).uniform(-0.1, 0.1, size=(N, DIM))).astype(np.float32)
    y = np.asarray(clf.logits(x).argmax(-1))
    # FGS moves each x by eps * sign(w_other - w_y): the margin falls by eps * ||w_1 - w_0||_1,
    # so example i is misclassified from t_i = margin_i / ||w_1 - w_0||_1 on.
    logits = np.asarray(clf.logits(x))
    t = np.sort(np.abs(logits[:, 1] - logits[:, 0]) / np.abs(w[:, 1] - w[:, 0]).sum())
    expected = t[N // 2 - 1]  # the (N/2)-th threshold: from there on, half are wrong
    assert t.max() <= 0.1  # x +- eps stays inside the box near eps_ref
    tol = 1e-5
    result = measures.eps_ref(clf, x, y, batch_size=BATCH, rng=key(), tol=tol)
    assert result["clean_accuracy"] == 1.0
    assert expected - 1e-5 <= result["eps_ref"] <= expected + tol + 1e-5
    for fraction, acc in result["accuracy"].items():
        assert acc == pytest.approx(np.mean(t > fraction * result["eps_ref"]), abs=1.5 / N)
    assert result["accuracy"][1.0] <= 0.5
    # Accuracy at another model's eps_ref, as Deep Defense's table reports it.
    others = measures.accuracy_at_eps_ref(clf, x, y, 2 * expected, batch_size=BATCH, rng=key())
    assert others[0.5] == pytest.approx(result["accuracy"][1.0], abs=1.5 / N)


def _wrong_in_a_band(variables, x, rng=None):
    """Class 0 wins unless the image's mean brightness d above 0.5 is in (0.1, 0.3):
    FGS (which raises every pixel here) misclassifies from eps ~0.1 to ~0.3 only."""
    d = x.reshape(x.shape[0], -1).mean(1) - 0.5
    s = (d - 0.1) * (d - 0.3)
    return jnp.stack([s, jnp.zeros_like(s)], axis=1)


def test_eps_ref_finds_the_first_crossing_when_fgs_error_falls_again():
    """On a model whose FGS error is 100% only in a band of eps and 0 at eps_max (every
    pixel pushed to 1), eps_ref is the band's start (a bisection on [0, eps_max] alone
    would see 0 errors at eps_max and give NaN)."""
    clf = Classifier(_wrong_in_a_band, {}, (0.0, 1.0), 2)
    x = np.full((BATCH, 4, 4, 1), 0.501, np.float32)
    y = np.zeros(BATCH, np.int32)
    assert measures.accuracy_at_eps(clf, x, y, measures.fgs, 1.0, batch_size=BATCH,
                                    rng=key()) == 1.0
    result = measures.eps_ref(clf, x, y, batch_size=BATCH, rng=key(), tol=1e-4)
    assert result["eps_ref"] == pytest.approx(0.099, abs=2e-4)


def test_eps_ref_edge_cases():
    clf = trained_mlp()
    x, y = eval_data()
    never = measures.eps_ref(clf, x, y, batch_size=BATCH, rng=key(), eps_max=1e-4)
    assert math.isnan(never["eps_ref"]) and "accuracy" not in never
    wrong = measures.eps_ref(clf, x, (y + 1) % CLASSES, batch_size=BATCH, rng=key())
    assert wrong["eps_ref"] == 0.0 and wrong["evaluations"] == 1


# --- robustness curves ------------------------------------------------------------------


def test_pgd_robustness_curve_is_non_increasing_and_plots(tmp_path):
    clf = trained_mlp()
    x, y = eval_data()
    pgd = measures.attack_at_eps("pgd", steps=10, step_fraction=0.25, unroll=1)
    eps, acc = measures.robustness_curve(
        clf, x, y, pgd, [0.0, 0.05, 0.1, 0.2, 0.3], batch_size=BATCH, rng=key()
    )
    chex.assert_shape([eps, acc], [(5,), (5,)])
    assert acc[0] == pytest.approx(accuracy(clf, x, y))
    assert np.all(np.diff(acc) <= 0) and acc[-1] < acc[0] - 0.3
    fgs_curve = measures.robustness_curve(clf, x, y, measures.fgs, eps, batch_size=BATCH, rng=key())
    path = tmp_path / "curves.png"
    report.plot_curves({"pgd-10": (eps, acc), "fgs": fgs_curve}, path, title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_batches_scales_uint8_like_evaluate_and_keeps_only_real_rows():
    clf = trained_mlp()
    x, y = eval_data()
    pixels = np.round(x * 255).astype(np.uint8)
    as_float = measures.correct_at_eps(
        clf, pixels / np.float32(255), y, measures.fgs, 0.05, batch_size=24, rng=key()
    )
    as_uint8 = measures.correct_at_eps(
        clf, pixels, y, measures.fgs, 0.05, batch_size=24, rng=key(), value_range=(0.0, 1.0)
    )
    chex.assert_shape(as_uint8, (N,))  # 64 = 24 + 24 + 16 real rows of a padded batch
    np.testing.assert_array_equal(as_uint8, as_float)
    with pytest.raises(ValueError, match="must hold uint8 pixels"):
        measures.correct_at_eps(
            clf, x, y, measures.fgs, 0.05, batch_size=24, rng=key(), value_range=(0.0, 1.0)
        )


# --- sanity checks ----------------------------------------------------------------------


def test_sanity_checks_pass_a_normal_classifier_and_flag_a_gradient_masked_one():
    x, y = eval_data()
    normal = trained_mlp()
    broken = Classifier(quantized_mlp_apply, normal.variables, normal.bounds, CLASSES)
    assert accuracy(broken, x, y) > 0.8  # a usable classifier, just without gradients
    settings = dict(eps=0.2, batch_size=BATCH, pgd_steps=(10, 20), unbounded_steps=40, unroll=1)

    good = measures.sanity_checks(normal, x, y, rng=key(1), **settings)
    assert measures.failed(good) == [], good
    assert good["unbounded_attack"]["accuracy"] == 0.0
    assert good["gradients"]["zero_fraction"] == 0.0

    bad = measures.sanity_checks(
        broken, x, y, rng=key(1), **settings, white_box_accuracy=0.9, transfer_accuracy=0.4
    )
    assert set(measures.failed(bad)) == {
        "unbounded_attack",
        "more_steps",
        "gradients",
        "white_box_vs_transfer",
    }, bad
    assert bad["gradients"]["zero_fraction"] == 1.0
    assert bad["unbounded_attack"]["accuracy"] == pytest.approx(accuracy(broken, x, y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_steps_check_flags_zero_gradients_that_random_search_beats(seed):
    x, y = eval_data()
    normal = trained_mlp()
    broken = Classifier(quantized_mlp_apply, normal.variables, normal.bounds, CLASSES)
    settings = dict(eps=0.2, batch_size=BATCH, rng=key(seed), steps=(10, 20), unroll=1)
    good = measures.more_steps_check(normal, x, y, **settings)
    assert good["passed"], good
    assert good["accuracy_few"] <= 0.05 and good["accuracy_random_search"] >= 0.3
    # PGD stays at its random start (one random point); the best of 10 random points in
    # the ball is far stronger, and PGD with more steps is no stronger: masked gradients.
    bad = measures.more_steps_check(broken, x, y, **settings)
    assert not bad["passed"], bad
    assert bad["accuracy_few"] > bad["accuracy_random_search"] + 0.2
    assert bad["random_samples"] == 10 and bad["steps"] == (10, 20)


def test_unbounded_attack_check_is_not_stopped_by_a_saturated_softmax():
    x, _ = eval_data()
    linear = linear_classifier(seed=1)
    confident = linear.replace(variables=jax.tree.map(lambda v: 1e3 * v, linear.variables))
    y = np.asarray(confident.logits(x).argmax(-1))
    # Logit margins above 100: the cross-entropy's input gradient is exactly 0 in float32,
    # so PGD on it cannot move...
    _, grad, _ = jax.jit(common.loss_and_input_grad, static_argnums=1)(
        confident, common.cross_entropy, x, y, None)
    assert np.all(np.asarray(grad) == 0)
    ce_pgd = attacks.pgd(confident, x, y, key(), eps=1.0, step_size=0.1, steps=40,
                         random_start=False, unroll=1)
    np.testing.assert_array_equal(ce_pgd, x)
    # ... while the margin loss's gradient does not saturate: the unbounded attack succeeds.
    check = measures.unbounded_attack_check(confident, x, y, batch_size=BATCH, rng=key(),
                                            steps=40, unroll=1)
    assert check["passed"] and check["accuracy"] == 0.0, check


def test_attack_at_eps_refuses_attacks_without_an_eps():
    for name in ("cw_l2", "deepfool"):
        with pytest.raises(ValueError, match=f"attack '{name}' takes no eps"):
            measures.attack_at_eps(name)
    random = measures.attack_at_eps("random_search", samples=4)
    assert random(0.1).keywords == {"eps": 0.1, "samples": 4}


def test_white_box_vs_transfer_and_more_steps_tolerances():
    check = measures.white_box_vs_transfer_check
    assert check(0.30, 0.31)["passed"] and not check(0.32, 0.31)["passed"]
    assert check(0.32, 0.31, num_examples=100)["passed"]  # within sampling noise
    assert not check(0.6, 0.31, num_examples=100)["passed"]
    with pytest.raises(ValueError, match="attack must be one of"):
        measures.attack_at_eps("pgd2")


TRACES = []


def counting_linear_apply(variables, x, rng=None):
    TRACES.append(1)  # runs only while tracing
    return linear_apply(variables, x)


def test_new_eps_values_and_equal_attack_specs_do_not_recompile():
    clf = Classifier(counting_linear_apply, linear_classifier().variables, (0.0, 1.0), CLASSES)
    x, y = eval_data()
    pgd = lambda: measures.attack_at_eps("pgd", steps=2, step_fraction=0.25, unroll=1)
    measures.robustness_curve(clf, x, y, pgd(), [0.1], batch_size=BATCH, rng=key())
    traced = len(TRACES)
    measures.robustness_curve(clf, x, y, pgd(), [0.0, 0.2, 0.3], batch_size=BATCH, rng=key())
    assert len(TRACES) == traced > 0
