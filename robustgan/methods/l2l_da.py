"""l2l_da: Jang et al., "Adversarial Defense via Learning to Generate Diverse Attacks"
(ICCV 2019), and l2l: the one-shot L2L baseline of Chen et al. (the paper's L2L*), as
one code path with different settings (config.l2l_da and config.l2l).

One `train_step` is one iteration of Algorithm 1 on one minibatch:
  1. the generator g_phi (models/unet.py) attacks the classifier recursively (Eq. 5):
       delta^(t+1) = clip(delta^(t) + eps_step g(x, y, z, delta^(t), grad_t), -eps, eps),
       x_adv^(t+1) = clip(x + delta^(t+1), data range),  delta^(0) = 0, t < T,
     grad_t = grad_x CE(x_adv^(t)) under stop_gradient, delta not stopped, as ONE
     `lax.scan` that phi's gradient runs through (`trajectory`);
  2. one ascent step of phi on Eq. 8, L_cls + lambda L_div (Eqs. 6-7), the classifier in
     inference mode (the authors' code); with lambda > 0 the batch is duplicated with two
     z samples, [x; x] with [z1; z2] (Algorithm 1, line 2);
  3. one step of the classifier on CE(x) + CE(x_adv^(T)) (line 10), x_adv^(T) from step 1.

The classifier is config.model trained by config.optimizer (`config.init_from` can
warm-start it from a `standard` run); the generator's optimizer is config.<block>.g_optimizer
(SGD, momentum 0.9, weight decay 1e-5: Sec. 5.1). eps is in [0, 1] pixel units.

lambda: the paper gives no value. The authors' code ran MNIST 0.02 and CIFAR-10 0.5 with
its diversity term written as mean absolute differences (mean|x_t(z1) - x_t(z2)| /
mean|z1 - z2|), which is Eq. 7 times z_dim / x_dim; `diversity_weight` is that lambda, and
Eq. 7 enters Eq. 8 with weight lambda * z_dim / x_dim (`generator_objective`).

What the code does beyond the paper, offered as settings (defaults: the paper):
`grad_norm='channel'` (the gradient normalized per channel, not per example);
`sum_steps` (the code's generator loss sums over the T steps: T times Eq. 8);
`classifier_loss='mean'` (the code's one CE mean over [x; x_adv], not CE(x) + CE(x_adv));
`grad_clip=1.0` (the code clips both networks' gradient norms at 1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax import lax

from robustgan import nets, optim
from robustgan.attacks.common import cross_entropy, default_unroll
from robustgan.attacks.recursive import GeneratorApply, Recursion, diversity_loss, trajectory
from robustgan.checks import check_at_least, check_choice, check_range
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec
from robustgan.methods.supervised import supervised_net
from robustgan.models.unet import GRAD_NORMS, UNetGenerator

CLASSIFIER_LOSSES = ("sum", "mean")

# Table 1's rows as overrides of config.l2l_da (the full method: no override). R X is a
# one-shot generator, which takes the whole eps in its one step (Eq. 4).
ABLATIONS: dict[str, dict[str, Any]] = {
    "R X, D X": {"steps": 1, "step_fraction": 1.0, "diversity_weight": 0.0},
    "R X, D O": {"steps": 1, "step_fraction": 1.0},
    "R O, D X": {"diversity_weight": 0.0},
    "R O, D O": {},
    "delta O, y X": {"use_y": False},
    "delta X, y O": {"use_delta": False},
    "delta X, y X": {"use_delta": False, "use_y": False},
}


def defaults() -> ml_collections.ConfigDict:
    """config.l2l_da: the paper's settings (Sec. 5.1), lambda as the authors ran MNIST."""
    a = ml_collections.ConfigDict()
    a.eps = 0.3  # L-inf radius in [0, 1] pixel units (CIFAR-10: 8/255)
    a.steps = 10  # T of Eq. 5; 1: one-shot generation (Table 1a's R X)
    a.step_fraction = 0.25  # eps_step / eps (Sec. 5.1: eps / 4)
    a.diversity_weight = 0.02  # lambda of Eq. 8 in the code's scale (CIFAR-10: 0.5); 0: D X
    a.use_z = True  # Gaussian z into the generator
    a.use_y = True  # class-conditional BatchNorm on the true label (Table 1b)
    a.use_delta = True  # delta^(t) as a generator input (Table 1b)
    a.grad_norm = "example"  # example (paper) | channel (the code) | none (L2L*)
    a.generator_width = 64  # the U-Net's base width k (the code's g_base_channel_dim)
    a.z_dim = 8
    a.sum_steps = False  # the code: the generator loss sums the T steps' terms
    a.classifier_loss = "sum"  # sum: CE(x) + CE(x_adv) (Algorithm 1) | mean (the code)
    a.grad_clip = 0.0  # global gradient-norm clip of both networks; 0: none (the code: 1)
    a.remat = False  # jax.checkpoint on each recursion step: less memory, more time
    a.unroll = 0  # unrolling of the recursion's scan; 0: the default for this backend
    a.g_optimizer = optim.optimizer_config(
        name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-5, schedule="constant")
    return a


def l2l_defaults() -> ml_collections.ConfigDict:
    """config.l2l: Chen et al.'s generator x_adv = clip(x + eps g(x, grad L(x))) (Eq. 4):
    one step of the whole eps, no z, y or delta, raw gradient, no diversity term."""
    a = defaults()
    a.update(dict(steps=1, step_fraction=1.0, diversity_weight=0.0, use_z=False,
                  use_y=False, use_delta=False, grad_norm="none"))
    return a


def validate(config, block: str = "l2l_da") -> None:
    """Stops a bad config.<block>, naming the key."""
    a = config[block]
    optim.check_optimizer_config(f"{block}.g_optimizer", a.g_optimizer)
    check_range(f"{block}.eps", a.eps, 0.0, 1.0)
    check_range(f"{block}.step_fraction", a.step_fraction, 0.0, 1.0)
    check_choice(f"{block}.grad_norm", a.grad_norm, GRAD_NORMS)
    check_choice(f"{block}.classifier_loss", a.classifier_loss, CLASSIFIER_LOSSES)
    for key in ("diversity_weight", "grad_clip", "unroll"):
        check_at_least(f"{block}.{key}", a[key], 0)
    for key in ("steps", "generator_width", "z_dim"):
        check_at_least(f"{block}.{key}", a[key], 1, "at least 1")
    if a.diversity_weight and not a.use_z:
        raise ConfigError(f"config.{block}.diversity_weight > 0 needs config.{block}.use_z: "
                          "the diversity loss (Eq. 7) compares two z samples")


class GeneratorAux(NamedTuple):
    """What `generator_objective` computes besides its value."""

    x_adv: jax.Array  # x_adv^(T), one row per row of z
    g_stats: Any
    metrics: dict[str, jax.Array]


def generator_objective(rec: Recursion, phi, g_stats, classifier: Classifier, x, y, z, *,
                        diversity_weight: float, sum_steps: bool = False):
    """Eq. 8, L_cls + lambda z_dim / x_dim L_div (Eqs. 6-7; lambda in the code's scale),
    the value g_phi ascends. With diversity_weight > 0, z holds [z1; z2] (2N rows) and the
    recursion runs on [x; x] (Algorithm 1, line 2); otherwise z has N rows and L_div is
    not computed. sum_steps: T times the value (the code sums over steps)."""
    n = x.shape[0]
    if diversity_weight:
        x, y = jnp.concatenate([x, x]), jnp.concatenate([y, y])
    x_adv, losses, g_stats = trajectory(rec, phi, g_stats, classifier, x, y, z)
    cls = losses.mean()
    value, metrics = cls, {"cls_loss": cls, "first_step_loss": losses[0].mean(),
                           "last_step_loss": losses[-1].mean()}
    if diversity_weight:
        div = diversity_loss(x_adv[:, :n], x_adv[:, n:], z[:n], z[n:])
        value = value + diversity_weight * z.shape[-1] / x[0].size * div
        metrics["div_loss"] = div
    if sum_steps:
        value = rec.steps * value
    metrics["g_objective"] = value
    return value, GeneratorAux(x_adv[-1], g_stats, metrics)


def classifier_step(net: nets.SupervisedNet, state: nets.NetState, x, y, x_adv, rng, *,
                    reduction: str = "sum"):
    """Algorithm 1, line 10: one optimizer step on mean CE(x) + mean CE(x_adv) ('sum'),
    or on the mean CE over [x; x_adv] ('mean', the code), in one training-mode pass over
    the joint batch. x_adv: one or more copies of the batch's adversarial images."""
    n = x.shape[0]
    labels = jnp.concatenate([y, jnp.tile(y, x_adv.shape[0] // n)])

    def loss_fn(params):
        logits, updates = net.module.apply(
            nets.variables(params, state.batch_stats), jnp.concatenate([x, x_adv]),
            train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        ce = cross_entropy(logits, labels)
        clean, adv = ce[:n].mean(), ce[n:].mean()
        loss = ce.mean() if reduction == "mean" else clean + adv
        correct = logits.argmax(-1) == labels
        metrics = {"loss": loss, "clean_loss": clean, "adv_loss": adv,
                   "accuracy": correct[:n].mean(), "adv_accuracy": correct[n:].mean()}
        return loss, (metrics, updates.get("batch_stats", {}))

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return nets.apply_gradients(state, net.tx, grads, batch_stats=batch_stats), metrics


@struct.dataclass
class L2LDAState:
    """step counts iterations; d and g the classifier and the generator."""

    step: jax.Array
    d: nets.NetState
    g: nets.NetState


def generator_module(settings, num_classes: int) -> UNetGenerator:
    """The U-Net that config.<block> describes."""
    return UNetGenerator(num_classes=num_classes, width=settings.generator_width,
                         z_dim=settings.z_dim, use_z=settings.use_z, use_y=settings.use_y,
                         use_delta=settings.use_delta, grad_norm=settings.grad_norm)


def _clipped(tx: optax.GradientTransformation, max_norm: float):
    return optax.chain(optax.clip_by_global_norm(max_norm), tx) if max_norm else tx


def l2l_da(config, num_classes: int, runs=None, *, block: str = "l2l_da") -> Method:
    """The l2l_da (or, block='l2l', the l2l) Method for config.<block>'s settings."""
    a = config[block]
    net = supervised_net(config, num_classes)
    net = dataclasses.replace(net, tx=_clipped(net.tx, a.grad_clip))
    g_tx = _clipped(optim.make_optimizer(a.g_optimizer, config.num_train_steps), a.grad_clip)
    module = generator_module(a, num_classes)
    scale = net.bounds[1] - net.bounds[0]
    rec = Recursion(GeneratorApply(module), eps=a.eps * scale,
                    eps_step=a.step_fraction * a.eps * scale, steps=a.steps, remat=a.remat,
                    unroll=a.unroll or default_unroll(a.steps))
    lam, z_dim = a.diversity_weight, a.z_dim

    def init(rng, sample_x) -> L2LDAState:
        d_rng, g_rng = jax.random.split(rng)
        n = sample_x.shape[0]
        g_vars = module.init(g_rng, sample_x, jnp.zeros(n, jnp.int32),
                             jnp.zeros((n, z_dim), sample_x.dtype), jnp.zeros_like(sample_x),
                             jnp.zeros_like(sample_x))
        return L2LDAState(step=jnp.zeros((), jnp.int32), d=net.init(d_rng, sample_x),
                          g=nets.init_state(g_vars, g_tx))

    def train_step(state: L2LDAState, x, y, rng):
        z_rng, d_rng = jax.random.split(rng)
        z = jax.random.normal(z_rng, ((2 if lam else 1) * x.shape[0], z_dim), x.dtype)
        classifier = net.classifier(state.d, "eval")

        def loss(phi):
            value, aux = generator_objective(rec, phi, state.g.batch_stats, classifier, x,
                                             y, z, diversity_weight=lam,
                                             sum_steps=a.sum_steps)
            return -value, aux

        grads, aux = jax.grad(loss, has_aux=True)(state.g.params)
        g = nets.apply_gradients(state.g, g_tx, grads, batch_stats=aux.g_stats)
        d, metrics = classifier_step(net, state.d, x, y, lax.stop_gradient(aux.x_adv),
                                     d_rng, reduction=a.classifier_loss)
        return L2LDAState(state.step + 1, d, g), {**metrics, **aux.metrics}

    return Method(init=init, train_step=train_step, classifier=lambda s: net.classifier(s.d),
                  networks={"classifier": "d", "generator": "g"})


def trained_generator(run) -> dict:
    """The generator of a finished l2l_da or l2l run (`runs.Run`) as the L2L-DA attack's
    start (attacks/l2l_da_attack.finetune_l2l_da): its U-Net, variables, and the
    recursion it was trained in (T and eps_step / eps); one z draw if it takes no z."""
    a = run.config[run.config.method]
    g = run.network("generator")
    return {"module": generator_module(a, run.config.data.num_classes),
            "variables": {"params": g.params, "batch_stats": g.batch_stats},
            "steps": a.steps, "step_fraction": a.step_fraction,
            **({} if a.use_z else {"samples": 1})}


L2L_DA = MethodSpec("l2l_da", build=l2l_da, defaults=defaults, validate=validate,
                    attack_generator=trained_generator)
L2L = MethodSpec("l2l", build=functools.partial(l2l_da, block="l2l"), defaults=l2l_defaults,
                 validate=functools.partial(validate, block="l2l"),
                 attack_generator=trained_generator)
