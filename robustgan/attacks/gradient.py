"""Gradient attacks bounded in a norm ball: FGSM (Goodfellow et al.) and its variants
(predicted label, least-likely class, RAND+FGSM) and PGD (Madry et al.).

Each is a pure, jitted function `attack(classifier, x, y, rng, *, eps, ...) -> x_adv`
with eps in [0, 1] pixel units. The result is returned under `stop_gradient`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from robustgan.attacks import common
from robustgan.classifier import Classifier


def _sign_step(classifier, x, labels, rng, eps, loss_fn, sign):
    """x + eps * sign(grad_x (sign * loss_fn)), clipped to the data range; eps in pixel units."""
    _, grad, _ = common.loss_and_input_grad(classifier, loss_fn, x, labels, rng, sign)
    step = eps * common.data_scale(classifier) * jnp.sign(grad)
    return lax.stop_gradient(common.clip_to_bounds(classifier, x + step))


@common.jit_attack("loss", "targeted")
def fgsm(classifier: Classifier, x, y, rng=None, *, eps, loss="ce", targeted=False):
    """Fast gradient sign method: x + eps * sign(grad_x loss), clipped to the data range
    (Wang & Yu Eq. 10).

    targeted=True steps down the loss of label y instead (y is then the target).
    """
    sign = -1.0 if targeted else 1.0
    return _sign_step(classifier, x, y, rng, eps, common.attack_loss(loss), sign)


@common.jit_attack("loss")
def fgsm_predicted(classifier: Classifier, x, y, rng=None, *, eps, loss="ce"):
    """FGSM on the predicted label argmax D(x) instead of the true one, so the true label
    cannot leak into the example (Wang & Yu Sec. 4.4, after Kurakin et al.).

    y is ignored; it is there so every attack has one signature.
    """
    loss_fn = common.attack_loss(loss)
    on_prediction = lambda logits, _: loss_fn(logits, logits.argmax(-1))
    return _sign_step(classifier, x, y, rng, eps, on_prediction, 1.0)


@common.jit_attack()
def ll_fgs(classifier: Classifier, x, y, rng=None, *, eps):
    """Least-likely-class FGS (Wang & Yu Eq. 12, after Tramèr et al.):
    x - eps * sign(grad_x CE(D(x), y_LL)) with y_LL = argmin D(x), clipped.

    y is ignored; it is there so every attack has one signature.
    """
    on_least_likely = lambda logits, _: common.cross_entropy(logits, logits.argmin(-1))
    return _sign_step(classifier, x, y, rng, eps, on_least_likely, -1.0)


def _check_alpha(arguments) -> None:
    alpha, eps = arguments["alpha"], arguments["eps"]
    if not isinstance(alpha, jax.core.Tracer) and not isinstance(eps, jax.core.Tracer):
        if np.any(np.asarray(alpha) > np.asarray(eps)):
            raise ValueError(f"rand_fgsm needs alpha <= eps, got alpha={alpha}, eps={eps}")


@common.jit_attack("loss", "targeted", validate=_check_alpha)
def rand_fgsm(classifier: Classifier, x, y, rng, *, eps, alpha=0.05, loss="ce", targeted=False):
    """RAND+FGSM (Tramèr et al. 2018; Defense-GAN Eqs. 2-3): a random sign step
    x' = x + alpha * sign(N(0, I)), then one FGSM step of size eps - alpha from x'.

    alpha (pixel units, default Defense-GAN's 0.05) must not exceed eps; x' and the
    result are clipped to the data range, so the result stays in the eps-ball.
    """
    noise_rng, model_rng = jax.random.split(rng)
    noise = jnp.sign(jax.random.normal(noise_rng, x.shape, x.dtype))
    x_start = common.clip_to_bounds(classifier, x + alpha * common.data_scale(classifier) * noise)
    sign = -1.0 if targeted else 1.0
    return _sign_step(
        classifier, x_start, y, model_rng, eps - alpha, common.attack_loss(loss), sign
    )


@common.jit_attack(
    "steps", "norm", "random_start", "restarts", "loss", "targeted", "keep_best", "unroll"
)
def pgd(
    classifier: Classifier,
    x,
    y,
    rng,
    *,
    eps,
    step_size,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    targeted: bool = False,
    keep_best: bool = False,
    unroll: int | None = None,
):
    """Projected gradient descent (Madry et al. 2018; Wang & Yu Eq. 11) in the L-inf or L2 ball.

    Takes `steps` steepest-ascent steps of `step_size` on the loss, projecting onto the
    eps-ball around x and the data range after each. keep_best=True returns each
    example's best iterate (one that fools, else the highest loss; as the L2L code
    evaluates) instead of the last. With restarts > 1, each example keeps the restart
    that fools the classifier, else the one with the highest loss.
    eps and step_size are in [0, 1] pixel units (traced: changing them does not
    recompile). unroll: scan unrolling (None: `common.default_unroll`).
    """
    common.check_choice("norm", norm, common.NORMS)
    loss_fn = common.attack_loss(loss)
    sign = -1.0 if targeted else 1.0
    scale = common.data_scale(classifier)
    eps_data, step_data = eps * scale, step_size * scale
    unroll = common.default_unroll(steps) if unroll is None else unroll

    def one_run(run_rng):
        """The last iterate, the best one seen before it, and the model's key."""
        start_rng, model_rng = jax.random.split(run_rng)
        delta = jnp.zeros_like(x)
        if random_start:
            delta = common.random_in_ball(start_rng, x.shape, eps_data, norm)
        x0 = common.clip_to_bounds(classifier, x + delta)

        def step(carry, i):
            x_adv, best = carry
            value, grad, logits = common.loss_and_input_grad(
                classifier, loss_fn, x_adv, y, common.step_key(model_rng, i), sign
            )
            if keep_best:
                best = common.update_best(best, x_adv, common.fooled(logits, y, targeted), value)
            x_next = x_adv + step_data * common.steepest_step(grad, norm)
            return (common.project_to_threat(classifier, x_next, x, eps_data, norm), best), None

        init = (x0, common.no_best(x))
        (x_adv, best), _ = lax.scan(step, init, jnp.arange(steps), unroll=unroll)
        return x_adv, best, model_rng

    def scored_run(run_rng) -> common.Best:
        x_adv, best, model_rng = one_run(run_rng)
        value, logits = common.attack_objective(
            classifier, loss_fn, x_adv, y, common.step_key(model_rng, steps)
        )
        return common.update_best(best, x_adv, common.fooled(logits, y, targeted), sign * value)

    if restarts == 1 and not keep_best:
        return lax.stop_gradient(one_run(rng)[0])
    return lax.stop_gradient(common.best_of_restarts(scored_run, rng, restarts, x))
