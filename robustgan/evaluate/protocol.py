"""Evaluation protocol: accuracy of a Classifier under a list of columns, and the
measures every evaluation reports.

Every column sees the same examples; besides each column's accuracy we report the
per-example worst case ("min": correct only if it survives every column), which is not
the minimum of the column accuracies.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustgan import attacks, data, methods, models, runs
from robustgan.errors import ConfigError
from robustgan.evaluate import blackbox, measures
from robustgan.evaluate.batching import AttackFn, map_batches
from robustgan.evaluate.columns import START, GeneratorColumn
from robustgan.evaluate.columns import white_box as attacks_by_name


@dataclasses.dataclass(frozen=True)
class Column:
    """One evaluation column: images from `attack` (None: the clean images) crafted on the
    classifier named `source` (None: the evaluated classifier itself, i.e. white box;
    otherwise a surrogate, i.e. black box by transfer). A GeneratorColumn is trained
    against that classifier first (`train_generator_columns`)."""

    attack: AttackFn | GeneratorColumn | None = None
    source: str | None = None


def white_box_columns(eval_config, specs=None) -> dict[str, Column]:
    """'clean', then the attack specs (default config.eval.attacks) against the evaluated
    classifier."""
    return {"clean": Column()} | {
        label: Column(fn) for label, fn in attacks_by_name(eval_config, specs).items()}


def transfer_columns(eval_config, specs, surrogates) -> dict[str, Column]:
    """'<label>(<surrogate>)' for each spec and surrogate name: crafted on the surrogate."""
    fns = attacks_by_name(eval_config, specs)
    return {f"{label}({name})": Column(fn, name) for name in surrogates
            for label, fn in fns.items()}


def _column_key(key, columns, name):
    """Column `name`'s key in a batch with key `key`: folded with its position."""
    return jax.random.fold_in(key, list(columns).index(name))


def craft_transfer_examples(columns: dict[str, Column], sources, x, y, *, batch_size: int,
                            value_range, mesh, rng, progress: bool = True) -> dict:
    """{name: examples} of `columns`' transfer columns, crafted on their surrogates in
    `sources`, keyed as accuracy_under_attacks keys its columns. They do not depend on the
    evaluated classifier, so a table crafts them once for all its rows."""
    transfer = {name: c for name, c in columns.items() if c.source is not None}

    @jax.jit
    def craft(srcs, xb, yb, key):
        return {name: xb if c.attack is None else c.attack(
            srcs[c.source], xb, yb, _column_key(key, columns, name))
            for name, c in transfer.items()}

    if not transfer:
        return {}
    examples = map_batches(craft, sources, x, y, batch_size=batch_size, rng=rng,
                           value_range=value_range, mesh=mesh, progress=progress)
    return {name: examples[name] for name in transfer}  # in column order


def accuracy_under_attacks(
    classifier, x, y, columns: dict[str, Column], *, batch_size: int, value_range, mesh,
    rng, sources=None, crafted=None, progress: bool = True,
) -> dict[str, float]:
    """Accuracy of `classifier` on (x uint8, y) in each column, plus 'min': the fraction
    of examples classified correctly in every column (per-example worst case).

    `sources` maps surrogate names to Classifiers for transfer columns; `crafted` holds
    their examples from `craft_transfer_examples` with the same x, y, batch_size and rng
    (crafted here when None). Batches are padded to one shape and masked, and sharded
    over the mesh; the classifier sees batch i with key fold_in(rng, i) in every column.
    Each white-box column compiles on its own: one program holding every column through
    Defense-GAN's unrolled projection crashed XLA:CPU's compiler (docs/defense_gan.md).
    """
    sources = sources or {}
    missing = {c.source for c in columns.values() if c.source} - set(sources)
    if missing:
        raise ValueError(f"columns need surrogate classifiers {sorted(missing)}")
    untrained = [name for name, c in columns.items() if isinstance(c.attack, GeneratorColumn)]
    if untrained:
        raise ValueError(f"generator columns {untrained} are not trained: "
                         "train_generator_columns first")
    batching = dict(batch_size=batch_size, mesh=mesh, rng=rng)
    if crafted is None:
        crafted = craft_transfer_examples(columns, sources, x, y, value_range=value_range,
                                          progress=progress, **batching)
    white_box = {name: c for name, c in columns.items() if c.source is None}

    def correct_in(name: str):
        attack = white_box[name].attack

        @jax.jit
        def correct(clf, xb, yb, key):
            x_in = xb if attack is None else attack(clf, xb, yb, _column_key(key, columns, name))
            return clf.logits(x_in, key).argmax(-1) == yb

        return correct

    per_example = {name: map_batches(correct_in(name), classifier, x, y,
                                     value_range=value_range, progress=progress,
                                     desc=f"eval {name}", **batching)
                   for name in white_box}
    for name in columns:
        if name not in white_box:
            per_example[name] = map_batches(blackbox.predict_batch, classifier, crafted[name],
                                            y, value_range=None, **batching) == np.asarray(y)
    per_example["min"] = functools.reduce(np.logical_and, [per_example[k] for k in columns])
    return {k: float(per_example[k].mean()) for k in [*columns, "min"]} | {
        "num_examples": len(y)}


def generator_start(start: str) -> dict:
    """The keyword arguments a generator column takes from the finished run `start` (its
    method's `MethodSpec.attack_generator`)."""
    run = runs.load_run(start)
    offer = methods.spec(run.config.method).attack_generator
    if offer is None:
        offering = sorted(n for n, s in methods.REGISTRY.items() if s.attack_generator)
        raise ConfigError(f"generator column start={start!r} trained {run.config.method!r}, "
                          f"which offers no generator to start from; name a run of {offering}")
    return offer(run)


def train_generator_columns(columns: dict[str, Column], classifier, dataset, *, value_range,
                            rng, mesh=None, sources=None, run_dirs=None, trained=None,
                            progress: bool = True) -> dict[str, Column]:
    """`columns` with each GeneratorColumn replaced by its trained attack: trained on the
    training split against the classifier the column is crafted on (the evaluated one,
    or for a transfer column its surrogate in `sources`), one key of `rng` per column.
    A column's `start` is a run directory, or a name in `run_dirs` (a table's rows).
    trained: a dict that keeps the transfer columns' attacks, which do not depend on the
    evaluated classifier, for the next call (a table's next row)."""
    sources, run_dirs = sources or {}, run_dirs or {}
    trained = {} if trained is None else trained
    todo = {name: c for name, c in columns.items() if isinstance(c.attack, GeneratorColumn)}
    if not todo:
        return columns
    x = jnp.asarray(data.scale(dataset.x_train, value_range))
    y = jnp.asarray(dataset.y_train)
    out = dict(columns)
    for i, (name, column) in enumerate(columns.items()):
        if name not in todo:
            continue
        if column.source is not None and (name, column) in trained:
            out[name] = trained[name, column]
            continue
        settings = dict(column.attack.settings)
        if START in settings:
            start = settings.pop(START)
            settings = generator_start(run_dirs.get(start, start)) | settings
        crafter = classifier if column.source is None else sources[column.source]
        print(f"[columns] training {name}: {column.attack.name}, {settings['num_steps']} "
              f"steps against {column.source or 'the evaluated classifier'}", flush=True)
        attack = attacks.GENERATOR_ATTACKS[column.attack.name](
            crafter, x=x, y=y, rng=jax.random.fold_in(rng, i), mesh=mesh,
            progress=progress, **settings)
        out[name] = dataclasses.replace(column, attack=attack)
        if column.source is not None:
            trained[name, column] = out[name]
    return out


def eval_split(config, dataset):
    """(x, y) of the split config.eval names, cut to config.eval.num_examples if set."""
    e = config.eval
    x, y = (dataset.x_test, dataset.y_test) if e.split == "test" else (dataset.x_val, dataset.y_val)
    if e.num_examples:
        x, y = x[: e.num_examples], y[: e.num_examples]
    return x, y


def evaluate(config, dataset, classifier, mesh) -> dict[str, float]:
    """White-box accuracy on the configured split: clean and config.eval.attacks."""
    x, y = eval_split(config, dataset)
    columns = train_generator_columns(
        white_box_columns(config.eval), classifier, dataset,
        value_range=config.data.value_range, rng=generator_keys(config), mesh=mesh,
        progress=config.progress_bar)
    return accuracy_under_attacks(
        classifier, x, y, columns, batch_size=config.eval.batch_size,
        value_range=config.data.value_range, mesh=mesh,
        rng=jax.random.key(config.seed + 2), progress=config.progress_bar,
    )


def generator_keys(config) -> jax.Array:
    """The key generator columns are trained with (one fold per column)."""
    return jax.random.key(config.seed + 4)


def protocol_keys(config) -> jax.Array:
    """The measures' keys: sanity checks, rho_2, rho_inf, eps_ref, the PGD curve, and the
    substitute black box."""
    return jax.random.split(jax.random.key(config.seed + 3), 6)


def protocol_measures(config, dataset, classifier, mesh, *, white_box_accuracy=None,
                      transfer_accuracy=None, evaluation_examples=None,
                      reference_eps=None) -> dict:
    """The rest of the protocol on the first `eval.measure_examples` evaluation images:
    sanity checks (flagged, never hidden), rho_2 / rho_inf (Deep Defense Eq. 7), eps_ref
    and accuracy at 0.2/0.5/1.0 eps_ref, and a PGD robustness curve.

    rho_2 / rho_inf come from DeepFool with every iterate clipped to the image range (the
    distance to a valid adversarial image); rho_2_unclipped / rho_inf_unclipped from the
    paper's DeepFool, whose iterates may leave it (larger on robust models). Both run
    `eval.deepfool_steps` steps; beside each rho, '<name>_fooled_fraction' is the
    fraction of images DeepFool fooled (below 1, rho underestimates: the images it did
    not fool count with a perturbation too short to fool them).

    white_box_accuracy / transfer_accuracy: PGD and the lowest transfer accuracy over
    the `evaluation_examples` images they were measured on, for the white-box-not-weaker
    check. reference_eps: (name, eps_ref) of the model whose eps_ref the accuracies at
    0.2/0.5/1.0 eps_ref are measured at (Deep Defense Sec. 4.1 fixes it on one model and
    compares every other at that eps); None: this model's own eps_ref."""
    e = config.eval
    x, y = eval_split(config, dataset)
    x, y = x[: e.measure_examples], y[: e.measure_examples]
    # Batches no larger than the images (rounded up to the mesh): padding costs as much.
    devices = 1 if mesh is None else mesh.devices.size
    batch_size = min(e.batch_size, -(-len(y) // devices) * devices)
    common = dict(batch_size=batch_size, value_range=config.data.value_range, mesh=mesh)
    keys = protocol_keys(config)
    out = {"num_examples": len(y)}
    started = time.perf_counter()

    def progress(stage: str):  # the measures run for minutes per model on a CPU
        print(f"[measures] {stage} on {len(y)} images "
              f"({time.perf_counter() - started:.0f} s in)", flush=True)

    progress("sanity checks")
    out["sanity"] = measures.sanity_checks(
        classifier, x, y, eps=e.eps, rng=keys[0], white_box_accuracy=white_box_accuracy,
        transfer_accuracy=transfer_accuracy, transfer_examples=evaluation_examples, **common)
    out["deepfool_steps"] = e.deepfool_steps
    progress(f"rho_2 and rho_inf ({e.deepfool_steps}-step DeepFool, clipped and not)")
    for name, norm, rng in (("rho_2", "l2", keys[1]), ("rho_inf", "linf", keys[2])):
        for suffix, clip in (("", True), ("_unclipped", False)):
            rho = measures.rho(classifier, x, y, norm, rng=rng, max_iter=e.deepfool_steps,
                               clip=clip, **common)
            out[name + suffix] = rho["rho"]
            out[f"{name}{suffix}_fooled_fraction"] = rho["fooled"]
    progress("eps_ref and the accuracies at its fractions")
    ref = measures.eps_ref(classifier, x, y, rng=keys[3],
                           fractions=() if reference_eps else measures.DEEP_DEFENSE_FRACTIONS,
                           **common)
    out["eps_ref"] = ref["eps_ref"]
    if reference_eps is None:
        out["eps_ref_of"], at_ref = "itself", ref.get("accuracy", {})
    else:
        out["eps_ref_of"], value = reference_eps
        at_ref = {} if value != value else measures.accuracy_at_eps_ref(  # NaN: none found
            classifier, x, y, value, rng=keys[3], **common)
    out["accuracy_at_eps_ref"] = {str(k): v for k, v in at_ref.items()}
    progress("PGD robustness curve")
    pgd = measures.attack_at_eps("pgd", step_fraction=0.25, steps=e.pgd_steps,
                                 random_start=True)
    eps, acc = measures.robustness_curve(
        classifier, x, y, pgd, [f * e.eps for f in e.curve_eps_fractions], rng=keys[4],
        **common)
    out["pgd_curve"] = {"eps": eps.tolist(), "accuracy": acc.tolist()}
    return out


def substitute_black_box(config, dataset, classifier, mesh) -> dict:
    """Papernot et al.'s substitute-training black box, run whenever `eval.substitute`
    names a model (apart from the other measures, which through a purifier cost far
    more): the substitute is trained from the first `eval.substitute_seed_size`
    evaluation images with `classifier` as its labelling oracle (Jacobian augmentation,
    `eval.substitute_rounds` rounds), then FGSM at eval.eps (and at each of
    `eval.substitute_eps`, Defense-GAN's Table 3) crafted on it, on its own predicted
    labels as CleverHans and Defense-GAN's code, is tested on the next images up to
    `eval.measure_examples`."""
    e = config.eval
    x, y = eval_split(config, dataset)
    x, y = x[: e.measure_examples], y[: e.measure_examples]
    seed_size = e.substitute_seed_size
    if len(y) <= seed_size:
        raise ConfigError(f"eval.measure_examples={e.measure_examples} leaves no test image "
                          f"after the substitute's {seed_size} seed images")
    print(f"[substitute] training {e.substitute} from {seed_size} images, then FGSM on "
          f"{len(y) - seed_size}", flush=True)
    rng = protocol_keys(config)[5]
    substitute, history = blackbox.train_substitute(
        classifier, x[:seed_size], module=models.get_model(e.substitute, dataset.num_classes),
        x_holdout=x[seed_size:], rounds=e.substitute_rounds,
        epochs_per_round=e.substitute_epochs, rng=rng, value_range=config.data.value_range)
    accuracy = {eps: blackbox.substitute_attack_accuracy(
        classifier, substitute, x[seed_size:], y[seed_size:], eps=eps, rng=rng,
        predicted_labels=True, batch_size=e.batch_size, value_range=config.data.value_range,
        mesh=mesh) for eps in (e.eps, *e.substitute_eps)}
    return {"model": e.substitute, "agreement_per_round": history["agreement"],
            "fgsm_accuracy": accuracy.pop(e.eps),
            "fgsm_accuracy_at": {f"{eps:g}": value for eps, value in accuracy.items()},
            "seed_examples": seed_size, "num_examples": len(y) - seed_size}


def substitute_columns(substitute: dict) -> dict[str, float]:
    """The table columns of `substitute_black_box`'s result: 'substitute' (FGSM at
    eval.eps), then 'substitute eps=<eps>' for each of eval.substitute_eps."""
    return {"substitute": substitute["fgsm_accuracy"],
            **{f"substitute eps={eps}": value
               for eps, value in substitute["fgsm_accuracy_at"].items()}}
