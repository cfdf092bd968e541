"""The L2L-DA attack of Jang et al. (ICCV 2019, Table 2): the recursive generator of an
l2l_da run (models/unet.py, Eq. 5) fine-tuned against the classifier it attacks, then run
with `samples` draws of z, each for the recursion's T steps; per example the worst
candidate of all samples and steps is kept (the authors' code: 10 z samples x 10 steps).

Fine-tuning ascends L_cls (Eq. 6), the mean over the T steps of CE(x_adv^(t), y), in the
generator's parameters, with z ~ N(0, I) per minibatch, the generator's BatchNorm on batch
statistics (its running averages advance) and the classifier fixed in inference mode; the
default optimizer is the method's (Sec. 5.1: SGD 0.01, momentum 0.9, weight decay 1e-5).
At attack time the generator uses its running averages (as `GeneratorAttack`).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import struct
from jax import lax

from robustgan import optim
from robustgan.attacks import common
from robustgan.attacks.fitting import fit
from robustgan.attacks.recursive import GeneratorApply, Recursion, trajectory
from robustgan.classifier import Classifier
from robustgan.models.unet import UNetGenerator


def _recursion(module: UNetGenerator, classifier: Classifier, *, train: bool, eps: float,
               step_fraction: float, steps: int, unroll: int) -> Recursion:
    """Eq. 5's constants in the classifier's data units (eps_step = step_fraction eps)."""
    scale = common.data_scale(classifier)
    return Recursion(GeneratorApply(module, train=train), eps=eps * scale,
                     eps_step=step_fraction * eps * scale, steps=steps,
                     unroll=unroll or common.default_unroll(steps))


@struct.dataclass
class L2LDAAttack:
    """A trained L2L-DA generator as an attack `(classifier, x, y, rng) -> x_adv`.

    variables: the U-Net's params and batch_stats. eps: in [0, 1] pixel units; eps_step is
    step_fraction * eps (Sec. 5.1: eps / 4); steps: T. The key draws the z samples
    (`draws`); of the samples x T candidates, each example keeps one that fools the
    classifier, else the one of the highest cross-entropy (common.update_best).
    """

    module: UNetGenerator = struct.field(pytree_node=False)
    variables: Any
    eps: float = struct.field(pytree_node=False)
    step_fraction: float = struct.field(pytree_node=False, default=0.25)
    steps: int = struct.field(pytree_node=False, default=10)
    samples: int = struct.field(pytree_node=False, default=10)
    unroll: int = struct.field(pytree_node=False, default=0)

    def draws(self, rng, x):
        """The z samples (samples, N, z_dim) for the batch x: one key of split(rng) each."""
        return jax.vmap(lambda key: jax.random.normal(
            key, (x.shape[0], self.module.z_dim), x.dtype))(jax.random.split(rng, self.samples))

    def trajectories(self, classifier: Classifier, x, y, z):
        """One z's candidates: x_adv^(t) (T, N, ...) and their cross-entropies (T, N)."""
        rec = _recursion(self.module, classifier, train=False, eps=self.eps,
                         step_fraction=self.step_fraction, steps=self.steps,
                         unroll=self.unroll)
        x_adv, losses, _ = trajectory(rec, self.variables["params"],
                                      self.variables.get("batch_stats", {}), classifier, x,
                                      y, z)
        return x_adv, losses

    def __call__(self, classifier: Classifier, x, y, rng):
        return _attack(self, classifier, x, y, rng)


@jax.jit
def _attack(attack: L2LDAAttack, classifier: Classifier, x, y, rng):
    def sample(best, z):
        x_adv, losses = attack.trajectories(classifier, x, y, z)
        logits = jax.vmap(lambda xa: common.model_logits(classifier, xa))(x_adv)
        fooled = common.fooled(logits, y, False)
        for t in range(attack.steps):
            best = common.update_best(best, x_adv[t], fooled[t], losses[t])
        return best, None

    best, _ = lax.scan(sample, common.no_best(x), attack.draws(rng, x))
    return lax.stop_gradient(best.x)


def finetune_l2l_da(
    classifier: Classifier,
    module: UNetGenerator,
    variables,
    x,
    y,
    rng,
    *,
    eps: float,
    num_steps: int,
    step_fraction: float = 0.25,
    steps: int = 10,
    samples: int = 10,
    batch_size: int = 100,
    optimizer: optax.GradientTransformation | None = None,
    unroll: int = 0,
    mesh=None,
    progress: bool = False,
) -> L2LDAAttack:
    """Fine-tunes an l2l_da run's generator (`module`, e.g. methods/l2l_da.generator_module
    of the run's config, and `variables` = {'params', 'batch_stats'} of its state.g) against
    the fixed `classifier` by ascent on L_cls (Eq. 6) for `num_steps` minibatches of (x, y)
    (x scaled to classifier.bounds), and returns it as an `L2LDAAttack`.

    eps, step_fraction, steps: the recursion's (the run's, in [0, 1] pixel units); samples:
    the z draws at attack time. unroll: of the recursion's scan (0: this backend's
    default). mesh, progress: as `fitting.fit`.
    """
    if optimizer is None:
        optimizer = optim.make_optimizer(optim.optimizer_config(
            name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-5,
            schedule="constant"), num_steps)
    settings = dict(eps=eps, step_fraction=step_fraction, steps=steps, unroll=unroll)

    def step(carry, classifier, x, y, key):
        phi, stats, opt_state = carry
        rec = _recursion(module, classifier, train=True, **settings)
        z = jax.random.normal(key, (x.shape[0], module.z_dim), x.dtype)

        def loss(phi):
            _, losses, new_stats = trajectory(rec, phi, stats, classifier, x, y, z)
            return -losses.mean(), new_stats

        grads, stats = jax.grad(loss, has_aux=True)(phi)
        updates, opt_state = optimizer.update(grads, opt_state, phi)
        return optax.apply_updates(phi, updates), stats, opt_state

    params = variables["params"]
    phi, stats, _ = fit(step, (params, variables.get("batch_stats", {}), optimizer.init(params)),
                        classifier, x, y, rng, num_steps=num_steps, batch_size=batch_size,
                        mesh=mesh, progress=progress, desc="l2l_da attack")
    return L2LDAAttack(module, {"params": phi, "batch_stats": stats}, eps,
                       step_fraction=step_fraction, steps=steps, samples=samples, unroll=unroll)
