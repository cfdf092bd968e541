"""Random search: the gradient-free baseline a gradient attack must beat.

"Random sampling finds adversarial examples" that a gradient attack with the same budget
misses is one of Athalye et al.'s (2018) signs of obfuscated gradients; Carlini et al.
(2019, "On evaluating adversarial robustness") ask for the comparison. `measures.
more_steps_check` runs it beside PGD.
"""

from __future__ import annotations

import jax
from jax import lax

from robustgan.attacks import common
from robustgan.classifier import Classifier


@common.jit_attack("samples", "norm", "loss", "unroll")
def random_search(
    classifier: Classifier,
    x,
    y,
    rng,
    *,
    eps,
    samples: int,
    norm: str = "linf",
    loss: str = "ce",
    unroll: int | None = None,
):
    """The best of `samples` points drawn uniformly in the eps-ball around x (L-inf or L2),
    clipped to the data range: per example the highest-loss one among those that fool
    the classifier, else among all (`common.update_best`, as PGD's keep_best ranks
    iterates).

    One model evaluation per sample, so `samples` equals the forward passes of PGD with
    as many steps. eps in [0, 1] pixel units (traced). unroll: scan unrolling (None:
    `common.default_unroll`).
    """
    common.check_choice("norm", norm, common.NORMS)
    loss_fn = common.attack_loss(loss)
    eps_data = eps * common.data_scale(classifier)
    unroll = common.default_unroll(samples) if unroll is None else unroll

    def draw(best, key):
        point_rng, model_rng = jax.random.split(key)
        delta = common.random_in_ball(point_rng, x.shape, eps_data, norm)
        x_sample = common.clip_to_bounds(classifier, x + delta)
        value, logits = common.attack_objective(classifier, loss_fn, x_sample, y, model_rng)
        return common.update_best(best, x_sample, common.fooled(logits, y, False), value), None

    best, _ = lax.scan(draw, common.no_best(x), jax.random.split(rng, samples), unroll=unroll)
    return lax.stop_gradient(best.x)
