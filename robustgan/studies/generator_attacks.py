"""Wang & Yu Table 5 (Sec. 4.5): generators trained to attack one fixed, undefended
classifier, evaluated on that classifier (in effect a white-box attack) and on other
models (in effect a black-box one: a trained G never looks at the model it is applied to).

`python -m robustgan.main --config configs/mnist.py:table5 --mode study --workdir DIR`
trains or reuses the classifiers as any table does (table.train_runs: the table's single
row is the target, its surrogates the other models), trains each generator of
config.study.generators against the target on the training split, and writes
DIR/generator_attacks.{md,json,png}: one row per generator after the clean accuracy, one
column per classifier.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from robustgan import data, optim, parallel, report, table
from robustgan.attacks.generator import train_generator_attack
from robustgan.errors import ConfigError
from robustgan.evaluate import protocol
from robustgan.models.generators import get_generator

OUTPUT = "generator_attacks"
CLEAN_ROW = "original accuracy"


def attack_eps(config, target_config) -> float:
    """G's eps in [0, 1] pixel units: config.study.eps, else the target's."""
    return config.study.eps or target_config.eval.eps


def train_attacks(config, target_config, target, dataset, mesh) -> dict:
    """{row label: GeneratorAttack} for config.study.generators, each trained
    against the `target` Classifier on the training split with one key per generator."""
    g = config.study
    x = jnp.asarray(data.scale(dataset.x_train, target_config.data.value_range))
    y = jnp.asarray(dataset.y_train)
    eps = attack_eps(config, target_config)
    attacks = {}
    for i, (label, name, width) in enumerate(g.generators):
        print(f"[generator attacks] training {label} ({name}, k={width or 'default'}) "
              f"for {g.steps} steps", flush=True)
        attacks[label] = train_generator_attack(
            target, get_generator(name, dataset.num_classes, width), x, y,
            jax.random.key(target_config.seed + 100 + i), eps=eps, num_steps=g.steps,
            batch_size=g.batch_size, optimizer=optim.make_optimizer(g.optimizer, g.steps),
            mesh=mesh, progress=config.progress_bar,
        )
    return attacks


def run(config, workdir: str) -> dict:
    """Trains or reuses the classifiers, trains the generator attacks (kept in memory
    only: a second call trains them again), writes the table.
    Returns {row (CLEAN_ROW or a generator label): {classifier name: accuracy}}."""
    rows = config.table.rows
    if len(rows) != 1:
        raise ConfigError(f"a generator-attack table has one target row, got {len(rows)}: "
                          "list the other models as surrogates")
    g = config.study
    for _, name, width in g.generators:  # unknown names and bad widths stop before training
        get_generator(name, 2, width)
    if g.steps < 1 or g.batch_size < 1:
        raise ConfigError("config.study.steps and .batch_size must be at least 1")
    mesh = parallel.make_mesh()
    parallel.check_batch_size(g.batch_size, mesh, "study.batch_size")
    trained, run_dirs, dataset = table.train_runs(config, workdir)
    target_config, target = trained[rows[0][0]]
    attacks = train_attacks(config, target_config, target, dataset, mesh)
    x, y = protocol.eval_split(target_config, dataset)
    cols = {CLEAN_ROW: protocol.Column()} | {
        label: protocol.Column(attack) for label, attack in attacks.items()}
    by_model = {}
    for name, (run_config, classifier) in trained.items():
        print(f"[generator attacks] evaluating on {name}", flush=True)
        by_model[name] = protocol.accuracy_under_attacks(
            classifier, x, y, cols, batch_size=run_config.eval.batch_size,
            value_range=run_config.data.value_range, mesh=mesh,
            rng=jax.random.key(run_config.seed + 2), progress=config.progress_bar)
    models = list(trained)
    results = {row: {m: by_model[m][row] for m in models} for row in cols}
    paper = {row: dict(zip(models, values, strict=False))
             for row, values in config.table.paper}
    notes = (f"{target_config.data.name}, {len(y)} test images, eps "
             f"{attack_eps(config, target_config):g}. Each generator trained against "
             f"{models[0]} for {g.steps} minibatches of {g.batch_size} "
             f"({g.optimizer.name} {g.optimizer.learning_rate:g}); the other columns apply "
             f"the same generator to other models (transfer). Cells: test accuracy.")
    markdown = report.results_table_markdown(config.table.title, results, models, paper,
                                             notes, row_label="generator")
    report.save_outputs(
        workdir, OUTPUT, markdown,
        {"title": config.table.title, "columns": models, "results": results, "paper": paper,
         "notes": notes, "runs": {n: os.path.basename(d) for n, d in run_dirs.items()}},
        lambda: report.table_figure(config.table.title, results, models,
                                    os.path.join(workdir, f"{OUTPUT}.png")))
    return results
