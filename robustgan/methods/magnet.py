"""magnet: the MagNet reformer (Meng & Chen 2017) as Samangouei et al., "Defense-GAN"
(ICLR 2018, Sec. 2.2.3 and 4; appendix Table 7) compare against it: an auto-encoder
trained on clean training images (models/magnet.py). The run trains no classifier
(`classifier=None`); it offers the front end x -> AE(x) (`MethodSpec.front_end`), so a
classifier run that names it in config.front_end.run is evaluated as classifier(AE(x))
(Tables 1, 2 and 4: each classifier behind the reformer, not retrained). The front end is
deterministic: it ignores its key. MagNet's detectors are not part of this baseline.

Loss: MagNet's (its code's defensive_models.py and train_defense.py; the Defense-GAN paper
states none): the mean squared error between AE(x~) and x in [0, 1] pixel units, where
x~ = clip(x + noise_std * N(0, I)) to the data range (a denoising auto-encoder, MagNet's
v_noise = 0.1; noise_std = 0 is a plain auto-encoder). The noise is drawn afresh each step
(MagNet draws one noisy copy of the training set). MagNet's L2 activity regularizer
(weight 1e-9) is left out. The optimizer is config.optimizer (the recipe: MagNet's Keras
Adam, learning rate 1e-3).

Networks: 'encoder' (Table 7) and 'generator' (the decoder, Table 6's generator), each a
`nets.NetState` under the same optimizer (Adam acts per parameter, so two states are one
joint Adam); the shared name lets config.init_from start the decoder from a defense_gan
run's generator. Start it so. From scratch, Adam at 1e-3 collapsed the tanh code to one
value for every image within 25 steps, and at 1e-4 shrank its spread ninefold from step 25
to 150; the test error stayed at or above the mean image's 0.069 (encoder widths
(32, 32, 32), decoder (64, 64, 32), 4,000 MNIST images, batch 64). Started from a
defense_gan generator trained 1,000 steps, the same reformer reached 0.015 in 300 steps at
1e-3, its code's spread growing.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from robustgan import nets, optim
from robustgan.attacks import projection
from robustgan.checks import check_at_least
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec
from robustgan.models import magnet as magnet_models
from robustgan.models import wgan


def defaults() -> ml_collections.ConfigDict:
    """config.magnet: Table 7's encoder, Table 6's generator as decoder, MagNet's noise."""
    c = ml_collections.ConfigDict()
    c.latent_dim = wgan.LATENT_DIM
    c.encoder_widths = magnet_models.TABLE7_ENCODER_WIDTHS
    c.generator_widths = wgan.TABLE6_GENERATOR_WIDTHS
    c.noise_std = 0.1  # MagNet's v_noise, in [0, 1] pixel units (0: a plain auto-encoder)
    return c


def validate(config) -> None:
    """Stops a bad config.magnet, naming the key."""
    c = config.magnet
    check_at_least("magnet.latent_dim", c.latent_dim, 1, "at least 1")
    check_at_least("magnet.noise_std", c.noise_std, 0)
    for key in ("encoder_widths", "generator_widths"):
        if len(c[key]) != 3 or min(c[key]) < 1:
            raise ConfigError(f"config.magnet.{key} holds three positive widths, got {c[key]!r}")


@struct.dataclass
class MagNetState:
    """The encoder (Table 7) and the decoder (Table 6's generator)."""

    encoder: nets.NetState
    generator: nets.NetState


def autoencoder(config, channels: int) -> magnet_models.MagNetAutoEncoder:
    """The auto-encoder of config.magnet for images of `channels` channels in
    config.data.value_range."""
    c = config.magnet
    return magnet_models.MagNetAutoEncoder(
        encoder_widths=tuple(c.encoder_widths), generator_widths=tuple(c.generator_widths),
        latent_dim=c.latent_dim, channels=channels,
        value_range=tuple(config.data.value_range))


def noisy_inputs(x, rng, *, noise_std: float, bounds):
    """clip(x + noise_std * N(0, I)) to `bounds`, noise_std in [0, 1] pixel units (MagNet's
    denoising inputs)."""
    low, high = bounds
    noise = noise_std * (high - low) * jax.random.normal(rng, x.shape, x.dtype)
    return jnp.clip(x + noise, low, high)


def reformer_variables(state: MagNetState) -> dict:
    """The auto-encoder's variables in `state`."""
    return {"params": {"encoder": state.encoder.params, "generator": state.generator.params}}


@dataclasses.dataclass(frozen=True)
class Reformer:
    """(variables, x, rng) -> AE(x): the auto-encoder as a front end (`attacks.with_front_end`);
    deterministic, the key is ignored."""

    module: nn.Module

    def __call__(self, variables, x, rng=None):
        return self.module.apply(variables, x)


def magnet(config, num_classes: int, runs=None) -> Method:
    """The magnet Method (an auto-encoder; trains no classifier)."""
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    bounds = tuple(config.data.value_range)
    noise_std = config.magnet.noise_std

    def init(rng, sample_x) -> MagNetState:
        params = autoencoder(config, sample_x.shape[-1]).init(rng, sample_x)["params"]
        return MagNetState(encoder=nets.init_state({"params": params["encoder"]}, tx),
                           generator=nets.init_state({"params": params["generator"]}, tx))

    def train_step(state: MagNetState, x, y, rng):
        reform = Reformer(autoencoder(config, x.shape[-1]))
        x_in = noisy_inputs(x, rng, noise_std=noise_std, bounds=bounds)

        def loss_fn(variables):
            reconstruction = reform(variables, x_in)
            return projection.mean_squared_error(reconstruction, x, bounds[1] - bounds[0]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(reformer_variables(state))
        grads = grads["params"]
        return MagNetState(
            encoder=nets.apply_gradients(state.encoder, tx, grads["encoder"]),
            generator=nets.apply_gradients(state.generator, tx, grads["generator"]),
        ), {"reconstruction_error": loss}

    return Method(init=init, train_step=train_step, classifier=None,
                  networks={"encoder": "encoder", "generator": "generator"})


def offered_front_end(config, run):
    """MethodSpec.front_end: the reformer x -> AE(x) through the trained auto-encoder of
    `run` (a magnet run: its architecture and data range); the defended run's config sets
    nothing of it."""
    return Reformer(autoencoder(run.config, run.input_shape[-1])), reformer_variables(run.state)


MAGNET = MethodSpec("magnet", build=magnet, defaults=defaults, validate=validate,
                    front_end=offered_front_end)
