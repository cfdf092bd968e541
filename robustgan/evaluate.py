"""Evaluation protocol: accuracy of a Classifier under a list of attacks.

Every attack sees the same examples; besides each attack's accuracy we report the
per-example worst case ("min": correct only if it survives every attack), which is not
the minimum of the column accuracies.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from robustgan import attacks, data, parallel

AttackFn = Callable  # (classifier, x, y, rng) -> x_adv


@dataclasses.dataclass(frozen=True)
class Column:
    """One evaluation column: images from `attack` (None: the clean images) crafted on the
    classifier named `source` (None: the evaluated classifier itself, i.e. white box;
    otherwise a surrogate, i.e. black box by transfer)."""

    attack: AttackFn | None = None
    source: str | None = None


def white_box_attacks(eval_config) -> dict[str, AttackFn]:
    """FGSM and PGD (L-inf, random start) at the config's eps, as Wang & Yu's Table 1."""
    e = eval_config
    return {
        "fgsm": functools.partial(attacks.fgsm, eps=e.eps),
        "pgd": functools.partial(
            attacks.pgd, eps=e.eps, step_size=e.pgd_step_size, steps=e.pgd_steps,
            restarts=e.pgd_restarts, random_start=True,
        ),
    }


def white_box_columns(eval_config) -> dict[str, Column]:
    """Clean, FGSM and PGD against the evaluated classifier."""
    return {"clean": Column()} | {
        name: Column(fn) for name, fn in white_box_attacks(eval_config).items()
    }


def map_batches(fn, tree, x, y, *, batch_size: int, rng, value_range=None, mesh=None,
                progress: bool = False):
    """Per-example outputs of the jitted `fn(tree, x_batch, y_batch, key)` over (x, y).

    Batches are padded to one shape (`data.eval_batches`), so fn compiles once; only the
    real rows come back, as numpy arrays (a pytree like fn's output). Batch i gets the
    key fold_in(rng, i). x: uint8 pixels scaled by `value_range`, or floats in the data
    range when value_range is None. y may be None (zeros are passed). With a mesh, tree
    is replicated and batches are sharded as in evaluate.py.
    """
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("no examples to evaluate")
    if value_range is not None and x.dtype != np.uint8:
        raise ValueError(
            f"with value_range={tuple(value_range)} x must hold uint8 pixels, got {x.dtype}; "
            "pass value_range=None for float inputs already in the data range"
        )
    y = np.zeros(len(x), np.int32) if y is None else np.asarray(y)
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh)
        tree = parallel.replicate(tree, mesh)
    outputs = []
    batches = tqdm(data.eval_batches(x, y, batch_size), total=-(-len(x) // batch_size),
                   disable=not progress, desc="eval", unit="batch")
    for i, (xb, yb, mask) in enumerate(batches):
        if value_range is not None:
            xb = data.scale(xb, value_range)
        if mesh is not None:
            xb, yb = parallel.shard_batch((xb, yb), mesh)
        out = jax.device_get(fn(tree, xb, yb, jax.random.fold_in(rng, i)))
        outputs.append(jax.tree.map(lambda v, m=mask: np.asarray(v)[m], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def accuracy_under_attacks(
    classifier, x, y, columns: dict[str, Column], *, batch_size: int, value_range, mesh,
    rng, sources=None, progress: bool = True,
) -> dict[str, float]:
    """Accuracy of `classifier` on (x uint8, y) in each column, plus 'min': the fraction
    of examples classified correctly in every column (per-example worst case).

    `sources` maps surrogate names to Classifiers for transfer columns. Batches are
    padded to one shape and masked, and sharded over the mesh.
    """
    sources = sources or {}
    missing = {c.source for c in columns.values() if c.source} - set(sources)
    if missing:
        raise ValueError(f"columns need surrogate classifiers {sorted(missing)}")

    @jax.jit
    def correct(tree, xb, yb, key):
        clf, srcs = tree
        out = {}
        for i, (name, col) in enumerate(columns.items()):
            crafter = clf if col.source is None else srcs[col.source]
            x_in = xb if col.attack is None else col.attack(
                crafter, xb, yb, jax.random.fold_in(key, i))
            out[name] = clf.logits(x_in, key).argmax(-1) == yb
        out["min"] = functools.reduce(jnp.logical_and, out.values())
        return out

    per_example = map_batches(correct, (classifier, sources), x, y, batch_size=batch_size,
                              rng=rng, value_range=value_range, mesh=mesh, progress=progress)
    return {k: float(v.mean()) for k, v in per_example.items()} | {"num_examples": len(y)}


def eval_split(config, dataset):
    """(x, y) of the split config.eval names, cut to config.eval.num_examples if set."""
    e = config.eval
    x, y = (dataset.x_test, dataset.y_test) if e.split == "test" else (dataset.x_val, dataset.y_val)
    if e.num_examples:
        x, y = x[: e.num_examples], y[: e.num_examples]
    return x, y


def evaluate(config, dataset, classifier, mesh) -> dict[str, float]:
    """White-box clean / FGSM / PGD accuracy on the configured split."""
    x, y = eval_split(config, dataset)
    return accuracy_under_attacks(
        classifier, x, y, white_box_columns(config.eval), batch_size=config.eval.batch_size,
        value_range=config.data.value_range, mesh=mesh,
        rng=jax.random.key(config.seed + 2), progress=config.progress_bar,
    )


def protocol_measures(config, dataset, classifier, mesh, *, white_box_accuracy=None,
                      transfer_accuracy=None) -> dict:
    """The rest of the protocol on the first `eval.measure_examples` evaluation images:
    sanity checks (flagged, never hidden), rho_2 / rho_inf (Deep Defense Eq. 7), eps_ref
    and accuracy at 0.2/0.5/1.0 eps_ref, a PGD robustness curve, and, when
    `eval.substitute` names a model, Papernot et al.'s substitute-training black box."""
    from robustgan import blackbox, measures, models

    e = config.eval
    x, y = eval_split(config, dataset)
    x, y = x[: e.measure_examples], y[: e.measure_examples]
    common = dict(batch_size=e.batch_size, value_range=config.data.value_range, mesh=mesh)
    keys = jax.random.split(jax.random.key(config.seed + 3), 6)
    out = {"num_examples": len(y)}
    out["sanity"] = measures.sanity_checks(
        classifier, x, y, eps=e.eps, rng=keys[0], white_box_accuracy=white_box_accuracy,
        transfer_accuracy=transfer_accuracy, **common)
    for key, norm, rng in (("rho_2", "l2", keys[1]), ("rho_inf", "linf", keys[2])):
        out[key] = measures.rho(classifier, x, y, norm, rng=rng, max_iter=e.deepfool_steps,
                                **common)["rho"]
    ref = measures.eps_ref(classifier, x, y, rng=keys[3], **common)
    out["eps_ref"] = ref["eps_ref"]
    out["accuracy_at_eps_ref"] = {str(k): v for k, v in ref.get("accuracy", {}).items()}
    pgd = measures.attack_at_eps("pgd", step_fraction=0.25, steps=e.pgd_steps,
                                 random_start=True)
    eps, acc = measures.robustness_curve(
        classifier, x, y, pgd, [f * e.eps for f in e.curve_eps_fractions], rng=keys[4],
        **common)
    out["pgd_curve"] = {"eps": eps.tolist(), "accuracy": acc.tolist()}
    if e.substitute:
        seed_size = e.substitute_seed_size
        substitute, history = blackbox.train_substitute(
            classifier, x[:seed_size], module=models.get_model(e.substitute, dataset.num_classes),
            x_holdout=x[seed_size:], rounds=e.substitute_rounds,
            epochs_per_round=e.substitute_epochs, rng=keys[5],
            value_range=config.data.value_range)
        out["substitute"] = {
            "model": e.substitute, "agreement_per_round": history["agreement"],
            "fgsm_accuracy": blackbox.substitute_attack_accuracy(
                classifier, substitute, x[seed_size:], y[seed_size:], eps=e.eps,
                rng=keys[5], **common),
        }
    return out
