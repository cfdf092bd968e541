"""Evaluation protocol: accuracy of a Classifier under a list of attacks.

Every attack sees the same examples; besides each attack's accuracy we report the
per-example worst case ("min": correct only if it survives every attack), which is not
the minimum of the column accuracies.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from robustgan import attacks, data, parallel

AttackFn = Callable  # (classifier, x, y, rng) -> x_adv


def white_box_attacks(eval_config) -> dict[str, AttackFn]:
    """Clean, FGSM and PGD (L-inf, random start) at the config's eps, as Wang & Yu's Table 1."""
    e = eval_config
    return {
        "clean": None,
        "fgsm": functools.partial(attacks.fgsm, eps=e.eps),
        "pgd": functools.partial(
            attacks.pgd, eps=e.eps, step_size=e.pgd_step_size, steps=e.pgd_steps,
            restarts=e.pgd_restarts, random_start=True,
        ),
    }


def accuracy_under_attacks(
    classifier, x, y, attack_fns: dict[str, AttackFn | None], *, batch_size: int,
    value_range, mesh, rng, progress: bool = True,
) -> dict[str, float]:
    """Accuracy on (x uint8, y) under each attack, plus 'min' over all of them.

    `None` as an attack means the clean images. Batches are padded to one shape and
    masked, sharded over the mesh.
    """

    @jax.jit
    def correct(clf, xb, yb, key):
        out = {}
        for i, (name, fn) in enumerate(attack_fns.items()):
            x_in = xb if fn is None else fn(clf, xb, yb, jax.random.fold_in(key, i))
            out[name] = clf.logits(x_in, key).argmax(-1) == yb
        out["min"] = functools.reduce(jnp.logical_and, out.values())
        return out

    classifier = parallel.replicate(classifier, mesh)
    totals = dict.fromkeys([*attack_fns, "min"], 0)
    n = 0
    batches = data.eval_batches(x, y, batch_size)
    num_batches = -(-len(y) // batch_size)
    for i, (xb, yb, mask) in enumerate(tqdm(batches, total=num_batches, disable=not progress,
                                           desc="eval", unit="batch")):
        xb, yb = parallel.shard_batch((data.scale(xb, value_range), yb), mesh)
        result = jax.device_get(correct(classifier, xb, yb, jax.random.fold_in(rng, i)))
        for k, v in result.items():
            totals[k] += int(np.sum(v[mask]))
        n += int(mask.sum())
    return {k: v / n for k, v in totals.items()} | {"num_examples": n}


def evaluate(config, dataset, classifier, mesh) -> dict[str, float]:
    """White-box clean / FGSM / PGD accuracy on the configured split."""
    e = config.eval
    x, y = (dataset.x_test, dataset.y_test) if e.split == "test" else (dataset.x_val, dataset.y_val)
    if e.num_examples:
        x, y = x[: e.num_examples], y[: e.num_examples]
    return accuracy_under_attacks(
        classifier, x, y, white_box_attacks(e), batch_size=e.batch_size,
        value_range=config.data.value_range, mesh=mesh,
        rng=jax.random.key(config.seed + 2), progress=config.progress_bar,
    )
