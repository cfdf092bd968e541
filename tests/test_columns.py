"""Evaluation columns by name (robustgan/evaluate/columns.py) and the per-example Min."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attacks import CLASSES, N, linear_classifier, random_inputs
from test_attacks_adaptive import quantize

from robustgan import attacks
from robustgan import config as configlib
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.evaluate import columns, protocol


def eval_config(**overrides):
    e = configlib.base_config().eval
    for key, value in overrides.items():
        e[key] = value
    return e


def settings(fn):
    """The keyword settings a spec bound (through wrappers)."""
    while isinstance(fn, columns.Wrapped):
        fn = fn.attack
    return fn.keywords


def test_names_take_the_evaluation_config_s_settings():
    e = eval_config(eps=0.3, pgd_steps=10, pgd_step_size=0.075, pgd_restarts=2)
    fns = columns.white_box(e, ("fgsm", "pgd", "pgd_margin", "apgd_ce", "cw_l2", "deepfool"))
    assert list(fns) == ["fgsm", "pgd", "pgd_margin", "apgd_ce", "cw_l2", "deepfool"]
    assert settings(fns["fgsm"]) == {"eps": 0.3}
    assert settings(fns["pgd"]) == dict(eps=0.3, step_size=0.075, steps=10, restarts=2,
                                        random_start=True)
    assert settings(fns["pgd_margin"]) == {**settings(fns["pgd"]), "loss": "margin"}
    assert settings(fns["apgd_ce"]) == {"eps": 0.3, "loss": "ce"}
    assert settings(fns["cw_l2"]) == settings(fns["deepfool"]) == {}


def test_settings_labels_and_wrappers():
    e = eval_config(eps=0.3, pgd_step_size=0.075)
    cw = "cw_l2(steps=100, learning_rate=10, initial_const=100, binary_steps=1)"
    fns = columns.white_box(e, (
        "pgd40=pgd(steps=40)", "pgd(eps=0.1)", "unbounded=pgd(eps=1.0, steps=100, step_size=0.01)",
        cw, "bpda(pgd)", "eot(pgd, 10)", "eot(bpda(fgsm), samples=3)"))
    assert list(fns) == ["pgd40", "pgd(eps=0.1)", "unbounded", cw, "bpda(pgd)", "eot(pgd, 10)",
                         "eot(bpda(fgsm), samples=3)"]
    assert settings(fns[cw]) == dict(steps=100, learning_rate=10, initial_const=100,
                                     binary_steps=1)
    assert settings(fns["pgd40"])["steps"] == 40
    assert settings(fns["pgd(eps=0.1)"])["step_size"] == pytest.approx(0.025)  # eps / 4 kept
    assert settings(fns["unbounded"])["step_size"] == 0.01
    assert fns["bpda(pgd)"].wrap is columns.bpda_column
    assert (fns["eot(pgd, 10)"].wrap, fns["eot(pgd, 10)"].args) == (attacks.eot, (10,))
    nested = fns["eot(bpda(fgsm), samples=3)"]
    assert nested.args == (3,) and nested.attack.wrap is columns.bpda_column


@pytest.mark.parametrize("spec,match", [
    ("pgdd", "unknown attack 'pgdd'"),
    ("pgd(stepz=3)", r"pgd has no setting\(s\) \['stepz'\]"),
    ("pgd(steps=n)", "settings must be literal values"),
    ("pgd(10)", "takes settings by keyword only"),
    ("eot(pgd)", r"eot\(<attack>, <number of draws>\)"),
    ("eot(pgd, 0)", r"eot\(<attack>, <number of draws>\)"),
    ("bpda(pgd, 2)", "bpda takes only the attack"),
    ("bpda", r"wraps an attack"),
    ("pgd(", "is not of the form"),
    ("random_search", r"needs the setting\(s\) \['samples'\]"),
])
def test_bad_specs_are_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        columns.white_box(eval_config(), (spec,))


def test_labels_must_differ():
    with pytest.raises(ConfigError, match="label 'pgd' is taken"):
        columns.white_box(eval_config(), ("pgd", "pgd=pgd(steps=3)"))
    with pytest.raises(ConfigError, match="label 'min' is taken"):
        columns.white_box(eval_config(), ("min=fgsm",))


def test_every_named_attack_builds_and_runs():
    clf = linear_classifier()
    x, y = random_inputs(0, margin=0.1), jnp.asarray(np.arange(N) % CLASSES)
    e = eval_config(eps=0.1, pgd_steps=2, pgd_step_size=0.025)
    short = {"cw_l2": "(steps=2, binary_steps=1)", "deepfool": "(max_iter=2)",
             "apgd_ce": "(steps=2)", "apgd_dlr": "(steps=2)", "random_search": "(samples=2)"}
    gradient_attacks = [n for n in columns.names() if n not in attacks.GENERATOR_ATTACKS]
    for label, fn in columns.white_box(e, [n + short.get(n, "") for n in gradient_attacks]
                                       ).items():
        assert fn(clf, x, y, jax.random.key(0)).shape == x.shape, label


def run_columns(classifier, x, y, cols):
    return protocol.accuracy_under_attacks(
        classifier, x, y, cols, batch_size=32, value_range=None, mesh=None,
        rng=jax.random.key(0), progress=False)


def test_named_columns_equal_the_attacks_they_name():
    clf = linear_classifier()
    x, y = random_inputs(0, margin=0.1), np.asarray(clf.logits(random_inputs(0, margin=0.1))
                                                   .argmax(-1))
    e = eval_config(eps=0.05, pgd_steps=3, pgd_step_size=0.0125)
    named = run_columns(clf, x, y, protocol.white_box_columns(e, ("fgsm", "pgd")))
    direct = run_columns(clf, x, y, {
        "clean": protocol.Column(),
        "fgsm": protocol.Column(functools.partial(attacks.fgsm, eps=0.05)),
        "pgd": protocol.Column(functools.partial(attacks.pgd, eps=0.05, step_size=0.0125,
                                                 steps=3, restarts=1, random_start=True))})
    assert named == direct and named["pgd"] < named["clean"]


def test_bpda_column_attacks_through_the_front_end_and_scores_the_defended_model():
    clf = linear_classifier()
    defended = attacks.with_front_end(quantize, {"levels": 4.0}, clf)
    x = random_inputs(1, margin=0.1)
    y = np.asarray(defended.logits(x).argmax(-1))
    e = eval_config(eps=0.2, pgd_steps=10, pgd_step_size=0.05)
    result = run_columns(defended, x, y, protocol.white_box_columns(
        e, ("plain=pgd(random_start=False)", "through=bpda(pgd(random_start=False))")))
    assert result["clean"] == 1.0
    assert result["plain"] == 1.0  # the quantizer's zero gradient stops plain PGD
    assert result["through"] < 0.5
    # An undefended row of the same table: bpda(pgd) is pgd, nothing to approximate.
    undefended = run_columns(clf, x, y, protocol.white_box_columns(
        e, ("plain=pgd(random_start=False)", "through=bpda(pgd(random_start=False))")))
    assert undefended["through"] == undefended["plain"] < 1.0


def flip_if(feature: int):
    """An attack that negates the examples whose `feature` exceeds 0.5 (they become
    misclassified) and leaves the others: so each column fools a known set."""
    def attack(classifier, x, y, rng=None):
        return jnp.where(x[:, feature:feature + 1] > 0.5, -x, x)
    return attack


def test_min_is_the_per_example_worst_case_below_every_column():
    sign = Classifier(lambda v, x, rng=None: jnp.stack([-x.sum(1), x.sum(1)], -1), {},
                      (-1.0, 1.0), 2)
    x = np.random.default_rng(0).uniform(0.1, 1.0, (200, 2)).astype(np.float32)
    y = np.ones(200, np.int32)
    result = run_columns(sign, x, y, {"clean": protocol.Column(),
                                      "a": protocol.Column(flip_if(0)),
                                      "b": protocol.Column(flip_if(1))})
    survives_a, survives_b = x[:, 0] <= 0.5, x[:, 1] <= 0.5
    assert result["clean"] == 1.0
    assert result["a"] == pytest.approx(survives_a.mean())
    assert result["b"] == pytest.approx(survives_b.mean())
    assert result["min"] == pytest.approx((survives_a & survives_b).mean())
    assert result["min"] < min(result["a"], result["b"]) - 0.2
