"""advnet: Wang & Yu, "A direct approach to robust deep learning using adversarial
networks" (ICLR 2019). A classifier D_theta plays a perturbation generator G_phi in the
minimax game of Eq. 4 (robustgan/game.py).

One `train_step` is one iteration on one minibatch, as in the authors' code:
  1. a G update: `g_steps` gradient-ascent steps on F in phi on this minibatch (Sec. 3.2);
  2. a D update when step % d_every == 0 (`when`): one optimizer step along
     game.d_gradient, regularized as config.advnet.gradreg says (Eqs. 8-9).
d_every=1 is the paper's SVHN/CIFAR schedule; MNIST's "5 G updates of 5 steps per D
update, each on its own minibatch" is d_every=5. One key per iteration fixes G2's z and
the dropout masks for all of its G steps and its D step.

Optimizers: D's is config.optimizer, its schedule counted in D updates (so a decay at half
of training happens at half of the iterations for any d_every); G's is
config.advnet.g_optimizer. h of Eq. 9 is config.advnet.fd_step, or eta_G / 10 when 0.
An optional linear ramp of G's eps over the first config.advnet.eps_ramp_steps iterations
(not in the paper) keeps a CPU-recipe D from collapsing to a constant classifier.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from robustgan import game as game_lib
from robustgan import optim
from robustgan.attacks.common import default_unroll
from robustgan.methods import Method
from robustgan.methods.supervised import ClassifierState, _Supervised
from robustgan.models.generators import get_generator


def when(pred, update, evaluate, state):
    """update(state) if pred else (state, evaluate(state)): `update` returns (new state,
    metrics) and `evaluate` the same metrics without updating.

    Off CPU this is `lax.cond`. XLA:CPU runs convolutions inside a conditional as slowly
    as inside a rolled loop (jax-ml/jax#12868): a D1 SGD step at batch 64 took 5.4 s in
    `lax.cond` against 0.1 s outside. There `update` always runs and a select keeps the
    old state when pred is false (with d_every=5, 4 in 5 D steps are wasted: far cheaper).
    """
    if jax.default_backend() != "cpu":
        return lax.cond(pred, update, lambda s: (s, evaluate(s)), state)
    new_state, metrics = update(state)
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new_state, state), metrics


@struct.dataclass
class AdvNetState:
    """step counts iterations; d.step counts D updates and g.step G ascent steps."""

    step: jax.Array
    d: ClassifierState
    g: ClassifierState


def players(config, num_classes: int) -> tuple[game_lib.Game, _Supervised, nn.Module]:
    """(the Game of Eq. 4, D's supervised pieces, G's module) for config.advnet."""
    a = config.advnet
    d = _Supervised(config, num_classes)
    d.tx = optim.make_optimizer(config.optimizer, -(-config.num_train_steps // a.d_every))
    generator = get_generator(a.generator, num_classes, a.generator_width)
    low, high = d.bounds
    game = game_lib.Game(
        discriminator=game_lib.TrainMode(d.module), generator=game_lib.TrainMode(generator),
        eps=a.eps * (high - low), bounds=d.bounds, adv_weight=a.adv_weight, clip=a.clip,
    )
    return game, d, generator


def fd_step(advnet_config) -> float:
    """h of Eq. 9: config.advnet.fd_step, or eta_G / 10 when 0 (the paper)."""
    a = advnet_config
    return a.fd_step or a.g_optimizer.learning_rate / 10


def advnet(config, num_classes: int) -> Method:
    """The advnet Method for config (config.advnet holds its settings)."""
    a = config.advnet
    game, d, generator = players(config, num_classes)
    g_tx = optim.make_optimizer(a.g_optimizer, config.num_train_steps * a.g_steps)
    h = fd_step(a)
    unroll = a.unroll or default_unroll(a.g_steps)

    def init(rng, sample_x) -> AdvNetState:
        d_rng, g_rng, noise_rng = jax.random.split(rng, 3)
        sample_y = jnp.zeros(sample_x.shape[:1], jnp.int32)
        variables = generator.init(
            {"params": g_rng, "noise": noise_rng}, sample_x, sample_y, train=False)
        g = ClassifierState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=g_tx.init(variables["params"]),
        )
        return AdvNetState(step=jnp.zeros((), jnp.int32), d=d.init(d_rng, sample_x), g=g)

    def train_step(state: AdvNetState, x, y, rng):
        scale = optim.linear_ramp(state.step, a.eps_ramp_steps)
        game_now = dataclasses.replace(game, eps=game.eps * scale)
        phi, g_opt_state, g_stats, adv_losses = game_lib.ascend_generator(
            game_now, g_tx, state.d.params, state.g.params, state.g.opt_state,
            (state.d.batch_stats, state.g.batch_stats), x, y, rng,
            steps=a.g_steps, unroll=unroll,
        )
        g = ClassifierState(state.g.step + a.g_steps, phi, g_stats, g_opt_state)

        def update_d(d_state: ClassifierState):
            grads, aux = game_lib.d_gradient(
                game_now, d_state.params, phi, (d_state.batch_stats, g_stats), x, y, rng,
                gradreg=a.gradreg, gamma=a.gamma, fd_step=h,
            )
            updates, opt_state = d.tx.update(grads, d_state.opt_state, d_state.params)
            params = optax.apply_updates(d_state.params, updates)
            return ClassifierState(d_state.step + 1, params, aux.d_stats, opt_state), aux.metrics

        def evaluate(d_state: ClassifierState):
            _, aux = game_lib.objective(
                game_now, d_state.params, phi, (d_state.batch_stats, g_stats), x, y, rng)
            return aux.metrics

        d_state, metrics = when(state.step % a.d_every == 0, update_d, evaluate, state.d)
        # F and its parts at (theta, phi) after G's update, before D's; g_gain: how much
        # this G update raised the adversarial loss on the minibatch.
        metrics = {**metrics, "g_gain": metrics["adv_loss"] - adv_losses[0],
                   "eps": a.eps * jnp.asarray(scale)}
        return AdvNetState(state.step + 1, d_state, g), metrics

    return Method(init=init, train_step=train_step, classifier=lambda s: d.classifier(s.d))
