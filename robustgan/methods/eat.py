"""eat: ensemble adversarial training (Tramèr et al., ICLR 2018) as Wang & Yu run it as
their baseline (Sec. 4.4): train on clean images together with adversarial images crafted
on static, pre-trained undefended models (the "sources") with three attacks:
  - FGS on the most likely label argmax D(x) (Eq. 10, no label leaking),
  - PGD (Eq. 11, the evaluation's PGD: random start, `train_attack` steps and step size),
  - least-likely-class FGS (Eq. 12).
"We include all these adversarial examples together with the original clean data": every
minibatch is split into four interleaved quarters, clean / FGS / PGD / LL-FGS, so each
kind is a quarter of what the model sees. With several sources, iteration t crafts its
examples on source t mod (number of sources), Tramèr et al.'s rotation.

Sources are finished runs of this project named by `config.eat.sources` (run
references: run directories, or in a table the names of earlier rows), loaded before the
method is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from robustgan import attacks
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec
from robustgan.methods.supervised import supervised_net

KINDS = 4  # clean, FGS on the predicted label, PGD, least-likely FGS


def defaults() -> ml_collections.ConfigDict:
    """config.eat: the source runs; eps and PGD settings come from config.train_attack."""
    return ml_collections.ConfigDict({"sources": ()})


def validate(config) -> None:
    if not config.eat.sources:
        raise ConfigError(
            "config.eat.sources is empty: eat trains on adversarial examples of "
            "pre-trained undefended models; give their run directories, e.g. "
            "--config.eat.sources='(\"runs/mnist_standard\",)'")
    if config.batch_size % KINDS:
        raise ConfigError(f"config.batch_size={config.batch_size}: eat splits each batch "
                          "into 4 (clean, FGS, PGD, LL-FGS); use a multiple of 4")


def stack_sources(sources: list[Classifier]) -> Classifier:
    """One Classifier whose variables carry a leading source axis (same architecture)."""
    first = sources[0]
    for other in sources[1:]:
        if (other.apply_fn, other.bounds, other.num_classes) != (
                first.apply_fn, first.bounds, first.num_classes):
            raise ConfigError("config.eat.sources must share one architecture and data range")
    variables = jax.tree.map(lambda *v: jnp.stack(v), *(s.variables for s in sources))
    return first.replace(variables=variables)


def ensemble_batch(source: Classifier, x, y, rng, *, eps, step_size, steps):
    """x with rows 4i + 1, 4i + 2, 4i + 3 replaced by their FGS (predicted label), PGD and
    least-likely FGS examples on `source`; rows 4i stay clean. Interleaving (not four
    contiguous blocks) gives every device of the data mesh its share of each kind."""
    x4, y4 = x.reshape(-1, KINDS, *x.shape[1:]), y.reshape(-1, KINDS)
    return jnp.stack([
        x4[:, 0],
        attacks.fgsm_predicted(source, x4[:, 1], y4[:, 1], eps=eps),
        attacks.pgd(source, x4[:, 2], y4[:, 2], rng, eps=eps, step_size=step_size,
                    steps=steps, random_start=True),
        attacks.ll_fgs(source, x4[:, 3], y4[:, 3], eps=eps),
    ], axis=1).reshape(x.shape)


def eat(config, num_classes: int, runs) -> Method:
    """The eat Method: sources the runs of config.eat.sources; eps, PGD steps and step
    size from config.train_attack."""
    s = supervised_net(config, num_classes)
    sources = stack_sources([run.classifier() for run in runs["eat.sources"]])
    count = len(config.eat.sources)
    if sources.bounds != s.bounds:
        raise ConfigError(f"config.eat.sources take data in {sources.bounds}, this run in "
                          f"{s.bounds}: use the same config.data.value_range")
    a = config.train_attack

    def train_step(state, x, y, rng):
        attack_rng, step_rng = jax.random.split(rng)
        index = state.step % count
        source = sources.replace(variables=jax.tree.map(lambda v: v[index], sources.variables))
        x_train = ensemble_batch(source, x, y, attack_rng, eps=a.eps, step_size=a.step_size,
                                 steps=a.steps)
        return s.sgd_step(state, x_train, y, step_rng)

    return Method(init=s.init, train_step=train_step, classifier=s.classifier)


EAT = MethodSpec("eat", build=eat, defaults=defaults, validate=validate,
                 references=("eat.sources",), resumable=("eat.sources",))
