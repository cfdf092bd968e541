"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): PGD with momentum and a step size that
halves at checkpoints when progress stalls, on the CE or the DLR loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from robustgan.attacks import common
from robustgan.classifier import Classifier


def checkpoints(steps: int) -> list[int]:
    """Iteration counts w_j = ceil(p_j * steps) at which the step size is reviewed (Sec. 3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(pj * steps, 6)) for pj in p[1:]} - {0})


def _schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: whether a checkpoint ends after it, and the length of its interval."""
    is_check = np.zeros(steps, bool)
    interval = np.ones(steps, np.float32)
    previous = 0
    for w in checkpoints(steps):
        is_check[w - 1] = True
        interval[previous:w] = w - previous
        previous = w
    return is_check, interval


@common.jit_attack("steps", "norm", "loss", "restarts", "unroll")
def apgd(
    classifier: Classifier,
    x,
    y,
    rng,
    *,
    eps,
    steps: int = 100,
    norm: str = "linf",
    loss: str = "ce",
    restarts: int = 1,
    rho=0.75,
    momentum=0.75,
    unroll: int | None = None,
):
    """APGD (Croce & Hein 2020, Algorithm 1) in the L-inf (or L2) eps-ball, untargeted.

    From a random start, step size eta = 2 eps; each iteration
      z = P_S(x_k + eta * steepest(grad)),
      x_{k+1} = P_S(x_k + momentum (z - x_k) + (1 - momentum)(x_k - x_{k-1}))
    (no momentum on the first step). At each checkpoint w_j, eta halves and the iterate
    restarts from the best point x_max if (1) the loss rose in fewer than rho * (w_j - w_{j-1})
    of the interval's steps, or (2) eta was not halved at w_{j-1} and the best loss has not
    improved since. loss: 'ce' (APGD-CE), 'dlr' (APGD-DLR) or 'margin'. Returns, per
    example, an iterate that fools the classifier if one did, else the highest-loss one;
    with restarts > 1 the best over restarts. eps in [0, 1] pixel units (traced).
    """
    common.check_choice("norm", norm, common.NORMS)
    loss_fn = common.attack_loss(loss)
    eps_data = eps * common.data_scale(classifier)
    unroll = common.default_unroll(steps) if unroll is None else unroll
    is_check, interval = _schedule(steps)

    def evaluate(x_adv, model_rng):
        value, grad, logits = common.loss_and_input_grad(classifier, loss_fn, x_adv, y, model_rng)
        return value, grad, common.fooled(logits, y, False)

    def run(run_rng) -> common.Best:
        start_rng, model_rng = jax.random.split(run_rng)
        x0 = common.clip_to_bounds(
            classifier, x + common.random_in_ball(start_rng, x.shape, eps_data, norm)
        )
        value, grad, fooled = evaluate(x0, common.step_key(model_rng, 0))
        n = x.shape[0]
        state = dict(
            x=x0,
            x_prev=x0,
            grad=grad,
            value=value,
            x_max=x0,
            grad_max=grad,
            f_max=value,
            eta=jnp.full(n, 2.0) * eps_data,
            increases=jnp.zeros(n),
            f_max_last=value,
            halved_last=jnp.zeros(n, bool),
            best=common.update_best(common.no_best(x), x0, fooled, value),
        )

        def step(s, schedule):
            i, check, length = schedule
            a = jnp.where(i == 0, 1.0, momentum)
            eta = common.per_example(s["eta"], x)
            z = common.project_to_threat(
                classifier, s["x"] + eta * common.steepest_step(s["grad"], norm), x, eps_data, norm
            )
            x_new = s["x"] + a * (z - s["x"]) + (1 - a) * (s["x"] - s["x_prev"])
            x_new = common.project_to_threat(classifier, x_new, x, eps_data, norm)
            value, grad, fooled = evaluate(x_new, common.step_key(model_rng, i + 1))

            increases = s["increases"] + (value > s["value"])
            improved = value > s["f_max"]
            x_max = common.select(improved, x_new, s["x_max"])
            grad_max = common.select(improved, grad, s["grad_max"])
            f_max = jnp.maximum(value, s["f_max"])

            condition1 = increases < rho * length
            condition2 = ~s["halved_last"] & (f_max <= s["f_max_last"])
            halve = check & (condition1 | condition2)
            return dict(
                x=common.select(halve, x_max, x_new),
                x_prev=s["x"],
                grad=common.select(halve, grad_max, grad),
                value=jnp.where(halve, f_max, value),
                x_max=x_max,
                grad_max=grad_max,
                f_max=f_max,
                eta=jnp.where(halve, s["eta"] / 2, s["eta"]),
                increases=jnp.where(check, 0.0, increases),
                f_max_last=jnp.where(check, f_max, s["f_max_last"]),
                halved_last=jnp.where(check, halve, s["halved_last"]),
                best=common.update_best(s["best"], x_new, fooled, value),
            ), None

        schedule = (np.arange(steps), is_check, interval)
        state, _ = lax.scan(step, state, schedule, unroll=unroll)
        return state["best"]

    return lax.stop_gradient(common.best_of_restarts(run, rng, restarts, x))
