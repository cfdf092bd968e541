"""Black-box threat models: transfer from a surrogate, and substitute training.

- `transfer_correct` / `transfer_accuracy`: adversarial examples crafted on a surrogate
  (white box to the attacker), scored on the target.
- `train_substitute`: Papernot et al. 2017 ("Practical black-box attacks against machine
  learning"), as Defense-GAN (Samangouei et al. 2018, Sec. 2.1.2 and 4.1) runs it: a small
  seed set labelled by the oracle's argmax, the substitute trained on it, then Jacobian-
  based dataset augmentation doubling the set each round.
- `substitute_attack_accuracy`: FGSM on the substitute, scored on the oracle.

Data follow `batching.map_batches`: uint8 pixels plus `value_range`,
or floats already in the data range with `value_range=None`. Epsilons and the
augmentation step lambda are in [0, 1] pixel units.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustgan import attacks, data
from robustgan.attacks import common
from robustgan.classifier import Classifier
from robustgan.evaluate.batching import AttackFn, map_batches
from robustgan.nets import SupervisedNet

# --- transfer ---------------------------------------------------------------------------


def _check_compatible(target: Classifier, surrogate: Classifier) -> None:
    if tuple(target.bounds) != tuple(surrogate.bounds):
        raise ValueError(
            f"target and surrogate must share one data range, got {target.bounds} and "
            f"{surrogate.bounds}"
        )
    if target.num_classes != surrogate.num_classes:
        raise ValueError(
            f"target and surrogate must have the same classes, got {target.num_classes} "
            f"and {surrogate.num_classes}"
        )


@functools.partial(jax.jit, static_argnames="attack_fn")
def _transfer_batch(models, xb, yb, key, attack_fn):
    target, surrogate = models
    attack_key, target_key = jax.random.split(key)
    x_in = xb if attack_fn is None else attack_fn(surrogate, xb, yb, attack_key)
    return target.logits(x_in, target_key).argmax(-1) == yb


def transfer_correct(
    target: Classifier, surrogate: Classifier, x, y, attack_fn: AttackFn | None, *,
    batch_size: int, rng, value_range=None, mesh=None,
) -> np.ndarray:
    """Per-example correctness of `target` on `attack_fn(surrogate, x, y, rng)`.

    AND it with other attacks' (white-box) correctness for a per-example worst case, as
    protocol.py's 'min'. attack_fn=None scores the clean images. With target is
    surrogate this is the white-box correctness under attack_fn.
    """
    _check_compatible(target, surrogate)
    return map_batches(
        functools.partial(_transfer_batch, attack_fn=attack_fn), (target, surrogate), x, y,
        batch_size=batch_size, rng=rng, value_range=value_range, mesh=mesh,
    )


def transfer_accuracy(target, surrogate, x, y, attack_fn, **kwargs) -> float:
    """Accuracy of target on examples crafted on surrogate (arguments as `transfer_correct`)."""
    return float(np.mean(transfer_correct(target, surrogate, x, y, attack_fn, **kwargs)))


# --- substitute training (Papernot et al. 2017) -----------------------------------------


@jax.jit
def predict_batch(classifier, xb, yb, key):
    """The classifier's predicted labels on one batch (a `map_batches` step)."""
    return classifier.logits(xb, key).argmax(-1)


@jax.jit
def _jacobian_batch(tree, xb, yb, key):
    """x + lam * sign(d logit_y(x) / dx) with y the oracle's label: Papernot et al.'s
    Jacobian-based dataset augmentation, clipped to the data range (CleverHans does not
    clip; synthetic points outside the range are not images the oracle should see)."""
    substitute, lam = tree

    def label_logit(z):
        return jnp.take_along_axis(substitute.logits(z, key), yb[:, None], axis=1).sum()

    step = lam * common.data_scale(substitute) * jnp.sign(jax.grad(label_logit)(xb))
    return common.clip_to_bounds(substitute, xb + step)


def _query(oracle: Classifier, x, *, batch_size: int, rng, value_range=None) -> np.ndarray:
    """The oracle's labels (argmax only: the adversary sees no probabilities)."""
    return map_batches(predict_batch, oracle, x, None, batch_size=batch_size, rng=rng,
                       value_range=value_range)


def _fit(state, step_fn, x, y, *, epochs: int, batch_size: int, rng):
    """`epochs` passes over (x, y) in shuffled batches of one size (the last one filled up
    from the start of the shuffled order, so the step compiles once)."""
    n = len(x)
    num_steps = math.ceil(n / batch_size)
    for epoch in range(epochs):
        order_rng, step_rng = jax.random.split(jax.random.fold_in(rng, epoch))
        order = np.asarray(jax.random.permutation(order_rng, n))
        order = np.resize(order, num_steps * batch_size).reshape(num_steps, batch_size)
        for i, idx in enumerate(order):
            state, _ = step_fn(state, x[idx], y[idx], jax.random.fold_in(step_rng, i))
    return state


def train_substitute(
    oracle: Classifier, x_seed, *, module: nn.Module, x_holdout, rounds: int = 6,
    lam: float = 0.1, epochs_per_round: int = 10, batch_size: int = 128, rng,
    optimizer: optax.GradientTransformation | None = None, value_range=None,
    seed_labels=None, tau: int | None = None,
) -> tuple[Classifier, dict]:
    """Trains a substitute for the black-box `oracle` (Papernot et al. 2017, Algorithm 1).

    Round rho = 0 .. rounds-1: train `module` (a Flax model following models/' calling
    convention, e.g. `get_model('dgan_e', 10)`) for `epochs_per_round` epochs on the
    current set S_rho (cross-entropy on the oracle's labels, `standard`'s step, continuing
    from the previous round's weights); then, except after the last round, augment
    S_{rho+1} = S_rho U {clip(x + lam_rho * sign(grad_x F_sub(x)[O(x)]))} and label the
    new points by querying the oracle. Defense-GAN: 150 seed images, 6 rounds, lam 0.1,
    10 epochs, Adam 1e-3 (the default optimizer), batch 128.

    x_seed, x_holdout: the adversary's seed images and held-out images (both uint8 with
    value_range, or floats). seed_labels: labels for the seed instead of oracle queries
    (Defense-GAN's code uses the seed's true labels). tau: Papernot et al.'s periodic
    step size lam_rho = lam * (-1)^floor(rho / tau) (None: lam every round, as the code).

    Returns the substitute Classifier and a history: per round, 'agreement' (fraction
    of x_holdout where substitute and oracle predict the same class, after that round's
    training), 'train_size' and the attacker's cumulative oracle 'queries' (the
    held-out queries that measure agreement are not the attacker's and are not counted).
    """
    if rounds < 1 or epochs_per_round < 1:
        raise ValueError(f"rounds and epochs_per_round must be >= 1, got {rounds}, "
                         f"{epochs_per_round}")
    trainer = SupervisedNet(module, optimizer or optax.adam(1e-3), oracle.num_classes,
                            tuple(float(b) for b in oracle.bounds))
    query_rng, holdout_rng, train_rng, init_rng, aug_rng = jax.random.split(rng, 5)
    ask = functools.partial(_query, oracle, batch_size=batch_size)
    x = np.asarray(x_seed)
    x = np.asarray(data.scale(x, value_range)) if value_range is not None else x
    x = x.astype(np.float32)
    if seed_labels is None:
        y, queries = ask(x, rng=jax.random.fold_in(query_rng, 0)), len(x)
    else:
        y, queries = np.asarray(seed_labels, np.int32), 0
        if y.shape != (len(x),):
            raise ValueError(f"seed_labels must hold one label per seed image ({len(x)}), "
                             f"got shape {y.shape}")
    oracle_holdout = ask(x_holdout, rng=holdout_rng, value_range=value_range)

    state = trainer.init(init_rng, jnp.asarray(x[:1]))
    step_fn = jax.jit(trainer.sgd_step)
    history = {"agreement": [], "train_size": [], "queries": []}
    for rho in range(rounds):
        state = _fit(state, step_fn, x, y, epochs=epochs_per_round,
                     batch_size=batch_size, rng=jax.random.fold_in(train_rng, rho))
        substitute = trainer.classifier(state)
        predicted = _query(substitute, x_holdout, batch_size=batch_size,
                           rng=jax.random.fold_in(holdout_rng, rho + 1), value_range=value_range)
        history["agreement"].append(float(np.mean(predicted == oracle_holdout)))
        history["train_size"].append(len(x))
        history["queries"].append(queries)
        if rho == rounds - 1:
            break
        lam_rho = lam * (-1) ** (rho // tau) if tau else lam
        x_new = map_batches(_jacobian_batch, (substitute, jnp.float32(lam_rho)), x, y,
                            batch_size=batch_size, rng=jax.random.fold_in(aug_rng, rho))
        y_new = ask(x_new, rng=jax.random.fold_in(query_rng, rho + 1))
        x, y = np.concatenate([x, x_new]), np.concatenate([y, y_new])
        queries += len(x_new)
    return trainer.classifier(state), history


def substitute_attack_correct(
    oracle: Classifier, substitute: Classifier, x, y, *, eps: float, batch_size: int, rng,
    value_range=None, mesh=None, predicted_labels: bool = True,
) -> np.ndarray:
    """Per-example correctness of the oracle on FGSM(eps) examples crafted on the substitute
    (Defense-GAN's black-box attack, eps 0.3 there), scored against the true labels y.

    predicted_labels=True (default) ascends the loss of the substitute's own prediction,
    as the CleverHans FGSM in Defense-GAN's code does when given no labels: the attacker
    of a black box has no true labels. False uses y instead.
    """
    attack = attacks.fgsm_predicted if predicted_labels else attacks.fgsm
    return transfer_correct(
        oracle, substitute, x, y, functools.partial(attack, eps=eps), batch_size=batch_size,
        rng=rng, value_range=value_range, mesh=mesh,
    )


def substitute_attack_accuracy(oracle, substitute, x, y, **kwargs) -> float:
    """Accuracy of the oracle under the substitute's FGSM (as `substitute_attack_correct`)."""
    return float(np.mean(substitute_attack_correct(oracle, substitute, x, y, **kwargs)))
