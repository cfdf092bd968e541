"""Generator attacks (Wang & Yu Sec. 4.5): a generator trained against a fixed classifier."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustgan import data, evaluate, parallel
from robustgan.attacks.generator import GeneratorAttack, train_generator_attack
from robustgan.classifier import Classifier, ModelApply
from robustgan.models.generators import get_generator

SIZE, EPS = 8, 0.1
VALUE_RANGE = (-1.0, 1.0)


class MeanSign(nn.Module):
    """Class 1 iff the image's mean pixel is positive: a fixed, parameter-free model."""

    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train=False, batch_stats=None):
        s = 10.0 * x.mean(axis=(1, 2, 3))
        return jnp.stack([-s, s], axis=-1)


def toy_data(n, seed):
    """uint8 images with their MeanSign labels (so clean accuracy is 1)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.uint8)
    y = (data.scale(x, VALUE_RANGE).mean(axis=(1, 2, 3)) > 0).astype(np.int32)
    return x, y


def test_trained_generator_lowers_a_fixed_models_accuracy_within_eps():
    classifier = Classifier(ModelApply(MeanSign()), {}, VALUE_RANGE, 2)
    x, y = toy_data(256, seed=0)
    attack = train_generator_attack(
        classifier, get_generator("g0", 2, width=4), jnp.asarray(data.scale(x, VALUE_RANGE)),
        jnp.asarray(y), jax.random.key(0), eps=EPS, num_steps=40, batch_size=32,
        optimizer=optax.adam(1e-2),
    )
    assert isinstance(attack, GeneratorAttack)
    x_test, y_test = toy_data(128, seed=1)
    x_scaled = jnp.asarray(data.scale(x_test, VALUE_RANGE))
    x_adv = attack(classifier, x_scaled, jnp.asarray(y_test), jax.random.key(1))
    assert float(jnp.abs(x_adv - x_scaled).max()) <= EPS * 2 + 1e-6  # eps times range width
    assert float(x_adv.min()) >= -1.0 and float(x_adv.max()) <= 1.0
    # Usable as an evaluation column like any other attack.
    results = evaluate.accuracy_under_attacks(
        classifier, x_test, y_test, {"clean": evaluate.Column(),
                                     "generator": evaluate.Column(attack)},
        batch_size=64, value_range=VALUE_RANGE, mesh=parallel.make_mesh(),
        rng=jax.random.key(2), progress=False,
    )
    assert results["clean"] == 1.0
    assert results["generator"] < 0.75, results  # about 0.5 from a class-blind push
