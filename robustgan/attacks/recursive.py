"""The recursive, stochastic perturbation generator of Jang et al. (ICCV 2019, Eq. 5):

  delta^(t+1) = clip(delta^(t) + eps_step g(x, y, z, delta^(t), grad_t), -eps, eps),
  x_adv^(t+1) = clip(x + delta^(t+1), data range),  delta^(0) = 0, t < T,

as one `lax.scan` (`trajectory`), and the diversity loss of Eq. 7. The pieces the l2l_da
training method (methods/l2l_da.py) and the L2L-DA attack (attacks/l2l_da_attack.py)
share; g is models/unet.py's U-Net.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from robustgan.attacks.common import cross_entropy, loss_and_input_grad
from robustgan.classifier import Classifier

_TINY = 1e-8  # in Eq. 7's denominator, as the authors' code


@dataclasses.dataclass(frozen=True)
class GeneratorApply:
    """(params, batch_stats, x, y, z, delta, grad) -> (direction, batch_stats) of a U-Net
    generator: in training mode (batch statistics, and the new running averages), or with
    train=False in inference mode (the running averages, returned unchanged)."""

    module: nn.Module
    train: bool = True

    def __call__(self, params, batch_stats, *inputs):
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {
            "params": params}
        if not self.train:
            return self.module.apply(variables, *inputs, train=False), batch_stats
        out, updates = self.module.apply(variables, *inputs, train=True,
                                         mutable=["batch_stats"])
        return out, updates["batch_stats"]


@dataclasses.dataclass(frozen=True)
class Recursion:
    """The generator and the constants of Eq. 5; eps and eps_step in data units."""

    generator: Callable
    eps: float
    eps_step: float
    steps: int
    remat: bool = False
    unroll: int = 1


def trajectory(rec: Recursion, phi, g_stats, classifier: Classifier, x, y, z):
    """Eq. 5 from delta^(0) = 0: (x_adv^(t) for t = 1..T stacked (T, N, ...), per-example
    CE(classifier(x_adv^(t)), y) (T, N), the generator's BatchNorm averages after its T
    calls). grad_t is the input gradient of CE at stop_gradient(x_adv^(t)); delta^(t)
    carries phi's gradient from step to step. Each x_adv^(t) gets one forward and one
    backward pass of the classifier (`cross_entropy_and_input_grad`): its CE and grad_t."""

    def step(carry, _):
        delta, grad, stats = carry
        direction, stats = rec.generator(phi, stats, x, y, z, delta, grad)
        delta = jnp.clip(delta + rec.eps_step * direction, -rec.eps, rec.eps)
        x_adv = jnp.clip(x + delta, *classifier.bounds)
        loss, grad = cross_entropy_and_input_grad(classifier, x_adv, y)
        return (delta, grad, stats), (x_adv, loss)

    body = jax.checkpoint(step) if rec.remat else step
    carry = (jnp.zeros_like(x), cross_entropy_and_input_grad(classifier, x, y)[1], g_stats)
    if rec.steps == 1:
        # A one-step scan lowers to a while loop, which XLA:CPU runs convolutions in
        # several times slower (game.ascend_generator).
        (_, _, stats), (x_adv, loss) = body(carry, None)
        return x_adv[None], loss[None], stats
    (_, _, stats), (x_adv, loss) = lax.scan(body, carry, None, length=rec.steps,
                                            unroll=rec.unroll)
    return x_adv, loss, stats


def cross_entropy_and_input_grad(classifier: Classifier, x_adv, y):
    """(per-example CE at x_adv, differentiable in x_adv; its input gradient, a stopped
    value), from one forward and one backward pass of the classifier: the CE's derivative
    in x_adv is that gradient, so its VJP scales it by the cotangent instead of running
    the classifier backward again (the recursion's next step needs the gradient anyway).
    Eval-mode classifiers only: each example's CE depends on its own input alone."""
    loss, grad, _ = loss_and_input_grad(classifier, cross_entropy, lax.stop_gradient(x_adv),
                                        y, None)
    return _with_input_grad(x_adv, loss, grad), grad


@jax.custom_vjp
def _with_input_grad(x, value, grad):
    """value, whose derivative in x is grad (per example; value and grad are stopped)."""
    del x, grad
    return value


def _with_input_grad_fwd(x, value, grad):
    return value, grad


def _with_input_grad_bwd(grad, cotangent):
    return cotangent.reshape(cotangent.shape + (1,) * (grad.ndim - 1)) * grad, None, None


_with_input_grad.defvjp(_with_input_grad_fwd, _with_input_grad_bwd)


def diversity_loss(x_adv_1: jax.Array, x_adv_2: jax.Array, z1: jax.Array,
                   z2: jax.Array) -> jax.Array:
    """Eq. 7, averaged over examples: (1/T) sum_t ||x_adv^(t)(z1) - x_adv^(t)(z2)||_1
    / ||z1 - z2||_1, the L1 norms over each example's pixels and z entries.
    x_adv_k: the trajectories (T, N, ...) under z_k (N, z_dim)."""
    steps, n = x_adv_1.shape[:2]
    moved = jnp.abs(x_adv_1 - x_adv_2).reshape(steps, n, -1).sum(-1).mean(0)
    apart = jnp.abs(z1 - z2).reshape(n, -1).sum(-1)
    return (moved / (apart + _TINY)).mean()
