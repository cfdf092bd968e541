"""The advnet minimax game of Wang & Yu (ICLR 2019): the objective F(theta, phi) (Eq. 4),
the classifier's gradient-regularized descent direction (Eqs. 8-9) and the generator's
gradient ascent (Sec. 3.2).

F is defined here only: methods/advnet.py plays the game, attacks/generator.py plays it
against a fixed classifier.

BatchNorm: both players run in training mode inside F, as the authors' code does. Every
forward pass normalizes with its own batch's statistics (D sees the clean and the
adversarial batch in two passes), and F returns the updated running averages as aux.
The averages never enter F's value, so F and its derivatives are those of a pure function
of (theta, phi) for a fixed minibatch and key; the regularizer's extra evaluations (the
jvp, or F at phi + h v) discard the averages they produce.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

GRADREGS = ("none", "exact", "finite_difference", "authors_code")


@dataclasses.dataclass(frozen=True)
class TrainMode:
    """A Linen module as a player: (params, batch_stats, *inputs, rng=) -> (output,
    batch_stats), in training mode (batch statistics, dropout on). The key feeds the
    'noise' (G2's z) and 'dropout' streams; the same key gives the same output."""

    module: nn.Module

    def __call__(self, params, batch_stats, *inputs, rng):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        noise_rng, dropout_rng = jax.random.split(rng)
        out, updates = self.module.apply(
            variables, *inputs, train=True, mutable=["batch_stats"],
            rngs={"noise": noise_rng, "dropout": dropout_rng},
        )
        return out, updates.get("batch_stats", batch_stats)


@dataclasses.dataclass(frozen=True)
class Game:
    """The players and constants of Eq. 4.

    discriminator: (theta, d_stats, x, rng=) -> (logits, d_stats).
    generator: (phi, g_stats, x, y, rng=) -> (direction in [-1, 1] shaped like x, g_stats).
    eps: the perturbation size in data units; bounds: the data range, which adversarial
      images are clipped to iff `clip` (the authors' code did not clip).
    adv_weight: lambda of Eq. 4.
    """

    discriminator: Callable
    generator: Callable
    eps: float
    bounds: tuple[float, float]
    adv_weight: float = 1.0
    clip: bool = True


class Aux(NamedTuple):
    """What F computes besides its value: updated BatchNorm averages and metrics."""

    d_stats: Any
    g_stats: Any
    metrics: dict[str, jax.Array]


def perturb(x: jax.Array, direction: jax.Array, eps, bounds=None) -> jax.Array:
    """x + eps * G(.) (Eq. 4's adversarial input), clipped to `bounds` when given."""
    x_adv = x + eps * direction
    return x_adv if bounds is None else jnp.clip(x_adv, *bounds)


def objective(game: Game, theta, phi, stats, x, y, rng) -> tuple[jax.Array, Aux]:
    """F(theta, phi) of Eq. 4 over a minibatch, as means rather than sums:
    mean CE(D(x), y) + lambda * mean CE(D(x + eps G(x)), y). stats = (d_stats, g_stats)."""
    d_stats, g_stats = stats
    g_rng, clean_rng, adv_rng = jax.random.split(rng, 3)
    direction, g_stats = game.generator(phi, g_stats, x, y, rng=g_rng)
    x_adv = perturb(x, direction, game.eps, game.bounds if game.clip else None)
    clean_logits, d_stats = game.discriminator(theta, d_stats, x, rng=clean_rng)
    adv_logits, d_stats = game.discriminator(theta, d_stats, x_adv, rng=adv_rng)
    clean = optax.softmax_cross_entropy_with_integer_labels(clean_logits, y).mean()
    adv = optax.softmax_cross_entropy_with_integer_labels(adv_logits, y).mean()
    value = clean + game.adv_weight * adv
    metrics = {
        "loss": value,
        "clean_loss": clean,
        "adv_loss": adv,
        "accuracy": (clean_logits.argmax(-1) == y).mean(),
        "adv_accuracy": (adv_logits.argmax(-1) == y).mean(),
    }
    return value, Aux(d_stats, g_stats, metrics)


def d_gradient(game: Game, theta, phi, stats, x, y, rng, *, gradreg: str, gamma: float,
               fd_step: float):
    """D's descent direction (Sec. 3.1): grad_theta F + gamma * H_theta_phi v, v = grad_phi F,
    the gradient of Eq. 8's F + gamma/2 ||grad_phi F||^2, with H v as `regularizer` gives
    it for `gradreg` (none: plain grad_theta F). Returns (gradient, aux), aux from F at
    (theta, phi).
    """
    grad, term, aux = regularizer(game, theta, phi, stats, x, y, rng, gradreg=gradreg,
                                  fd_step=fd_step)
    if term is None:
        return grad, aux
    return jax.tree.map(lambda g, t: g + gamma * t, grad, term), aux


def regularizer(game: Game, theta, phi, stats, x, y, rng, *, gradreg: str, fd_step: float):
    """(grad_theta F, H_theta_phi v or its stand-in, aux) at (theta, phi), v = grad_phi F.
    `gradreg` picks how H v is had:

      none: not at all (the term is None);
      exact: forward-over-reverse, the jvp of phi -> grad_theta F(theta, phi) along v
        (no Hessian is formed). `jax.linearize` of phi -> (grad_theta F, grad_phi F)
        gives grad_theta F and v from one backward pass and the jvp at v after it (the
        unused H_phi_phi v is dead code to XLA); over 2 sharded CPU devices a separate
        pass for v followed by `jax.jvp` took 1.78x the finite difference's time, this
        1.41x (1.04-1.42x per D step, by players and device count; benchmarks/RESULTS.md);
      finite_difference: Eq. 9, [grad_theta F(theta, phi + h v) - grad_theta F(theta, phi)] / h
        with h = fd_step (the paper: eta_G / 10);
      authors_code: what the authors' TF code adds (CODE_NOTES): the same difference with
        the opposite sign, ~ -H v, of the unweighted adversarial loss (lambda = 1 in both
        v and the difference, whatever game.adv_weight); their h was D's learning rate /
        10 (methods/advnet.fd_step passes it).
    """
    f = functools.partial(objective, game, stats=stats, x=x, y=y, rng=rng)
    grad_theta = jax.grad(f, argnums=0, has_aux=True)
    if gradreg == "none":
        grad, aux = grad_theta(theta, phi)
        return grad, None, aux
    if gradreg == "exact":
        both = functools.partial(jax.grad(f, argnums=(0, 1), has_aux=True), theta)
        (grad, v), along, aux = jax.linearize(both, phi, has_aux=True)
        term, _ = along(v)
    elif gradreg in ("finite_difference", "authors_code"):
        (grad, v), aux = jax.grad(f, argnums=(0, 1), has_aux=True)(theta, phi)
        base, sign = grad, 1.0
        if gradreg == "authors_code":
            sign = -1.0
            if game.adv_weight != 1.0:
                unit = dataclasses.replace(game, adv_weight=1.0)
                f = functools.partial(objective, unit, stats=stats, x=x, y=y, rng=rng)
                grad_theta = jax.grad(f, argnums=0, has_aux=True)
                (base, v), _ = jax.grad(f, argnums=(0, 1), has_aux=True)(theta, phi)
        shifted, _ = grad_theta(theta, jax.tree.map(lambda p, d: p + fd_step * d, phi, v))
        term = jax.tree.map(lambda a, b: sign * (a - b) / fd_step, shifted, base)
    else:
        raise ValueError(f"gradreg must be one of {GRADREGS}, got {gradreg!r}")
    return grad, term, aux


def ascend_generator(game: Game, tx: optax.GradientTransformation, theta, phi, opt_state,
                     stats, x, y, rng, *, steps: int, unroll: int = 1):
    """Sec. 3.2: `steps` gradient-ascent steps on F in phi against a fixed theta, all on
    this minibatch and key, phi <- phi + eta_G grad_phi F (tx minimizes -F). G's running
    BatchNorm averages advance; D's stay as they are.

    Returns (phi, opt_state, g_stats, adversarial losses before each step).
    """
    d_stats, g_stats = stats

    def step(carry, _):
        phi, opt_state, g_stats = carry
        grad, aux = jax.grad(
            lambda p: objective(game, theta, p, (d_stats, g_stats), x, y, rng), has_aux=True
        )(phi)
        updates, opt_state = tx.update(jax.tree.map(jnp.negative, grad), opt_state, phi)
        return (optax.apply_updates(phi, updates), opt_state, aux.g_stats), aux.metrics[
            "adv_loss"]

    carry = (phi, opt_state, g_stats)
    if steps == 1:
        # jax lowers a one-step scan to a while loop even when unrolled, and XLA:CPU runs
        # convolutions inside a loop ~10x slower (G1 k=8, batch 64: 1.5 s vs 0.14 s).
        (phi, opt_state, g_stats), adv_loss = step(carry, None)
        return phi, opt_state, g_stats, adv_loss[None]
    (phi, opt_state, g_stats), adv_losses = lax.scan(
        step, carry, None, length=steps, unroll=unroll)
    return phi, opt_state, g_stats, adv_losses
