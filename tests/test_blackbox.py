"""Black-box threat models: transfer attacks against protocol.py's white box, and
Papernot et al.'s substitute training on a tiny synthetic task."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_measures import (
    BATCH,
    MLP,
    accuracy,
    blobs,
    eval_data,
    key,
    linear_classifier,
    trained_mlp,
)

from robustgan import attacks, models, parallel
from robustgan.classifier import Classifier
from robustgan.evaluate import blackbox, protocol

FGSM = functools.partial(attacks.fgsm, eps=0.1)
PGD = functools.partial(
    attacks.pgd, eps=0.1, step_size=0.025, steps=5, random_start=False, unroll=1
)


def uint8_eval_data():
    x, y = eval_data()
    return np.round(x * 255).astype(np.uint8), y


def test_transfer_from_a_model_to_itself_is_the_white_box_attack():
    clf = trained_mlp()
    x, y = uint8_eval_data()
    columns = {
        "fgsm": protocol.Column(FGSM),
        "pgd": protocol.Column(PGD),
        "pgd_transfer": protocol.Column(PGD, source="itself"),
    }
    reference = protocol.accuracy_under_attacks(
        clf,
        x,
        y,
        columns,
        batch_size=BATCH,
        value_range=(0.0, 1.0),
        mesh=parallel.make_mesh(1),
        rng=key(),
        sources={"itself": clf},
        progress=False,
    )
    assert reference["pgd_transfer"] == reference["pgd"]
    for name, attack in (("fgsm", FGSM), ("pgd", PGD)):
        transfer = blackbox.transfer_accuracy(
            clf, clf, x, y, attack, batch_size=BATCH, rng=key(), value_range=(0.0, 1.0)
        )
        assert transfer == reference[name]
    # Per example, against the attack run directly on the float images.
    x_float = x / np.float32(255)
    direct = np.asarray(clf.logits(FGSM(clf, x_float, y)).argmax(-1) == y)
    correct = blackbox.transfer_correct(clf, clf, x_float, y, FGSM, batch_size=BATCH, rng=key())
    np.testing.assert_array_equal(correct, direct)
    clean = blackbox.transfer_accuracy(clf, clf, x_float, y, None, batch_size=BATCH, rng=key())
    assert clean == pytest.approx(accuracy(clf, x_float, y))


def test_per_example_transfer_combines_into_a_worst_case():
    target = trained_mlp()
    surrogate = linear_classifier(seed=3)
    x, y = eval_data()
    args = dict(batch_size=BATCH, rng=key())
    transfer = blackbox.transfer_correct(target, surrogate, x, y, PGD, **args)
    white = blackbox.transfer_correct(target, target, x, y, PGD, **args)
    # Crafted on the surrogate, judged on the target (PGD without a random start ignores
    # the key, and each example is attacked on its own).
    for crafter, correct in ((surrogate, transfer), (target, white)):
        direct = np.asarray(target.logits(PGD(crafter, x, y, key())).argmax(-1) == y)
        np.testing.assert_array_equal(correct, direct)
    assert transfer.mean() > white.mean() + 0.2  # the transfer attack is the weaker one
    columns = {"pgd": protocol.Column(PGD), "pgd(s)": protocol.Column(PGD, source="s")}
    both = protocol.accuracy_under_attacks(
        target, x, y, columns, batch_size=BATCH, value_range=None, mesh=parallel.make_mesh(1),
        rng=key(), sources={"s": surrogate}, progress=False,
    )
    assert both["min"] == pytest.approx(np.mean(transfer & white))
    with pytest.raises(ValueError, match="one data range"):
        blackbox.transfer_correct(target, linear_classifier(bounds=(-1.0, 1.0)), x, y, FGSM, **args)


def test_transfer_examples_crafted_once_score_every_target_as_crafted_in_place():
    """A table crafts its transfer columns once (protocol.craft_transfer_examples) and
    scores each row on them: the same numbers as crafting inside each call."""
    surrogate, x, y = linear_classifier(seed=3), *uint8_eval_data()
    columns = {"clean": protocol.Column(), "pgd": protocol.Column(PGD),
               "pgd(s)": protocol.Column(PGD, source="s"),
               "fgsm(s)": protocol.Column(FGSM, source="s")}
    args = dict(batch_size=BATCH, value_range=(0.0, 1.0), mesh=parallel.make_mesh(1),
                rng=key(), progress=False)
    crafted = protocol.craft_transfer_examples(columns, {"s": surrogate}, x, y, **args)
    assert list(crafted) == ["pgd(s)", "fgsm(s)"]
    for trained, target in ((True, trained_mlp()), (False, linear_classifier(seed=4))):
        in_place = protocol.accuracy_under_attacks(target, x, y, columns,
                                                   sources={"s": surrogate}, **args)
        shared = protocol.accuracy_under_attacks(target, x, y, columns, crafted=crafted,
                                                 sources={"s": surrogate}, **args)
        assert shared == in_place
        # The crafted examples are what is scored: clean images there score as clean.
        clean = {name: x / np.float32(255) for name in crafted}
        unattacked = protocol.accuracy_under_attacks(target, x, y, columns, crafted=clean,
                                                     sources={"s": surrogate}, **args)
        assert unattacked["pgd(s)"] == unattacked["fgsm(s)"] == in_place["clean"]
        assert in_place["fgsm(s)"] < in_place["clean"] or not trained  # the attack transfers


def test_substitute_fgsm_attacks_the_substitutes_predicted_labels_by_default():
    oracle = trained_mlp()
    substitute = linear_classifier(seed=3)  # a poor substitute: it mispredicts many images
    x, y = eval_data()
    mispredicted = np.asarray(substitute.logits(x).argmax(-1)) != y
    assert 0.2 < mispredicted.mean() < 0.9
    args = dict(batch_size=BATCH, rng=key())
    default = blackbox.substitute_attack_correct(oracle, substitute, x, y, eps=0.2, **args)
    on_predicted, on_true = (
        blackbox.transfer_correct(oracle, substitute, x, y, functools.partial(fgsm, eps=0.2),
                                  **args)
        for fgsm in (attacks.fgsm_predicted, attacks.fgsm)
    )
    np.testing.assert_array_equal(default, on_predicted)
    assert np.any(default != on_true)  # the true labels would give other examples...
    np.testing.assert_array_equal(default[~mispredicted], on_true[~mispredicted])  # ...there
    true_labels = blackbox.substitute_attack_correct(
        oracle, substitute, x, y, eps=0.2, predicted_labels=False, **args)
    np.testing.assert_array_equal(true_labels, on_true)


def test_substitute_training_improves_agreement_with_the_oracle_across_rounds():
    oracle = trained_mlp()
    x_seed, _ = blobs(100, 8)
    x_holdout, y_holdout = blobs(1, 256)
    substitute, history = blackbox.train_substitute(
        oracle,
        x_seed,
        module=MLP(),
        x_holdout=x_holdout,
        rounds=4,
        lam=0.1,
        epochs_per_round=10,
        batch_size=16,
        rng=jax.random.key(0),
        optimizer=optax.adam(1e-2),
    )
    agreement = history["agreement"]
    assert history["train_size"] == [8, 16, 32, 64]  # doubling every round
    assert history["queries"] == [8, 16, 32, 64]  # the seed, then each new point once
    assert len(agreement) == 4 and agreement[-1] >= agreement[0] + 0.3, agreement
    assert agreement[-1] >= max(agreement) - 0.05
    assert isinstance(substitute, Classifier) and substitute.bounds == oracle.bounds
    # FGSM crafted on the substitute transfers to the oracle (Defense-GAN's attack).
    args = dict(eps=0.1, batch_size=64, rng=key())
    attacked = blackbox.substitute_attack_accuracy(oracle, substitute, x_holdout, y_holdout, **args)
    assert attacked < accuracy(oracle, x_holdout, y_holdout) - 0.2


def test_a_defense_gan_substitute_model_trains_on_uint8_images():
    # Oracle on 28x28 images: a linear model on the image's mean intensity per quadrant.
    def oracle_apply(variables, x, rng=None):
        quadrants = x.reshape(x.shape[0], 2, 14, 2, 14).mean((2, 4)).reshape(x.shape[0], 4)
        return quadrants @ variables["w"]

    oracle = Classifier(oracle_apply, {"w": jnp.eye(4) * 10}, (0.0, 1.0), 4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28, 1), dtype=np.uint8)
    true_labels = np.asarray(oracle.logits(images / np.float32(255)).argmax(-1))
    substitute, history = blackbox.train_substitute(
        oracle,
        images[:16],
        module=models.get_model("dgan_e", 4),
        x_holdout=images[16:],
        rounds=2,
        epochs_per_round=1,
        batch_size=16,
        rng=key(),
        value_range=(0.0, 1.0),
        seed_labels=true_labels[:16],
        tau=1,
    )
    assert history["train_size"] == [16, 32] and history["queries"] == [0, 16]
    logits = substitute.logits(images[:4] / np.float32(255))
    assert logits.shape == (4, 4) and bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(ValueError, match="rounds and epochs_per_round"):
        blackbox.train_substitute(
            oracle,
            images[:4],
            module=MLP(num_classes=4),
            x_holdout=images[4:8],
            rounds=0,
            rng=key(),
        )
