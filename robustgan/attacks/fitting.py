"""The training loop of a generator attack against a fixed classifier: minibatches drawn
uniformly with replacement from arrays, one jitted step each, an optional progress bar.
Wang & Yu's generator attacks and GAP (attacks/generator.py), AdvGAN (attacks/advgan.py) and
the L2L-DA attack's fine-tuning (attacks/l2l_da_attack.py) run their steps through it."""

from __future__ import annotations

import jax
from jax import lax
from tqdm import tqdm

from robustgan import parallel
from robustgan.classifier import Classifier


def fit(step, carry, classifier: Classifier, x, y, rng, *, num_steps: int, batch_size: int,
        mesh=None, progress: bool = False, desc: str = "generator"):
    """Runs `step(carry, classifier, xb, yb, key) -> carry` `num_steps` times, jitted once,
    each time on a minibatch (xb, yb) of `batch_size` rows of (x, y) drawn with replacement,
    with the key of step i `fold_in(rng, i)` (the minibatch from one split of it, `step`'s
    key from the other). mesh: when given, each minibatch is split over its devices.
    Returns the last carry."""

    @jax.jit
    def batch_step(carry, classifier, x, y, key):
        batch_rng, step_rng = jax.random.split(key)
        index = jax.random.randint(batch_rng, (batch_size,), 0, x.shape[0])
        xb, yb = x[index], y[index]
        if mesh is not None:
            xb, yb = lax.with_sharding_constraint((xb, yb), parallel.batch_sharded(mesh))
        return step(carry, classifier, xb, yb, step_rng)

    if mesh is not None:  # restored arrays sit on one device; the batches span the mesh
        carry, classifier, x, y = parallel.replicate((carry, classifier, x, y), mesh)
    for i in tqdm(range(num_steps), disable=not progress, unit="step", desc=desc):
        carry = batch_step(carry, classifier, x, y, jax.random.fold_in(rng, i))
    return carry
