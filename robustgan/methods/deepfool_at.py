"""deepfool_at: Deep Defense's "Adv. Train I" baseline (Yan et al. 2018, Sec. 4, after
Moosavi-Dezfooli et al. 2016, Sec. 4.3): fine-tuning on the training set augmented by a
fixed set of DeepFool adversarial examples made from the reference model.

The reference (`config.deepfool_at.source`, a finished run; in a table an earlier row)
is frozen and DeepFool deterministic, so crafting each batch's examples on the fly gives
exactly the fixed set, without storing it. Each step trains on the clean batch and its
DeepFool images together (valid images: every iterate clipped to the data range, 50
steps, overshoot 0.02), the model in inference mode as Deep Defense's fine-tuning.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from robustgan import attacks
from robustgan.checks import check_at_least
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec
from robustgan.methods.deep_defense import plain_fine_tuning

UNROLLED_STEPS = 20


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"source": "", "steps": 50, "overshoot": 0.02})


def validate(config) -> None:
    if not config.deepfool_at.source:
        raise ConfigError("config.deepfool_at.source is empty: name the reference run whose "
                          "DeepFool examples deepfool_at trains on")
    check_at_least("deepfool_at.steps", config.deepfool_at.steps, 1, "at least 1")
    check_at_least("deepfool_at.overshoot", config.deepfool_at.overshoot, 0.0, "non-negative")


def deepfool_at(config, num_classes: int, runs) -> Method:
    """The deepfool_at Method: fine-tuning on [x, DeepFool(source, x)]."""
    (source_run,) = runs["deepfool_at.source"]
    source = source_run.classifier()
    net, init, fine_tune_step = plain_fine_tuning(config, num_classes)
    a = config.deepfool_at

    def train_step(state, x, y, rng):
        # A short DeepFool is unrolled (XLA:CPU runs its convolutions fast only outside a
        # loop); a long one stops once the whole batch is fooled.
        x_adv = attacks.deepfool(source, x, y, max_iter=a.steps, overshoot=a.overshoot,
                                 clip=True, early_stop=a.steps > UNROLLED_STEPS)
        return fine_tune_step(state, jnp.concatenate([x, x_adv]), jnp.concatenate([y, y]),
                              rng)

    return Method(init=init, train_step=train_step, classifier=net.classifier)


DEEPFOOL_AT = MethodSpec("deepfool_at", build=deepfool_at, defaults=defaults,
                         validate=validate, references=("deepfool_at.source",),
                         resumable=("deepfool_at.source",))
