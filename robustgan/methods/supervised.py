"""Methods that train one classifier on (possibly perturbed) labelled images.

`standard` trains on clean images. `pgd_at` is Madry et al.'s PGD adversarial training,
with ATGAN's FracAT (Wang et al.): only a `fraction` of each batch is replaced by its
adversarial images; and an optional linear eps ramp (the recipe that keeps MNIST
eps=0.3 training from collapsing, docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robustgan import attacks, models, optim
from robustgan.methods.base import Method, MethodSpec
from robustgan.nets import SupervisedNet


def supervised_net(config, num_classes: int, num_updates: int | None = None) -> SupervisedNet:
    """config.model trained by config.optimizer over `num_updates` updates (default
    config.num_train_steps), evaluated as config.eval.batch_norm says."""
    return SupervisedNet(
        module=models.get_model(config.model.name, num_classes, **config.model.kwargs),
        tx=optim.make_optimizer(config.optimizer, num_updates or config.num_train_steps),
        num_classes=num_classes,
        bounds=tuple(float(b) for b in config.data.value_range),
        eval_batch_norm=config.eval.batch_norm,
    )


def standard(config, num_classes: int, runs=None) -> Method:
    """Plain training on clean images."""
    s = supervised_net(config, num_classes)
    return Method(init=s.init, train_step=s.sgd_step, classifier=s.classifier)


def pgd_at(config, num_classes: int, runs=None) -> Method:
    """Madry et al. PGD adversarial training (+ FracAT fraction, + eps ramp)."""
    s = supervised_net(config, num_classes)
    a = config.train_attack
    eps, step_size, steps, ramp = a.eps, a.step_size, a.steps, a.eps_ramp_steps
    fraction, random_start, batch_norm, loss = a.fraction, a.random_start, a.batch_norm, a.loss
    unroll = a.unroll or None

    def train_step(state, x, y, rng):
        attack_rng, step_rng = jax.random.split(rng)
        scale = optim.linear_ramp(state.step, ramp)
        num_adv = round(fraction * x.shape[0])
        x_adv = attacks.pgd(
            s.classifier(state, batch_norm), x[:num_adv], y[:num_adv], attack_rng,
            eps=eps * scale, step_size=step_size * scale, steps=steps,
            random_start=random_start, loss=loss, unroll=unroll,
        )
        x_train = x_adv if num_adv == x.shape[0] else x.at[:num_adv].set(x_adv)
        state, metrics = s.sgd_step(state, x_train, y, step_rng)
        return state, {**metrics, "eps": eps * jnp.asarray(scale)}

    return Method(init=s.init, train_step=train_step, classifier=s.classifier)


STANDARD = MethodSpec("standard", build=standard)
PGD_AT = MethodSpec("pgd_at", build=pgd_at)
