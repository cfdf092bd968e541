"""defense_gan: Samangouei et al., "Defense-GAN" (ICLR 2018). Trains the WGAN-GP
(Gulrajani et al. 2017) whose generator Defense-GAN projects inputs onto (Eq. 8,
`attacks.projection`); the run trains no classifier (`classifier=None`): the classifiers
it defends are other runs, put behind the projection by `defended_classifier`.

Schedule: one train step is one of the authors' generator iterations: `critic_steps`
critic steps, the i-th on rows i, i + critic_steps, ... of the batch (so
config.batch_size is critic_steps x the critic's batch; a remainder goes unused), then
one generator step of the critic's batch size. `num_train_steps` counts generator
iterations (the paper's 200k).
The critic steps are unrolled in the compiled step rather than taken one per train step
under a conditional: XLA:CPU runs convolutions inside a conditional as slowly as in a
rolled loop, so `nets.when` computes both branches there, and the generator update that
4 steps in 5 discarded cost 27% of every critic step (docs/defense_gan.md).

Losses (WGAN-GP): critic  mean D(G(z)) - mean D(x) + lambda * GP,
generator  -mean D(G(z)), z ~ N(0, I). GP = mean over examples of (||grad D(x_hat)||_2 - 1)^2
at x_hat = x + alpha (G(z) - x), alpha ~ U[0, 1] per example, the norm over the whole image
(gp_norm='image', the paper). gp_norm='authors_code' is the code's reduction: the norm
over the height axis only (tf.reduce_sum(..., reduction_indices=[1]) on NHWC), one norm
per (example, column, channel), and the mean of (norm - 1)^2 over all of them.

Optimizers: Adam(learning_rate, b1, b2) for both networks (the paper's 1e-4, 0.5, 0.9),
from this block (config.optimizer is not read: its Adam has no b2). Images are generated
in config.data.value_range (models.wgan).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from robustgan import nets
from robustgan.attacks import adaptive, common, projection
from robustgan.checks import check_at_least, check_choice
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec
from robustgan.models import wgan

GP_NORMS = ("image", "authors_code")


def defaults() -> ml_collections.ConfigDict:
    """config.defense_gan: the paper's WGAN-GP settings (appendix, Table 6) and the
    projection's (Sec. 3.2; step size, momentum and decay from the authors' code)."""
    c = ml_collections.ConfigDict()
    c.latent_dim = wgan.LATENT_DIM
    c.gp_weight = 10.0
    c.gp_norm = "image"  # image (paper) | authors_code (height axis only)
    c.critic_steps = 5  # critic steps per generator step
    c.learning_rate = 1e-4
    c.b1 = 0.5
    c.b2 = 0.9
    # Table 6 (reshape, ConvT, ConvT) widths; the code's are wgan.AUTHORS_GENERATOR_WIDTHS.
    c.generator_widths = wgan.TABLE6_GENERATOR_WIDTHS
    c.critic_widths = wgan.CRITIC_WIDTHS
    # The test-time projection (attacks.projection.project); evaluation-only settings.
    p = ml_collections.ConfigDict()
    p.steps = 200  # L (the code's MNIST config; the paper's tables vary it)
    p.restarts = 10  # R
    p.step_size = 10.0
    p.momentum = 0.7
    p.schedule = "constant"  # constant | authors_decay
    p.z_init = "prior"  # prior: N(0, I) | authors_code: N(0, I / latent_dim)
    p.gradient = "unrolled"  # unrolled | none (the authors': no gradient through z*)
    p.unroll = 0  # 0: the default for this backend
    p.remat = False  # recompute each step's activations in the backward pass
    p.starts = "drawn"  # drawn: from the classifier's rng | fixed: known to the attacker
    c.projection = p
    return c


def validate(config) -> None:
    """Stops a bad config.defense_gan, naming the key."""
    c = config.defense_gan
    check_choice("defense_gan.gp_norm", c.gp_norm, GP_NORMS)
    check_choice("defense_gan.projection.schedule", c.projection.schedule,
                 projection.SCHEDULES)
    check_choice("defense_gan.projection.z_init", c.projection.z_init, projection.Z_INITS)
    check_choice("defense_gan.projection.gradient", c.projection.gradient,
                 projection.GRADIENTS)
    check_choice("defense_gan.projection.starts", c.projection.starts, projection.STARTS)
    for key in ("latent_dim", "critic_steps"):
        check_at_least(f"defense_gan.{key}", c[key], 1, "at least 1")
    for key in ("steps", "restarts"):
        check_at_least(f"defense_gan.projection.{key}", c.projection[key], 1, "at least 1")
    for key in ("gp_weight", "b1", "b2"):
        check_at_least(f"defense_gan.{key}", c[key], 0)
    if c.learning_rate <= 0:
        raise ConfigError("config.defense_gan.learning_rate must be positive")
    for key in ("generator_widths", "critic_widths"):
        if len(c[key]) != 3 or min(c[key]) < 1:
            raise ConfigError(f"config.defense_gan.{key} holds three positive widths, "
                              f"got {c[key]!r}")


def gradient_penalty(critic_fn, real, fake, alpha, *, norm: str = "image"):
    """The WGAN-GP penalty mean (||grad critic_fn(x_hat)|| - 1)^2 at the interpolates
    x_hat = real + alpha (fake - real) (alpha: one per example); critic_fn maps images to
    per-example scores. norm: 'image' (one norm per example) or 'authors_code' (over the
    height axis only: one norm per example, column and channel)."""
    x_hat = real + alpha.reshape(-1, 1, 1, 1) * (fake - real)
    grads = jax.grad(lambda v: critic_fn(v).sum())(x_hat)
    axes = (1, 2, 3) if norm == "image" else (1,)
    slopes = jnp.sqrt(jnp.sum(grads**2, axis=axes))
    return jnp.mean((slopes - 1.0) ** 2)


@struct.dataclass
class DefenseGANState:
    """step counts train steps (generator iterations); critic.step and generator.step
    each network's updates."""

    step: jax.Array
    generator: nets.NetState
    critic: nets.NetState


@dataclasses.dataclass(frozen=True, eq=False)
class WGANGP:
    """The two networks, their optimizer and the WGAN-GP losses and steps."""

    generator: nn.Module
    critic: nn.Module
    tx: optax.GradientTransformation
    latent_dim: int
    gp_weight: float
    gp_norm: str

    def sample(self, params, n: int, rng):
        """G(z) for n draws z ~ N(0, I)."""
        return self.generator.apply({"params": params},
                                    jax.random.normal(rng, (n, self.latent_dim)))

    def score(self, critic_params, x):
        """D(x), its convolutions as im2col on CPU (`common.im2col_convolutions`): XLA:CPU
        took the input gradient of the critic's 7x7 -> 4x4 layer (batch 50) through its
        slow input-dilated path, 430 ms against 7 ms forward, and the penalty differentiates
        it again (docs/defense_gan.md, measured costs)."""
        return common.im2col_convolutions(self.critic.apply)({"params": critic_params}, x)

    def critic_loss(self, critic_params, generator_params, x, rng):
        """(critic loss, metrics) on real batch x; rng draws z and alpha."""
        z_rng, alpha_rng = jax.random.split(rng)
        fake = jax.lax.stop_gradient(self.sample(generator_params, x.shape[0], z_rng))
        critic_fn = functools.partial(self.score, critic_params)
        wasserstein = critic_fn(x).mean() - critic_fn(fake).mean()
        alpha = jax.random.uniform(alpha_rng, (x.shape[0],), x.dtype)
        penalty = gradient_penalty(critic_fn, x, fake, alpha, norm=self.gp_norm)
        loss = -wasserstein + self.gp_weight * penalty
        return loss, {"critic_loss": loss, "wasserstein": wasserstein,
                      "gradient_penalty": penalty}

    def generator_loss(self, generator_params, critic_params, n: int, rng):
        """-mean D(G(z)) over n draws."""
        fake = self.sample(generator_params, n, rng)
        return -self.score(critic_params, fake).mean()

    def critic_step(self, state: DefenseGANState, x, rng):
        (_, metrics), grads = jax.value_and_grad(self.critic_loss, has_aux=True)(
            state.critic.params, state.generator.params, x, rng)
        return state.replace(critic=nets.apply_gradients(state.critic, self.tx, grads)), metrics

    def generator_step(self, state: DefenseGANState, n: int, rng):
        loss, grads = jax.value_and_grad(self.generator_loss)(
            state.generator.params, state.critic.params, n, rng)
        generator = nets.apply_gradients(state.generator, self.tx, grads)
        return state.replace(generator=generator), {"generator_loss": loss}


def wgan_gp(config, channels: int) -> WGANGP:
    """The WGANGP of config.defense_gan for images of `channels` channels, generated in
    config.data.value_range."""
    c = config.defense_gan
    return WGANGP(
        generator=wgan.WGANGenerator(widths=tuple(c.generator_widths), channels=channels,
                                     value_range=tuple(config.data.value_range)),
        critic=wgan.WGANCritic(widths=tuple(c.critic_widths)),
        tx=optax.adam(c.learning_rate, b1=c.b1, b2=c.b2),
        latent_dim=c.latent_dim, gp_weight=c.gp_weight, gp_norm=c.gp_norm,
    )


def defense_gan(config, num_classes: int, runs=None) -> Method:
    """The defense_gan Method (a WGAN-GP; trains no classifier)."""
    every = config.defense_gan.critic_steps
    if config.batch_size % every:  # said, not silent: these rows never train the critic
        print(f"defense_gan: config.batch_size={config.batch_size} is not a multiple of "
              f"defense_gan.critic_steps={every}; the last {config.batch_size % every} rows "
              f"of each batch go unused", flush=True)

    def init(rng, sample_x) -> DefenseGANState:
        if sample_x.shape[1:3] != (28, 28):
            raise ConfigError(f"defense_gan's Table 6 GAN makes 28x28 images; the data are "
                              f"{tuple(sample_x.shape[1:])}")
        gan = wgan_gp(config, sample_x.shape[-1])
        g_rng, c_rng = jax.random.split(rng)
        g = gan.generator.init(g_rng, jnp.zeros((1, gan.latent_dim)))
        return DefenseGANState(step=jnp.zeros((), jnp.int32),
                               generator=nets.init_state(g, gan.tx),
                               critic=nets.init_state(gan.critic.init(c_rng, sample_x),
                                                      gan.tx))

    def train_step(state: DefenseGANState, x, y, rng):
        gan = wgan_gp(config, x.shape[-1])
        n = x.shape[0] // every  # the last batch_size % critic_steps rows go unused
        batches = x[: n * every].reshape(n, every, *x.shape[1:])  # step i: rows i, i + every, ...
        keys = jax.random.split(rng, every + 1)
        critic_metrics = []
        for i in range(every):
            state, metrics = gan.critic_step(state, batches[:, i], keys[i])
            critic_metrics.append(metrics)
        state, g_metrics = gan.generator_step(state, n, keys[every])
        metrics = jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *critic_metrics)
        return state.replace(step=state.step + 1), {**metrics, **g_metrics}

    return Method(init=init, train_step=train_step, classifier=None,
                  networks={"generator": "generator", "critic": "critic"})


def front_end(config, channels: int = 1, settings=None) -> projection.ProjectionFrontEnd:
    """The projection through the generator of config.defense_gan, with the projection
    `settings` (default config.defense_gan.projection)."""
    p = config.defense_gan.projection if settings is None else settings
    low, high = config.data.value_range
    return projection.ProjectionFrontEnd(
        generate=GeneratorApply(wgan_gp(config, channels).generator),
        latent_dim=config.defense_gan.latent_dim,
        steps=p.steps, restarts=p.restarts, step_size=p.step_size, momentum=p.momentum,
        schedule=p.schedule, z_init=p.z_init, gradient=p.gradient, data_scale=high - low,
        unroll=p.unroll or None, remat=p.remat, starts=p.starts,
    )


@dataclasses.dataclass(frozen=True)
class GeneratorApply:
    """(variables, z) -> G(z): a generator module as `projection.GenerateFn`."""

    module: nn.Module

    def __call__(self, variables, z):
        return self.module.apply(variables, z)


def defended_classifier(config, state: DefenseGANState, classifier: Classifier,
                        channels: int = 1) -> Classifier:
    """classifier(G(z*(x))): `classifier` behind this run's projection (Sec. 3.2)."""
    return adaptive.with_front_end(front_end(config, channels),
                                   nets.variables(state.generator.params, {}), classifier)


def offered_front_end(config, run):
    """MethodSpec.front_end: the projection (Sec. 3.2) through the trained generator of
    `run` (a defense_gan run: its architecture and data range), with the defended
    classifier run's `config.defense_gan.projection` (L, R, ...), so one GAN run serves
    every setting of Figure 3 and Table 4."""
    return (front_end(run.config, run.input_shape[-1], config.defense_gan.projection),
            nets.variables(run.state.generator.params, {}))


DEFENSE_GAN = MethodSpec("defense_gan", build=defense_gan, defaults=defaults,
                         validate=validate, resumable=("defense_gan.projection.",),
                         front_end=offered_front_end,
                         front_end_keys=("defense_gan.projection.",))
