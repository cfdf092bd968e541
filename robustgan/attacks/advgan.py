"""AdvGAN (Xiao et al., "Generating Adversarial Examples with Adversarial Networks", IJCAI
2018) trained against a fixed classifier, one of the generator attacks of Jang et al.
(ICCV 2019, Table 2).

G(x) is a direction in [-1, 1] (models/generators.py: a final tanh) and
x_adv = clip(x + eps G(x), data range), inside the L-inf eps-ball by construction, in
training as at attack time (attacks/generator.py's `GeneratorAttack`). G minimizes Eq. 4,

  L = L_adv + alpha L_GAN + beta L_hinge,
  L_adv   = mean max(Z_y(x_adv) - max_{i != y} Z_i(x_adv), -kappa)   (Carlini & Wagner's
            loss, untargeted; Z the classifier's logits),
  L_GAN   = mean log D(x) + mean log(1 - D(x_adv))   (G minimizes it, D maximizes it),
  L_hinge = mean max(0, ||x_adv - x||_2 - c)   (the soft bound c on the L2 norm, in
            [0, 1] pixel units like eps),

with D (models/attack_generators.py) telling x from x_adv. Each step updates G against the
current D, then D on that step's x_adv. G's BatchNorm uses batch statistics in training
and the running averages at attack time.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from robustgan import game
from robustgan.attacks import common
from robustgan.attacks.fitting import fit
from robustgan.attacks.generator import GeneratorAttack
from robustgan.classifier import Classifier
from robustgan.models.attack_generators import AdvGANDiscriminator
from robustgan.models.generators import get_generator


def adversarial_loss(logits: jax.Array, labels: jax.Array, *, confidence: float = 0.0):
    """Per-example L_adv: max(Z_y - max_{i != y} Z_i, -kappa), kappa = confidence."""
    return jnp.maximum(-common.margin(logits, labels), -confidence)


def hinge_loss(delta: jax.Array, bound: float) -> jax.Array:
    """Per-example L_hinge: max(0, ||delta||_2 - c), the L2 norm over each example."""
    return jnp.maximum(common.per_example_norm(delta, "l2").reshape(-1) - bound, 0.0)


@functools.partial(jax.jit, static_argnums=0)
def _init(module: nn.Module, rngs, *inputs):
    """module.init, compiled once per module and input shapes."""
    return module.init(rngs, *inputs)


def train_advgan(
    classifier: Classifier,
    x,
    y,
    rng,
    *,
    eps: float,
    num_steps: int,
    generator: nn.Module | None = None,
    discriminator: nn.Module | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    bound: float = 0.1,
    confidence: float = 0.0,
    batch_size: int = 64,
    optimizer: optax.GradientTransformation | None = None,
    mesh=None,
    progress: bool = False,
) -> GeneratorAttack:
    """Trains AdvGAN's G and D against the fixed `classifier` for `num_steps` minibatches of
    (x, y) (x scaled to classifier.bounds) and returns G as an attack.

    eps, bound (c): in [0, 1] pixel units. generator: a models/generators.py module (default
    G1 at k = 8: an encoder, residual blocks and a decoder, after Xiao et al.'s);
    discriminator: default `AdvGANDiscriminator()`. optimizer: for both networks (default
    Adam 1e-3). Xiao et al. leave c and the weights to the user: alpha = beta = 1 and
    c = 0.1 are this module's defaults.
    """
    generator = generator or get_generator("g1", classifier.num_classes, 8)
    discriminator = discriminator or AdvGANDiscriminator()
    optimizer = optimizer or optax.adam(1e-3)
    scale = common.data_scale(classifier)
    g_apply = game.TrainMode(generator)
    init_rng, noise_rng, d_rng, rng = jax.random.split(rng, 4)
    g_vars = _init(generator, {"params": init_rng, "noise": noise_rng}, x[:1], y[:1])
    phi, psi = g_vars["params"], _init(discriminator, d_rng, x[:1])["params"]

    def step(carry, classifier, x, y, key):
        phi, g_stats, g_opt, psi, d_opt = carry

        def g_loss(phi):
            direction, stats = g_apply(phi, g_stats, x, y, rng=key)
            x_adv = game.perturb(x, direction, eps * scale, classifier.bounds)
            fake = discriminator.apply({"params": psi}, x_adv)
            value = (adversarial_loss(common.model_logits(classifier, x_adv), y,
                                      confidence=confidence).mean()
                     + alpha * jax.nn.log_sigmoid(-fake).mean()
                     + beta * hinge_loss((x_adv - x) / scale, bound).mean())
            return value, (stats, jax.lax.stop_gradient(x_adv))

        def d_loss(psi):
            real = discriminator.apply({"params": psi}, x)
            fake = discriminator.apply({"params": psi}, x_adv)
            return -(jax.nn.log_sigmoid(real).mean() + jax.nn.log_sigmoid(-fake).mean())

        grads, (g_stats, x_adv) = jax.grad(g_loss, has_aux=True)(phi)
        updates, g_opt = optimizer.update(grads, g_opt, phi)
        phi = optax.apply_updates(phi, updates)
        updates, d_opt = optimizer.update(jax.grad(d_loss)(psi), d_opt, psi)
        return phi, g_stats, g_opt, optax.apply_updates(psi, updates), d_opt

    carry = (phi, g_vars.get("batch_stats", {}), optimizer.init(phi), psi, optimizer.init(psi))
    phi, g_stats, *_ = fit(step, carry, classifier, x, y, rng, num_steps=num_steps,
                           batch_size=batch_size, mesh=mesh, progress=progress, desc="advgan")
    variables = {"params": phi, "batch_stats": g_stats} if g_stats else {"params": phi}
    return GeneratorAttack(generator, variables, eps)
