"""One network's training state and the steps methods build from it.

Every method keeps each of its networks (a classifier, a perturbation generator, a GAN's
generator or critic) as a `NetState`: parameters, BatchNorm averages, optimizer state and
an update count. `apply_gradients` is the one optimizer update they share;
`SupervisedNet` is a classifier trained on cross-entropy (the baselines, advnet's D,
black-box substitutes); `when` makes an update conditional without slowing XLA:CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from robustgan.attacks.common import cross_entropy
from robustgan.classifier import Classifier, ModelApply


@struct.dataclass
class NetState:
    """step counts this network's optimizer updates."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def variables(params, batch_stats) -> dict:
    """Linen variables: params, plus batch_stats when the module has BatchNorm."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def init_state(variables_: dict, tx: optax.GradientTransformation) -> NetState:
    """A fresh NetState from a module's initial variables."""
    params = variables_["params"]
    return NetState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables_.get("batch_stats", {}), opt_state=tx.init(params))


def apply_gradients(net: NetState, tx: optax.GradientTransformation, grads, *,
                    batch_stats=None) -> NetState:
    """One optimizer update of `net` along `grads` (descent), with new BatchNorm averages
    when given."""
    updates, opt_state = tx.update(grads, net.opt_state, net.params)
    return NetState(step=net.step + 1, params=optax.apply_updates(net.params, updates),
                    batch_stats=net.batch_stats if batch_stats is None else batch_stats,
                    opt_state=opt_state)


@dataclasses.dataclass(frozen=True, eq=False)
class SupervisedNet:
    """A classifier module with its optimizer: init, the cross-entropy step, and the
    Classifier that attacks and evaluation see.

    eval_batch_norm: how the Classifier normalizes ('eval': running averages;
    'batch_stats': the attacked batch's statistics, as Wang & Yu's code evaluated).
    Compared by identity (eq=False), as jit sees its bound methods.
    """

    module: nn.Module
    tx: optax.GradientTransformation
    num_classes: int
    bounds: tuple[float, float]
    eval_batch_norm: str = "eval"

    def init(self, rng, sample_x) -> NetState:
        return init_state(self.module.init({"params": rng, "dropout": rng}, sample_x,
                                           train=False), self.tx)

    def classifier(self, state: NetState, batch_norm: str | None = None) -> Classifier:
        return Classifier(
            apply_fn=ModelApply(self.module, batch_norm or self.eval_batch_norm),
            variables=variables(state.params, state.batch_stats),
            bounds=self.bounds,
            num_classes=self.num_classes,
        )

    def sgd_step(self, state: NetState, x, y, rng):
        """One optimizer step on cross-entropy over (x, y), updating BatchNorm averages."""

        def loss_fn(params):
            logits, updates = self.module.apply(
                variables(params, state.batch_stats), x, train=True,
                mutable=["batch_stats"], rngs={"dropout": rng},
            )
            return cross_entropy(logits, y).mean(), (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        new_state = apply_gradients(state, self.tx, grads, batch_stats=batch_stats)
        metrics = {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}
        return new_state, metrics


def when(pred, update, evaluate, state):
    """update(state) if pred else (state, evaluate(state)): `update` returns (new state,
    metrics) and `evaluate` the same metrics without updating.

    Off CPU this is `lax.cond`. XLA:CPU runs convolutions inside a conditional as slowly
    as inside a rolled loop (jax-ml/jax#12868): a D1 SGD step at batch 64 took 5.4 s in
    `lax.cond` against 0.1 s outside. There `update` always runs and a select keeps the
    old state when pred is false (an update skipped 4 times in 5 wastes far less).
    """
    if jax.default_backend() != "cpu":
        return lax.cond(pred, update, lambda s: (s, evaluate(s)), state)
    new_state, metrics = update(state)
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new_state, state), metrics
