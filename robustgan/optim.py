"""Optimizers and learning-rate schedules built from a config's `optimizer` block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from robustgan.checks import check_choice
from robustgan.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")


def optimizer_config(*, name: str = "sgd", learning_rate: float = 0.01, momentum: float = 0.9,
                     b1: float = 0.9, weight_decay: float = 1e-4, schedule: str = "step",
                     decay_at=(0.5,), decay_factor: float = 0.1,
                     warmup_steps: int = 0) -> ml_collections.ConfigDict:
    """An optimizer block, every key `make_optimizer` reads. schedule 'step' multiplies the
    learning rate by `decay_factor` (Wang & Yu: 0.1; Deep Defense: 0.5) at each
    `decay_at` fraction of training."""
    return ml_collections.ConfigDict(dict(
        name=name, learning_rate=learning_rate, momentum=momentum, b1=b1,
        weight_decay=weight_decay, schedule=schedule, decay_at=tuple(decay_at),
        decay_factor=decay_factor, warmup_steps=warmup_steps))


def check_optimizer_config(key: str, opt) -> None:
    """Stops a bad optimizer block `config.<key>`, naming the key."""
    check_choice(f"{key}.name", opt.name, OPTIMIZERS)
    check_choice(f"{key}.schedule", opt.schedule, SCHEDULES)
    if opt.learning_rate <= 0:
        raise ConfigError(f"config.{key}.learning_rate must be positive")
    if any(not 0.0 < f < 1.0 for f in opt.decay_at):
        raise ConfigError(f"config.{key}.decay_at holds fractions of training in (0, 1)")
    if not 0.0 < opt.decay_factor <= 1.0:
        raise ConfigError(f"config.{key}.decay_factor multiplies the learning rate at each "
                          f"decay_at: it must be in (0, 1], got {opt.decay_factor!r}")


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
    """constant; step (times `decay_factor` at each `decay_at` fraction); cosine.

    An optional linear warm-up over `warmup_steps` precedes it.
    """
    lr = opt_config.learning_rate
    if opt_config.schedule == "constant":
        schedule = optax.constant_schedule(lr)
    elif opt_config.schedule == "step":
        boundaries = {int(f * num_steps): opt_config.get("decay_factor", 0.1)
                      for f in opt_config.decay_at}
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        schedule = optax.cosine_decay_schedule(lr, max(num_steps, 1))
    if opt_config.warmup_steps:
        warmup = optax.linear_schedule(0.0, lr, opt_config.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [opt_config.warmup_steps])
    return schedule


def linear_ramp(step, ramp_steps: int):
    """Grows linearly from 1 / ramp_steps at step 0 to 1 at step ramp_steps - 1, then stays
    at 1; 1 throughout when ramp_steps is 0. The factor an eps ramp multiplies eps by."""
    return jnp.minimum(1.0, (step + 1) / ramp_steps) if ramp_steps else 1.0


def _kernels_only(params):
    """Weight decay applies to conv/dense kernels, not biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
    """SGD with momentum or Adam, plus L2 weight decay (0.5 * wd * ||w||^2 on kernels)."""
    schedule = learning_rate_schedule(opt_config, num_steps)
    if opt_config.name == "sgd":
        base = optax.sgd(schedule, momentum=opt_config.momentum or None)
    else:
        base = optax.adam(schedule, b1=opt_config.b1)
    if not opt_config.weight_decay:
        return base
    decay = optax.add_decayed_weights(opt_config.weight_decay, mask=_kernels_only)
    return optax.chain(decay, base)
