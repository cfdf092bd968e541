"""Defense-GAN's projection onto the range of a generator (Samangouei et al., ICLR 2018,
Eq. 8 and Sec. 3.2): z* = argmin_z ||G(z) - x||^2, approximated by L gradient steps from
R random starts, keeping each image's start with the lowest final error. The classifier
then sees G(z*) (`front_end`, for `attacks.with_front_end`).

The error is the per-image mean of squared differences in [0, 1] pixel units (the
authors' code minimizes the mean over pixels, and so its step size of 10 means the same
for any data range); its minimizer is Eq. 8's.

Gradient policies: 'unrolled' differentiates end to end through all L steps (the honest
white box; `remat` trades compute for the memory of L steps); 'none' is the authors'
code, whose z updates are variable assignments: z* is a constant to autodiff, so the
gradient of G(z*) with respect to x is 0 (what makes plain gradient attacks fail there,
and why BPDA exists).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from robustgan.attacks import common

# (variables, z (N, latent)) -> images (N, H, W, C) in the data range; hashable.
GenerateFn = Callable[[object, jax.Array], jax.Array]

SCHEDULES = ("constant", "authors_decay")
Z_INITS = ("prior", "authors_code")
GRADIENTS = ("unrolled", "none")
# Where the front end's random starts come from: 'drawn' from the classifier's rng at each
# call (the defense keeps them secret); 'fixed': from FIXED_STARTS_SEED whatever the rng, a
# deterministic defense whose starts the attacker knows (Table 4's "attacker knows the
# starts" variant).
STARTS = ("drawn", "fixed")
FIXED_STARTS_SEED = 0


class Projection(NamedTuple):
    reconstruction: jax.Array  # G(z*), shaped like x
    error: jax.Array  # (N,) mean squared error of G(z*) against x, in pixel units
    z: jax.Array  # (N, latent) z*


def learning_rate(step_size, step, steps: int, schedule: str):
    """The step size at `step`: constant; or 'authors_decay', times 0.1 from step
    ceil(0.8 L) on (the staircase decay the code defines; its counter is never
    incremented, so the code itself runs constant)."""
    if schedule == "constant":
        return step_size
    return jnp.where(step >= math.ceil(0.8 * steps), 0.1 * step_size, step_size)


def mean_squared_error(images, x, data_scale):
    """Per-image mean of squared differences in [0, 1] pixel units (over the last three
    axes)."""
    return jnp.mean(((images - x) / data_scale) ** 2, axis=(-3, -2, -1))


@functools.partial(
    jax.jit, static_argnums=0,
    static_argnames=("latent_dim", "steps", "restarts", "schedule", "z_init", "gradient",
                     "unroll", "remat"),
)
def project(generate: GenerateFn, variables, x, rng, *, latent_dim: int, steps: int,
            restarts: int, step_size, momentum=0.0, schedule: str = "constant",
            z_init: str = "prior", gradient: str = "unrolled", data_scale=1.0,
            unroll: int | None = None, remat: bool = False) -> Projection:
    """Eq. 8 for each image of x: `steps` (L) momentum-GD steps on z from `restarts` (R)
    starts, z <- z - lr * v with v <- momentum * v + grad (TensorFlow's MomentumOptimizer,
    as the code); the start with the lowest final error wins, per image.

    Start r is drawn from fold_in(rng, r), so R starts extend the first R - 1.
    z_init: 'prior' draws N(0, I) (the training prior); 'authors_code' N(0, I / latent_dim).
    data_scale: the width of the data range (errors are in [0, 1] pixel units).
    unroll: scan unrolling (None: `common.default_unroll`).
    """
    common.check_choice("schedule", schedule, SCHEDULES)
    common.check_choice("z_init", z_init, Z_INITS)
    common.check_choice("gradient", gradient, GRADIENTS)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    unroll = common.default_unroll(steps) if unroll is None else unroll
    generate_fast = common.conv_friendly(generate)  # fast input gradients on XLA:CPU
    target = lax.stop_gradient(x) if gradient == "none" else x

    def total_error(z):
        return mean_squared_error(generate_fast(variables, z), target, data_scale).sum()

    def step(carry, i):
        z, velocity = carry
        velocity = momentum * velocity + jax.grad(total_error)(z)
        return (z - learning_rate(step_size, i, steps, schedule) * velocity, velocity), None

    def descend(key):
        std = 1.0 if z_init == "prior" else 1.0 / math.sqrt(latent_dim)
        z0 = std * jax.random.normal(key, (x.shape[0], latent_dim), x.dtype)
        body = jax.checkpoint(step) if remat else step
        (z, _), _ = lax.scan(body, (z0, jnp.zeros_like(z0)), jnp.arange(steps),
                             unroll=unroll)
        return z

    keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(restarts))
    z = jax.vmap(descend)(keys)  # (R, N, latent)
    if gradient == "none":
        z = lax.stop_gradient(z)
    images = jax.vmap(lambda z_r: generate_fast(variables, z_r))(z)
    best = jnp.argmin(mean_squared_error(images, x[None], data_scale), axis=0)  # (N,)

    def pick(a):
        index = best.reshape(1, -1, *([1] * (a.ndim - 2)))
        return jnp.take_along_axis(a, index, axis=0)[0]

    reconstruction = pick(images)
    return Projection(reconstruction=reconstruction,
                      error=mean_squared_error(reconstruction, x, data_scale), z=pick(z))


@dataclasses.dataclass(frozen=True)
class ProjectionFrontEnd:
    """Defense-GAN's front end (variables, x, rng) -> G(z*(x)) for `with_front_end`: the
    variables are the generator's; the random starts come from the rng (one draw per key,
    so `eot` averages over starts), or with starts='fixed' from FIXED_STARTS_SEED, the
    same at every call (the attacker knows them). Other settings as `project`'s;
    hashable."""

    generate: GenerateFn
    latent_dim: int
    steps: int
    restarts: int
    step_size: float
    momentum: float = 0.0
    schedule: str = "constant"
    z_init: str = "prior"
    gradient: str = "unrolled"
    data_scale: float = 1.0
    unroll: int | None = None
    remat: bool = False
    starts: str = "drawn"

    def __post_init__(self):
        common.check_choice("starts", self.starts, STARTS)

    def __call__(self, variables, x, rng=None):
        if self.starts == "fixed":
            # Behind a barrier the starts are computed at run time, as drawn ones are: with
            # the key a compile-time constant, XLA:CPU's compile of every white-box column in
            # one jit crashed in LLVM (docs/defense_gan.md).
            rng = jax.lax.optimization_barrier(jax.random.key(FIXED_STARTS_SEED))
        elif rng is None:
            raise ValueError("the Defense-GAN projection draws its random starts from the "
                             "classifier's rng: pass one")
        return project(self.generate, variables, x, rng, **self.settings()).reconstruction

    def settings(self) -> dict:
        """`project`'s keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("generate", "starts")}
