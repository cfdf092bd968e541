"""Results tables in the papers' layout: rows are training runs, columns white-box
attacks then black-box attacks transferred from each surrogate run.

`python -m robustgan.main --config configs/mnist.py:table1 --mode table --workdir DIR`
trains every run it needs under DIR/<run> (or reuses a finished one; a killed one
resumes), evaluates, and writes DIR/table.{md,json,png}.
"""

from __future__ import annotations

import os

import jax

from robustgan import config as configlib
from robustgan import evaluate, parallel, report, train


def run_name(config) -> str:
    """Directory name of a run: method, config options, seed ('pgd_at_cpu_seed1')."""
    return "_".join([config.method, *filter(None, config.options.split(",")),
                     f"seed{config.seed}"])


def _run_config(table, arg: str, seed: int, progress: bool, run_dirs: dict[str, str]):
    config = configlib.load_config_file(f"{table.config_file}:{arg}")
    with config.unlocked():
        config.seed = seed
        config.progress_bar = progress
        if table.eval_num_examples:
            config.eval.num_examples = table.eval_num_examples
        if config.method == "eat" and table.eat_sources:
            missing = [name for name in table.eat_sources if name not in run_dirs]
            if missing:
                raise configlib.ConfigError(
                    f"config.table.eat_sources names {missing}: list those runs before "
                    "the eat row (rows and surrogates train in order)")
            config.eat.sources = tuple(run_dirs[name] for name in table.eat_sources)
    configlib.validate(config)
    return config


def columns_for(eval_config, attacks: tuple[str, ...], surrogates) -> dict[str, evaluate.Column]:
    """'clean', the white-box attacks, then '<attack>(<surrogate>)' for each surrogate."""
    fns = evaluate.white_box_attacks(eval_config)
    unknown = set(attacks) - set(fns)
    if unknown:
        raise configlib.ConfigError(
            f"config.table.attacks has {sorted(unknown)}; available: {sorted(fns)}")
    cols = {"clean": evaluate.Column()}
    cols |= {name: evaluate.Column(fns[name]) for name in attacks}
    for surrogate, *_ in surrogates:
        cols |= {f"{name}({surrogate})": evaluate.Column(fns[name], surrogate) for name in attacks}
    return cols


def train_runs(config, workdir: str):
    """Trains (or reuses, or resumes) every run config.table names, rows then surrogates,
    each in workdir/<run_name>. Returns ({name: (run config, Classifier)}, the dataset)."""
    table = config.table
    os.makedirs(workdir, exist_ok=True)
    trained, run_dirs = {}, {}
    for name, arg, seed in (*table.rows, *table.surrogates):
        run_config = _run_config(table, arg, seed, config.progress_bar, run_dirs)
        run_dir = run_dirs[name] = os.path.join(workdir, run_name(run_config))
        print(f"[table] {name}: {arg} seed {seed} in {run_dir}", flush=True)
        dataset, method, state = train.train(run_config, run_dir)
        trained[name] = (run_config, method.classifier(state))
    return trained, dataset


def run_table(config, workdir: str, output: str = "table") -> dict:
    """Trains or reuses every run of the table, evaluates, and writes the table as
    workdir/<output>.md, .json, .png (and <output>_curves.png)."""
    table = config.table
    trained, dataset = train_runs(config, workdir)
    first_config = trained[table.rows[0][0]][0]
    x, y = evaluate.eval_split(first_config, dataset)
    sources = {name: trained[name][1] for name, *_ in table.surrogates}
    mesh = parallel.make_mesh()
    results = {}
    for name, *_ in table.rows:
        run_config, classifier = trained[name]
        cols = columns_for(run_config.eval, table.attacks, table.surrogates)
        print(f"[table] evaluating {name}", flush=True)
        results[name] = evaluate.accuracy_under_attacks(
            classifier, x, y, cols, sources=sources, batch_size=run_config.eval.batch_size,
            value_range=run_config.data.value_range, mesh=mesh,
            rng=jax.random.key(run_config.seed + 2), progress=config.progress_bar,
        )
    columns = [*cols, "min"]
    measures = {}
    for name, *_ in table.rows:
        run_config, classifier = trained[name]
        if not run_config.eval.measures:
            continue
        row = results[name]
        transfer = [row[c] for c, col in cols.items() if col.source is not None]
        measures[name] = evaluate.protocol_measures(
            run_config, dataset, classifier, mesh, white_box_accuracy=row.get("pgd"),
            transfer_accuracy=min(transfer) if transfer else None)
    paper = {name: dict(zip(columns, table.paper[name], strict=False))
             for name, *_ in table.rows if name in table.paper}
    e = first_config.eval
    notes = (f"{first_config.data.name}, {results[table.rows[0][0]]['num_examples']} test "
             f"images, eps {e.eps:g}; PGD-{e.pgd_steps} step {e.pgd_step_size:g}, random start; "
             f"transfer columns: attack crafted on the surrogate in parentheses. "
             f"Min: correct under every column (per-example worst case).")
    markdown = report.results_table_markdown(table.title, results, columns, paper, notes)
    if measures:
        markdown += "\n" + report.measures_markdown(measures)

    def draw():
        report.table_figure(table.title, results, columns, os.path.join(workdir, f"{output}.png"))
        if measures:
            report.plot_curves(
                {n: (m["pgd_curve"]["eps"], m["pgd_curve"]["accuracy"])
                 for n, m in measures.items()},
                os.path.join(workdir, f"{output}_curves.png"), title=f"{table.title}: PGD")

    report.save_outputs(
        workdir, output, markdown,
        {"title": table.title, "columns": columns, "results": results, "paper": paper,
         "notes": notes, "measures": measures,
         "runs": {n: run_name(c) for n, (c, _) in trained.items()}},
        draw)
    return results
