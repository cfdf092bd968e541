"""Methods that train one classifier on (possibly perturbed) labelled images.

`standard` trains on clean images. `pgd_at` is Madry et al.'s PGD adversarial training,
with ATGAN's FracAT (Wang et al.): only a `fraction` of each batch is replaced by its
adversarial images; and an optional linear eps ramp (the recipe that keeps MNIST
eps=0.3 training from collapsing, ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from robustgan import attacks, models, optim
from robustgan.attacks.common import cross_entropy
from robustgan.classifier import Classifier, ModelApply
from robustgan.methods import Method


@struct.dataclass
class ClassifierState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


class _Supervised:
    """Shared pieces: init, the SGD step on given inputs, the evaluation classifier."""

    def __init__(self, config, num_classes: int):
        self.module = models.get_model(config.model.name, num_classes, **config.model.kwargs)
        self.tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
        self.num_classes = num_classes
        self.bounds = tuple(float(b) for b in config.data.value_range)
        self.eval_batch_norm = config.eval.batch_norm

    def init(self, rng, sample_x) -> ClassifierState:
        variables = self.module.init({"params": rng, "dropout": rng}, sample_x, train=False)
        params = variables["params"]
        return ClassifierState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
        )

    def classifier(self, state: ClassifierState, batch_norm: str | None = None) -> Classifier:
        return Classifier(
            apply_fn=ModelApply(self.module, batch_norm or self.eval_batch_norm),
            variables=_variables(state.params, state.batch_stats),
            bounds=self.bounds,
            num_classes=self.num_classes,
        )

    def sgd_step(self, state: ClassifierState, x, y, rng):
        """One optimizer step on cross-entropy over (x, y), updating BatchNorm averages."""

        def loss_fn(params):
            logits, updates = self.module.apply(
                _variables(params, state.batch_stats), x, train=True,
                mutable=["batch_stats"], rngs={"dropout": rng},
            )
            return cross_entropy(logits, y).mean(), (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_state = ClassifierState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        metrics = {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}
        return new_state, metrics


def standard(config, num_classes: int) -> Method:
    """Plain training on clean images."""
    s = _Supervised(config, num_classes)
    return Method(init=s.init, train_step=s.sgd_step, classifier=s.classifier)


def pgd_at(config, num_classes: int) -> Method:
    """Madry et al. PGD adversarial training (+ FracAT fraction, + eps ramp)."""
    s = _Supervised(config, num_classes)
    a = config.train_attack
    eps, step_size, steps, ramp = a.eps, a.step_size, a.steps, a.eps_ramp_steps
    fraction, random_start, batch_norm = a.fraction, a.random_start, a.batch_norm
    unroll = a.unroll or None

    def train_step(state, x, y, rng):
        attack_rng, step_rng = jax.random.split(rng)
        scale = optim.linear_ramp(state.step, ramp)
        num_adv = round(fraction * x.shape[0])
        x_adv = attacks.pgd(
            s.classifier(state, batch_norm), x[:num_adv], y[:num_adv], attack_rng,
            eps=eps * scale, step_size=step_size * scale, steps=steps,
            random_start=random_start, unroll=unroll,
        )
        x_train = x_adv if num_adv == x.shape[0] else x.at[:num_adv].set(x_adv)
        state, metrics = s.sgd_step(state, x_train, y, step_rng)
        return state, {**metrics, "eps": eps * jnp.asarray(scale)}

    return Method(init=s.init, train_step=train_step, classifier=s.classifier)
