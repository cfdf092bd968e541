"""Generator attacks (Wang & Yu Sec. 4.5): a perturbation generator G_phi trained against
a fixed classifier, then used as an attack, x_adv = clip(x + eps * G(.)).

Training maximizes F(theta, phi) of Eq. 4 in phi with theta fixed (game.ascend_generator),
which is maximizing the adversarial cross-entropy. Once trained, G does not look at the
classifier it is applied to: the same attack is white box on the classifier it was trained
against and a transfer (black-box) attack on any other.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import optax
from flax import struct
from jax import lax

from robustgan import game, optim
from robustgan.attacks import common
from robustgan.attacks.fitting import fit
from robustgan.classifier import Classifier


@struct.dataclass
class GeneratorAttack:
    """A trained generator as an attack `(classifier, x, y, rng) -> x_adv`.

    G runs in eval mode (BatchNorm running averages); eps is in [0, 1] pixel units, scaled
    by the attacked classifier's data range; the result is clipped to that range. The key
    feeds G2's noise.
    """

    module: nn.Module = struct.field(pytree_node=False)
    variables: Any
    eps: float = struct.field(pytree_node=False)

    def __call__(self, classifier: Classifier, x, y, rng=None):
        rngs = {} if rng is None else {"noise": rng}
        direction = self.module.apply(self.variables, x, y, train=False, rngs=rngs)
        eps = self.eps * common.data_scale(classifier)
        return lax.stop_gradient(game.perturb(x, direction, eps, classifier.bounds))


def _fixed(classifier: Classifier, batch_stats, x, rng):
    """A Classifier as Eq. 4's discriminator: eval mode, theta never changes."""
    return classifier.logits(x, rng), batch_stats


def train_generator_attack(
    classifier: Classifier,
    generator: nn.Module,
    x,
    y,
    rng,
    *,
    eps,
    num_steps: int,
    batch_size: int = 64,
    optimizer: optax.GradientTransformation | None = None,
    steps_per_batch: int = 1,
    unroll: int = 0,
    mesh=None,
    progress: bool = False,
) -> GeneratorAttack:
    """Trains `generator` (see models/generators.py) against the fixed `classifier` for
    `num_steps` minibatches of (x, y) (x scaled to classifier.bounds; drawn uniformly with
    replacement), `steps_per_batch` ascent steps each, and returns it as an attack.

    The default optimizer is Sec. 4.5's: SGD 0.01, momentum 0.9, weight decay 1e-5.
    unroll: of the ascent-step scan; 0: common.default_unroll for this backend.
    mesh: when given, each minibatch is split over its devices (parallel.make_mesh), as
    training batches are. progress: a progress bar over the steps.
    """
    if optimizer is None:
        optimizer = optim.make_optimizer(optim.optimizer_config(
            name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-5,
            schedule="constant"), num_steps)
    players = game.Game(
        discriminator=_fixed,
        generator=game.TrainMode(generator),
        eps=eps * common.data_scale(classifier),
        bounds=classifier.bounds,
    )
    init_rng, noise_rng, rng = jax.random.split(rng, 3)
    variables = generator.init({"params": init_rng, "noise": noise_rng}, x[:1], y[:1], train=False)
    phi, stats = variables["params"], variables.get("batch_stats", {})

    def step(carry, classifier, x, y, key):
        phi, opt_state, stats = carry
        phi, opt_state, stats, _ = game.ascend_generator(
            players, optimizer, classifier, phi, opt_state, ({}, stats), x, y, key,
            steps=steps_per_batch, unroll=unroll or common.default_unroll(steps_per_batch))
        return phi, opt_state, stats

    phi, _, stats = fit(step, (phi, optimizer.init(phi), stats), classifier, x, y, rng,
                        num_steps=num_steps, batch_size=batch_size, mesh=mesh,
                        progress=progress, desc="generator")
    variables = {"params": phi, "batch_stats": stats} if stats else {"params": phi}
    return GeneratorAttack(generator, variables, eps)
