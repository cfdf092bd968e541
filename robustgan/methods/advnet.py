"""advnet: Wang & Yu, "A direct approach to robust deep learning using adversarial
networks" (ICLR 2019). A classifier D_theta plays a perturbation generator G_phi in the
minimax game of Eq. 4 (robustgan/game.py).

One `train_step` is one iteration on one minibatch, as in the authors' code:
  1. a G update: `g_steps` gradient-ascent steps on F in phi on this minibatch (Sec. 3.2);
  2. a D update when step % d_every == 0 (`nets.when`): one optimizer step along
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
import ml_collections
from flax import struct

from robustgan import game as game_lib
from robustgan import nets, optim
from robustgan.attacks.common import default_unroll
from robustgan.checks import check_at_least, check_choice, check_range
from robustgan.methods.base import Method, MethodSpec
from robustgan.methods.supervised import supervised_net
from robustgan.models.generators import GENERATORS, get_generator


def defaults() -> ml_collections.ConfigDict:
    """config.advnet: Wang & Yu's settings (Secs. 3-4) where the paper states them."""
    a = ml_collections.ConfigDict()
    a.eps = 0.3  # G's L-inf radius in [0, 1] pixel units
    a.adv_weight = 1.0  # lambda of Eq. 4
    # G's eps grows linearly from 0 to eps over the first eps_ramp_steps iterations (0: no
    # ramp; not in the paper, the CPU recipe's guard against a constant classifier).
    a.eps_ramp_steps = 0
    # Clip x + eps G(x) to the data range in training. Eq. 4 and the authors' code do not
    # (and clipped, G's gradient dies on the pixels the clip removes); evaluation attacks
    # always clip.
    a.clip = False
    # g0 | g1 (input x) | g2 (Gaussian z) | g3 (label y): appendix Figure 4.
    a.generator = "g0"
    a.generator_width = 0  # k; 0: the paper's (64; g3: 16)
    # D's gradient regularizer (Eqs. 8-9): none | exact | finite_difference | authors_code.
    a.gradreg = "finite_difference"
    a.gamma = 0.01
    # h of Eq. 9; 0: the paper's g_optimizer.learning_rate / 10 (authors_code: the code's
    # D learning rate / 10).
    a.fd_step = 0.0
    a.g_steps = 5  # gradient-ascent steps per G update, on one minibatch
    a.d_every = 1  # D updates every d_every iterations (MNIST: 5)
    a.unroll = 0  # unrolling of the G-step scan; 0: the default for this backend
    a.g_optimizer = optim.optimizer_config(
        name="sgd", learning_rate=0.01, momentum=0.9, b1=0.5, weight_decay=1e-5,
        schedule="constant")
    return a


def validate(config) -> None:
    """Stops a bad config.advnet, naming the key."""
    a = config.advnet
    optim.check_optimizer_config("advnet.g_optimizer", a.g_optimizer)
    check_choice("advnet.generator", a.generator, tuple(GENERATORS))
    check_choice("advnet.gradreg", a.gradreg, game_lib.GRADREGS)
    check_range("advnet.eps", a.eps, 0.0, 1.0)
    for key in ("adv_weight", "gamma", "fd_step", "generator_width", "unroll",
                "eps_ramp_steps"):
        check_at_least(f"advnet.{key}", a[key], 0)
    for key in ("g_steps", "d_every"):
        check_at_least(f"advnet.{key}", a[key], 1, "at least 1")


@struct.dataclass
class AdvNetState:
    """step counts iterations; d.step counts D updates and g.step G ascent steps."""

    step: jax.Array
    d: nets.NetState
    g: nets.NetState


def players(config, num_classes: int) -> tuple[game_lib.Game, nets.SupervisedNet, nn.Module]:
    """(the Game of Eq. 4, D as a SupervisedNet, G's module) for config.advnet."""
    a = config.advnet
    d = supervised_net(config, num_classes, -(-config.num_train_steps // a.d_every))
    generator = get_generator(a.generator, num_classes, a.generator_width)
    low, high = d.bounds
    game = game_lib.Game(
        discriminator=game_lib.TrainMode(d.module), generator=game_lib.TrainMode(generator),
        eps=a.eps * (high - low), bounds=d.bounds, adv_weight=a.adv_weight, clip=a.clip,
    )
    return game, d, generator


def fd_step(config) -> float:
    """h of Eq. 9: config.advnet.fd_step, or when 0 eta_G / 10 (the paper), and for
    gradreg='authors_code' D's learning rate / 10 (the authors' code; the two coincide on
    MNIST, not on CIFAR: 0.01 against 2e-4)."""
    a = config.advnet
    if a.fd_step:
        return a.fd_step
    if a.gradreg == "authors_code":
        return config.optimizer.learning_rate / 10
    return a.g_optimizer.learning_rate / 10


def advnet(config, num_classes: int, runs=None) -> Method:
    """The advnet Method for config (config.advnet holds its settings)."""
    a = config.advnet
    game, d, generator = players(config, num_classes)
    g_tx = optim.make_optimizer(a.g_optimizer, config.num_train_steps * a.g_steps)
    h = fd_step(config)
    unroll = a.unroll or default_unroll(a.g_steps)

    def init(rng, sample_x) -> AdvNetState:
        d_rng, g_rng, noise_rng = jax.random.split(rng, 3)
        sample_y = jnp.zeros(sample_x.shape[:1], jnp.int32)
        g = nets.init_state(generator.init(
            {"params": g_rng, "noise": noise_rng}, sample_x, sample_y, train=False), g_tx)
        return AdvNetState(step=jnp.zeros((), jnp.int32), d=d.init(d_rng, sample_x), g=g)

    def train_step(state: AdvNetState, x, y, rng):
        scale = optim.linear_ramp(state.step, a.eps_ramp_steps)
        game_now = dataclasses.replace(game, eps=game.eps * scale)
        phi, g_opt_state, g_stats, adv_losses = game_lib.ascend_generator(
            game_now, g_tx, state.d.params, state.g.params, state.g.opt_state,
            (state.d.batch_stats, state.g.batch_stats), x, y, rng,
            steps=a.g_steps, unroll=unroll,
        )
        g = nets.NetState(state.g.step + a.g_steps, phi, g_stats, g_opt_state)

        def update_d(d_state: nets.NetState):
            grads, aux = game_lib.d_gradient(
                game_now, d_state.params, phi, (d_state.batch_stats, g_stats), x, y, rng,
                gradreg=a.gradreg, gamma=a.gamma, fd_step=h,
            )
            return nets.apply_gradients(d_state, d.tx, grads, batch_stats=aux.d_stats), \
                aux.metrics

        def evaluate(d_state: nets.NetState):
            _, aux = game_lib.objective(
                game_now, d_state.params, phi, (d_state.batch_stats, g_stats), x, y, rng)
            return aux.metrics

        d_state, metrics = nets.when(state.step % a.d_every == 0, update_d, evaluate, state.d)
        # F and its parts at (theta, phi) after G's update, before D's; g_gain: how much
        # this G update raised the adversarial loss on the minibatch.
        metrics = {**metrics, "g_gain": metrics["adv_loss"] - adv_losses[0],
                   "eps": a.eps * jnp.asarray(scale)}
        return AdvNetState(state.step + 1, d_state, g), metrics

    return Method(init=init, train_step=train_step, classifier=lambda s: d.classifier(s.d),
                  networks={"classifier": "d", "generator": "g"})


ADVNET = MethodSpec("advnet", build=advnet, defaults=defaults, validate=validate)
