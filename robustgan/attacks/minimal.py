"""Minimal-perturbation attacks: no eps-ball; they look for the smallest perturbation that
fools the classifier. DeepFool (Moosavi-Dezfooli et al. 2016) steps to the nearest
linearized decision boundary, as a fixed-length masked `lax.scan` so Deep Defense (Yan et
al. 2018) can differentiate through it; C&W-L2 (Carlini & Wagner 2017, "Towards
evaluating the robustness of neural networks") optimizes a penalized objective.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import optax
from jax import lax

from robustgan.attacks import common
from robustgan.classifier import Classifier

_TINY = 1e-12  # keeps the step finite (and its gradient) where a gradient difference is 0
# With clipped iterates, each step goes this far (pixel units) past the linearized
# boundary, as foolbox's DeepFool does (its distances + 1e-4): where the box absorbs part
# of a step, the iterates would otherwise only approach the boundary, never cross it.
_FOOLBOX_BEYOND = 1e-4


def _dual_norm(w: jax.Array, norm: str) -> jax.Array:
    """||w||_q over the last axis, q the dual of the attack norm (L2 -> 2, L-inf -> 1)."""
    return jnp.sqrt(jnp.sum(w**2, -1)) if norm == "l2" else jnp.sum(jnp.abs(w), -1)


def _step_to_boundary(f: jax.Array, w: jax.Array, norm: str) -> jax.Array:
    """The smallest step onto the linearized boundary f + w.r = 0 (DeepFool Sec. 3.1 and 3.3
    for l_p; Deep Defense Eq. 2): |f| / ||w||_2^2 * w for L2, |f| / ||w||_1 * sign(w) for
    L-inf."""
    if norm == "l2":
        return (jnp.abs(f) / (jnp.sum(w**2, -1) + _TINY))[:, None] * w
    return (jnp.abs(f) / (jnp.sum(jnp.abs(w), -1) + _TINY))[:, None] * jnp.sign(w)


def _unit_step(w: jax.Array, norm: str) -> jax.Array:
    """The step of norm 1 along which w.r grows fastest: w / ||w||_2, or sign(w) for L-inf."""
    if norm == "l2":
        return w / (jnp.sqrt(jnp.sum(w**2, -1, keepdims=True)) + _TINY)
    return jnp.sign(w)


def _perturbation(
    classifier, x, y, rng, norm, max_iter, overshoot, candidates, targeted, clip, early_stop,
    unroll, remat, differentiable,
):
    """DeepFool's Algorithm 2, each example frozen once done: the final perturbation
    (1 + overshoot) * sum_i r_i, or with clip the clipped iterate minus x.

    differentiable: reverse mode will differentiate r. The candidates' input gradients
    then only choose the nearest boundary (under stop_gradient), and the chosen one is
    computed again as one vector-Jacobian product: the same r and the same derivative, with
    the second-order pass through one gradient per example instead of `candidates`."""
    n, num_classes = x.shape[0], classifier.num_classes
    targeted = jnp.broadcast_to(jnp.asarray(targeted, bool), (n,))
    beyond = _FOOLBOX_BEYOND * common.data_scale(classifier)
    # The while loop differentiates convolutions fast on CPU (`common.model_logits`); the
    # scan keeps the plain apply, so its results stay as they were, bit for bit.
    logits_of = common.model_logits if early_stop else Classifier.logits

    # Candidate classes k: the `candidates` most likely others at x (all, by default), or
    # for a targeted example only its target (first column; the rest are masked off).
    logits = classifier.logits(x, common.step_key(rng, max_iter))
    others = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, logits)
    top = lax.top_k(lax.stop_gradient(others), candidates)[1]
    cand = jnp.where(targeted[:, None], y[:, None], top)
    valid = ~targeted[:, None] | (jnp.arange(candidates) == 0)

    def iterate(r_total):
        """x_i = x + (1 + overshoot) r_total, clipped to the data range with clip."""
        x_i = x + (1 + overshoot) * r_total
        return common.clip_to_bounds(classifier, x_i) if clip else x_i

    def step(r_total, i):
        """r_total plus the step from the current iterate, and which examples were done."""
        logits_fn = lambda z: logits_of(classifier, z, common.step_key(rng, i))
        logits, vjp = jax.vjp(logits_fn, iterate(r_total))
        predicted = logits.argmax(-1)
        done = jnp.where(targeted, predicted == y, predicted != y)
        # Leave y (untargeted), or move from the current class to the target.
        source = jnp.where(targeted, predicted, y)
        f = jnp.take_along_axis(logits, cand, 1) - jnp.take_along_axis(logits, source[:, None], 1)
        cotangents = (
            jax.nn.one_hot(cand, num_classes) - jax.nn.one_hot(source, num_classes)[:, None]
        )
        w = jax.vmap(vjp, in_axes=1, out_axes=1)(cotangents)[0].reshape(n, candidates, -1)
        if differentiable:  # only the chosen row carries a gradient: compute it once more
            w = lax.stop_gradient(w)
        distance = jnp.abs(f) / (_dual_norm(w, norm) + _TINY)
        nearest = jnp.argmin(jnp.where(valid, lax.stop_gradient(distance), jnp.inf), axis=1)
        f_l = jnp.take_along_axis(f, nearest[:, None], 1)[:, 0]
        if differentiable:
            w_l = vjp(jnp.take_along_axis(cotangents, nearest[:, None, None], 1)[:, 0])[0]
            w_l = w_l.reshape(n, -1)
        else:
            w_l = jnp.take_along_axis(w, nearest[:, None, None], 1)[:, 0]
        r = _step_to_boundary(f_l, w_l, norm)
        if clip:  # past the boundary even where the box absorbs the overshoot (foolbox)
            r = r + beyond * _unit_step(w_l, norm)
        r = r.reshape(x.shape)
        return r_total + common.select(done, jnp.zeros_like(r), r), done

    if early_stop:

        def body(state):
            i, r_total, _ = state
            r_total, done = step(r_total, i)
            return i + 1, r_total, jnp.all(done)

        state = (jnp.int32(0), jnp.zeros_like(x), jnp.bool_(False))
        _, r_total, _ = lax.while_loop(lambda s: (s[0] < max_iter) & ~s[2], body, state)
    else:  # a fixed-length scan: reverse mode cannot go through a while loop
        scan_step = lambda r_total, i: (step(r_total, i)[0], None)
        if remat:  # reverse mode recomputes each step instead of storing its activations
            scan_step = jax.checkpoint(scan_step)
        r_total, _ = lax.scan(scan_step, jnp.zeros_like(x), jnp.arange(max_iter), unroll=unroll)
    return iterate(r_total) - x if clip else (1 + overshoot) * r_total


def _check_settings(arguments) -> None:
    classifier, candidates = arguments["classifier"], arguments["candidates"]
    if candidates is not None and not 1 <= candidates < classifier.num_classes:
        raise ValueError(
            f"candidates must be in [1, num_classes - 1] = [1, {classifier.num_classes - 1}] "
            f"or None (all classes), got {candidates!r}"
        )
    if arguments["early_stop"] and arguments["differentiable"]:
        raise ValueError(
            "deepfool_perturbation: early_stop=True runs a while loop, which reverse mode "
            "cannot differentiate; differentiable=True needs early_stop=False"
        )


@common.jit_attack(
    "norm", "max_iter", "candidates", "clip", "early_stop", "differentiable", "unroll",
    "remat", validate=_check_settings,
)
def deepfool_perturbation(
    classifier: Classifier,
    x,
    y,
    rng=None,
    *,
    norm: str = "l2",
    max_iter: int = 50,
    overshoot=0.02,
    candidates: int | None = None,
    targeted=False,
    clip: bool = False,
    early_stop: bool = False,
    differentiable: bool = False,
    unroll: int | None = None,
    remat: bool = False,
):
    """DeepFool's perturbation r = (1 + overshoot) * sum_i r_i (Algorithm 2; Sec. 3.3 for L-inf).

    Each iteration linearizes the classifier at the iterate x_i = x + (1 + overshoot) *
    sum_j<i r_j and steps onto the nearest linearized boundary between y and a candidate
    class k (l = argmin_k |f_k| / ||w_k||_q, with f_k, w_k the logit difference to y and
    its input gradient), for `max_iter` iterations, freezing each example once it is
    fooled (done-masks in a `lax.scan`). y: the label to leave (examples not predicted as
    y are already fooled: r = 0). candidates: how many of the most likely other classes
    at x to consider (None: all, as the paper and Deep Defense's code). targeted (bool,
    or one per example): move instead from the current class until y is predicted, as
    Deep Defense's code does for misclassified examples.

    clip=False (the paper's): the iterates and r ignore the data range. clip=True: each
    iterate is clipped to the data range and r = x_last - x, so x + r is a valid image
    (foolbox's DeepFool; each step then also goes 1e-4 pixel units past the linearized
    boundary, as there). early_stop=True stops as soon as every example is done (a while
    loop, for a random classifier under one draw), much faster when most examples need
    few steps; the same r for a deterministic classifier up to float round-off.
    differentiable=True leaves r differentiable with respect to the classifier's
    variables (Deep Defense's regularizer); otherwise it is under `stop_gradient`.
    remat=True puts each step of the scan under `jax.checkpoint`: reverse mode then
    recomputes a step's forward pass instead of storing it (less memory, more time).
    unroll: the scan's unrolling (None: `common.default_unroll`).
    """
    common.check_choice("norm", norm, common.NORMS)
    candidates = classifier.num_classes - 1 if candidates is None else candidates
    unroll = common.default_unroll(max_iter) if unroll is None else unroll
    r = _perturbation(
        classifier, x, y, rng, norm, max_iter, overshoot, candidates, targeted, clip,
        early_stop, unroll, remat, differentiable,
    )
    return r if differentiable else lax.stop_gradient(r)


def deepfool(classifier: Classifier, x, y, rng=None, **kwargs):
    """DeepFool's adversarial example: x + `deepfool_perturbation(...)` clipped to the data
    range (the keyword arguments are `deepfool_perturbation`'s)."""
    r = deepfool_perturbation(classifier, x, y, rng, **kwargs)
    x_adv = common.clip_to_bounds(classifier, x + r)
    return x_adv if kwargs.get("differentiable", False) else lax.stop_gradient(x_adv)


# Its settings, as `inspect.signature` (attacks.settings) reports them, are deepfool_perturbation's.
deepfool.__signature__ = inspect.signature(deepfool_perturbation)


_GIVE_UP = 1e9  # an upper bound on c at or above this means no success yet (as C&W's code)


@common.jit_attack("steps", "binary_steps", "targeted", "unroll")
def cw_l2(
    classifier: Classifier,
    x,
    y,
    rng=None,
    *,
    steps: int = 1000,
    binary_steps: int = 9,
    learning_rate=0.01,
    initial_const=1e-3,
    confidence=0.0,
    targeted: bool = False,
    unroll: int | None = None,
):
    """C&W-L2 (Sec. VI.A): minimize ||x' - x||_2^2 + c * f(x') over w, with
    x' = lo + (hi - lo) * (tanh(w) + 1) / 2 (the change of variables of Sec. V) and
    f(x') = max(Z_y - max_{j != y} Z_j + kappa, 0) (objective f_6; targeted:
    max(max_{j != t} Z_j - Z_t + kappa, 0)), by Adam for `steps` iterations.

    A binary search over c (`binary_steps` rounds from `initial_const`; x10 until the first
    success) keeps, per example, the smallest-L2 x' that succeeds by margin kappa
    (`confidence`); examples never fooled come back unchanged. Distances are in data
    units. Defense-GAN's setting: steps=100, learning_rate=10, initial_const=100,
    binary_steps=1.
    """
    low, high = classifier.bounds
    scale = high - low
    sign = -1.0 if targeted else 1.0
    unroll = common.default_unroll(steps) if unroll is None else unroll
    optimizer = optax.adam(learning_rate)
    n = x.shape[0]

    def to_image(w):
        return low + scale * (jnp.tanh(w) + 1) / 2

    w0 = jnp.arctanh(jnp.clip((x - low) / scale * 2 - 1, -1 + 1e-6, 1 - 1e-6))

    def hinge(logits, labels):  # f_6; its advantage sign * margin > kappa: fooled
        return jnp.maximum(confidence - sign * common.margin(logits, labels), 0.0)

    def objective(w, const, step_rng):
        x_adv = to_image(w)
        l2 = jnp.sum((x_adv - x).reshape(n, -1) ** 2, axis=1)
        # f averaged over draws under EOT; success judged on one draw (its logits).
        f, logits = common.attack_objective(classifier, hinge, x_adv, y, step_rng)
        success = sign * common.margin(logits, y) > confidence
        return jnp.sum(l2 + const * f), (x_adv, l2, success)

    def search_round(carry, search_step):
        const, lower, upper, best_l2, best_x = carry

        def iteration(state, i):
            w, opt_state, succeeded, best_l2, best_x = state
            step_rng = common.step_key(rng, search_step * steps + i)
            (_, (x_adv, l2, success)), grad = jax.value_and_grad(objective, has_aux=True)(
                w, const, step_rng
            )
            improved = success & (l2 < best_l2)
            updates, opt_state = optimizer.update(grad, opt_state)
            return (
                optax.apply_updates(w, updates),
                opt_state,
                succeeded | success,
                jnp.where(improved, l2, best_l2),
                common.select(improved, x_adv, best_x),
            ), None

        init = (w0, optimizer.init(w0), jnp.zeros(n, bool), best_l2, best_x)
        (_, _, succeeded, best_l2, best_x), _ = lax.scan(
            iteration, init, jnp.arange(steps), unroll=unroll
        )
        upper = jnp.where(succeeded, jnp.minimum(upper, const), upper)
        lower = jnp.where(succeeded, lower, jnp.maximum(lower, const))
        const = jnp.where(upper < _GIVE_UP, (lower + upper) / 2, const * 10)
        return (const, lower, upper, best_l2, best_x), None

    init = (
        jnp.full(n, initial_const, jnp.float32),
        jnp.zeros(n),
        jnp.full(n, 1e10),
        jnp.full(n, jnp.inf),
        x,
    )
    (_, _, _, _, best_x), _ = lax.scan(search_round, init, jnp.arange(binary_steps))
    return lax.stop_gradient(best_x)
