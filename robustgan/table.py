"""Results tables in the papers' layout: rows are training runs, columns white-box
attacks then black-box attacks transferred from each surrogate run.

`python -m robustgan.main --config configs/mnist.py:table1 --mode table --workdir DIR`
trains every run it needs under DIR/<run> (or reuses a finished one; a killed one
resumes), evaluates, and writes DIR/table.{md,json,png}.

A row or surrogate is (name, config argument, seed, overrides). Overrides that change
only evaluation settings (`config.resumable_keys`) leave the run directory as it is, so
rows may share one trained run and differ in how it is evaluated. A run reference in a
run's config (`config.reference_keys`) may name an earlier run of the table. A row whose
method trains no classifier is trained and not evaluated.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import jax

from robustgan import config as configlib
from robustgan import parallel, report, runs, train
from robustgan.errors import ConfigError
from robustgan.evaluate import protocol


def run_name(config, overrides=(), steps_by_dir=None) -> str:
    """Directory name of a run: method, config options, seed ('pgd_at_cpu_seed1'), and a
    digest of the overrides that change what it trains, if any. A run that would share
    its directory with an earlier run of the table (steps_by_dir: name -> its
    num_train_steps, updated here) trained to another length gets '_steps<N>': a row
    at equal wall time beside one at equal updates."""
    resumable = configlib.resumable_keys(config)
    trained = sorted((k, v) for k, v in overrides if not configlib.is_resumable(k, resumable))
    parts = [config.method, *filter(None, config.options.split(",")), f"seed{config.seed}"]
    if trained:
        parts.append(hashlib.sha1(json.dumps(trained).encode()).hexdigest()[:8])
    name = "_".join(parts)
    if steps_by_dir is None:
        return name
    if steps_by_dir.setdefault(name, config.num_train_steps) != config.num_train_steps:
        name = f"{name}_steps{config.num_train_steps}"
        steps_by_dir[name] = config.num_train_steps
    return name


def table_run_config(table, run, progress: bool, run_dirs: dict[str, str]):
    """The config of one table run (name, arg, seed, overrides), its run references to
    earlier runs of the table resolved to their directories (`run_dirs`)."""
    name, arg, seed, overrides = run
    config = configlib.load_config_file(f"{table.config_file}:{arg}")
    with config.unlocked():
        config.seed = seed
        config.progress_bar = progress
        if table.eval_num_examples:
            config.eval.num_examples = table.eval_num_examples
        for key, value in overrides:
            parent, _, leaf = key.rpartition(".")
            node = configlib.get(config, parent) if parent else config
            if leaf not in node:
                raise ConfigError(f"table run {name!r} overrides {key!r}, which its config "
                                  "does not have")
            node[leaf] = value
    names = {r[0] for r in (*table.rows, *table.surrogates)}
    for key, refs in runs.references(config).items():
        later = [ref for ref in refs if ref in names and ref not in run_dirs]
        if later:
            raise ConfigError(f"table run {name!r}: config.{key} names {later}; list those "
                              "runs before it (rows, then surrogates, train in order)")
    config = runs.resolve(config, run_dirs)
    configlib.validate(config)
    return config


def train_runs(config, workdir: str, only=()):
    """Trains (or reuses, or resumes) every run config.table names, rows then surrogates,
    each in workdir/<run_name>; `only` (names) trains those runs alone, the runs they
    reference already trained (by another process: a table's runs spread over
    machines). Returns ({name: (run config, Classifier or None)}, {name: run
    directory}, the dataset)."""
    table = config.table
    names = [run[0] for run in (*table.rows, *table.surrogates)]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise ConfigError(f"table.train_runs or score_rows names {unknown}, not runs of "
                          f"the table ({names})")
    os.makedirs(workdir, exist_ok=True)
    trained, run_dirs, dataset, steps_by_dir = {}, {}, None, {}
    for run in (*table.rows, *table.surrogates):
        name, arg, seed, overrides = run
        run_config = table_run_config(table, run, config.progress_bar, run_dirs)
        run_dir = run_dirs[name] = os.path.join(
            workdir, run_name(run_config, overrides, steps_by_dir))
        if only and name not in only:
            continue
        print(f"[table] {name}: {arg} seed {seed} in {run_dir}", flush=True)
        dataset, method, state = train.train(run_config, run_dir)
        trained[name] = (run_config, runs.evaluated_classifier(run_config, method, state))
    return trained, run_dirs, dataset


class RowResults:
    """Each evaluated row's results, kept in workdir/<output>.partial.json as they are
    computed, so that a table stopped part-way (a long evaluation through a purifier)
    starts again from its next row. A row's saved results are reused only under the
    same key (`row_key`: its full run config, the table's columns and surrogates); the
    file is removed once the table is written."""

    def __init__(self, path: str):
        self.path = path
        self.saved = {}
        if os.path.exists(path):
            with open(path) as f:
                self.saved = json.load(f)

    def get(self, name: str, key: str):
        entry = self.saved.get(name)
        if entry is None or entry["key"] != key:
            return None
        print(f"[table] {name}: results of an interrupted evaluation reused ({self.path})",
              flush=True)
        return entry["results"]

    def put(self, name: str, key: str, results) -> None:
        if os.path.exists(self.path):  # rows another process scored (table.score_rows)
            with open(self.path) as f:
                self.saved = json.load(f) | self.saved
        self.saved[name] = {"key": key, "results": copy.deepcopy(results)}
        if jax.process_index() == 0:
            with open(self.path + ".tmp", "w") as f:
                json.dump(self.saved, f, indent=2)
            os.replace(self.path + ".tmp", self.path)

    def reuse_or(self, name: str, key: str, compute, *args, **kwargs):
        """The results saved under (name, key), else compute(*args, **kwargs) saved there."""
        results = self.get(name, key)
        if results is None:
            results = compute(*args, **kwargs)
            self.put(name, key, results)
        return results

    def done(self) -> None:
        if jax.process_index() == 0 and os.path.exists(self.path):
            os.remove(self.path)


# Run config keys that change how a run is kept and shown, not what it scores.
BOOKKEEPING_KEYS = ("checkpoint_every", "keep_checkpoints", "log_every", "progress_bar")


def row_key(table, run_config, run_dirs: dict[str, str]) -> str:
    """What a row's results depend on besides the code: its run config (run references
    resolved to directories, evaluation settings included, BOOKKEEPING_KEYS left out),
    the columns and the surrogates' runs."""
    config = {k: v for k, v in run_config.to_dict().items() if k not in BOOKKEEPING_KEYS}
    key = {"config": json.dumps(config, sort_keys=True, default=str),
           "attacks": list(table.attacks),
           "surrogates": [run_dirs[name] for name, *_ in table.surrogates]}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def run_table(config, workdir: str, output: str = "table") -> dict:
    """Trains or reuses every run of the table, evaluates, and writes the table as
    workdir/<output>.md, .json, .png (and <output>_curves.png). A row's results are
    saved as soon as they are computed (`RowResults`): run the same command again after
    a stop and the evaluation resumes from the next row."""
    table = config.table
    rows = [name for name, *_ in table.rows]
    surrogates = [name for name, *_ in table.surrogates]
    outside = [name for name in table.score_rows if name not in rows]
    if outside:
        raise ConfigError(f"table.score_rows names {outside}, not rows of the table ({rows})")
    only = (*table.score_rows, *surrogates) if table.score_rows else ()
    trained, run_dirs, dataset = train_runs(config, workdir, only)
    saved = RowResults(os.path.join(workdir, f"{output}.partial.json"))
    evaluated = [name for name in rows if name in trained and trained[name][1] is not None]
    if not evaluated:
        raise ConfigError("no row of the table trains a classifier: nothing to evaluate")
    first_config = trained[evaluated[0]][0]
    x, y = protocol.eval_split(first_config, dataset)
    sources = {name: trained[name][1] for name in surrogates}
    mesh = parallel.make_mesh()
    # Transfer columns' examples do not depend on the evaluated row: crafted once for the
    # rows in a run that share the setting they are crafted under (seed, evaluation
    # settings, data range); only the latest setting's are kept (memory).
    results, transfer_generators = {}, {}
    crafted_setting, crafted = None, None
    for name in evaluated:
        run_config, classifier = trained[name]
        cols = protocol.white_box_columns(run_config.eval, table.attacks)
        cols |= protocol.transfer_columns(run_config.eval, table.attacks, surrogates)
        key = row_key(table, run_config, run_dirs)
        results[name] = saved.get(name, key)
        if results[name] is not None:
            continue
        print(f"[table] evaluating {name}", flush=True)
        trained_cols = protocol.train_generator_columns(
            cols, classifier, dataset, value_range=run_config.data.value_range,
            rng=protocol.generator_keys(run_config), mesh=mesh, sources=sources,
            run_dirs=run_dirs, trained=transfer_generators, progress=config.progress_bar)
        batching = dict(batch_size=run_config.eval.batch_size,
                        value_range=run_config.data.value_range, mesh=mesh,
                        rng=jax.random.key(run_config.seed + 2), progress=config.progress_bar)
        setting = json.dumps([run_config.seed, run_config.eval.to_dict(),
                              list(run_config.data.value_range)], sort_keys=True)
        if setting != crafted_setting:
            crafted_setting, crafted = setting, protocol.craft_transfer_examples(
                trained_cols, sources, x, y, **batching)
        results[name] = protocol.accuracy_under_attacks(
            classifier, x, y, trained_cols, sources=sources, crafted=crafted,
            **batching)
        saved.put(name, key, results[name])
    columns = [*cols, "min"]
    substitutes = {}
    for name in evaluated:
        run_config, classifier = trained[name]
        if not run_config.eval.substitute:
            continue
        key = row_key(table, run_config, run_dirs)
        substitutes[name] = saved.reuse_or(f"{name} (substitute)", key,
                                           protocol.substitute_black_box, run_config,
                                           dataset, classifier, mesh)
    for name, substitute in substitutes.items():
        substitute_columns = protocol.substitute_columns(substitute)
        results[name] |= substitute_columns
        columns += [c for c in substitute_columns if c not in columns]
    if table.score_rows:
        print(f"[table] rows {list(table.score_rows)} scored into {saved.path}; --mode table "
              "without score_rows writes the table", flush=True)
        return results
    measures = table_measures(table, trained, evaluated, results, cols, dataset, mesh,
                              saved, run_dirs)
    paper = {name: dict(zip(columns, values, strict=False))
             for name, values in table.paper if name in evaluated}
    e = first_config.eval
    notes = (f"{first_config.data.name}, {results[evaluated[0]]['num_examples']} test "
             f"images, eps {e.eps:g}; PGD-{e.pgd_steps} step {e.pgd_step_size:g}, random start; "
             f"transfer columns: attack crafted on the surrogate in parentheses. "
             f"Min: correct under every column (per-example worst case).")
    if substitutes:
        notes += " " + report.substitute_note(substitutes) + " Min leaves it out."
    markdown = report.results_table_markdown(table.title, results, columns, paper, notes)
    if measures:
        markdown += "\n" + report.measures_markdown(measures)

    def draw():
        report.table_figure(table.title, results, columns, os.path.join(workdir, f"{output}.png"))
        if table.sweeps:
            report.sweep_figure(table.title, results, columns, table.sweeps,
                                os.path.join(workdir, f"{output}_sweeps.png"))
        if measures:
            report.plot_curves(
                {n: (m["pgd_curve"]["eps"], m["pgd_curve"]["accuracy"])
                 for n, m in measures.items()},
                os.path.join(workdir, f"{output}_curves.png"), title=f"{table.title}: PGD")

    report.save_outputs(
        workdir, output, markdown,
        {"title": table.title, "columns": columns, "results": results, "paper": paper,
         "notes": notes, "measures": measures, "substitutes": substitutes,
         "runs": {n: os.path.basename(d) for n, d in run_dirs.items()}},
        draw)
    saved.done()
    return results


def table_measures(table, trained, evaluated, results, cols, dataset, mesh, saved,
                   run_dirs) -> dict:
    """Protocol measures of every evaluated row whose config asks for them. Accuracy at
    0.2/0.5/1.0 eps_ref is at the eps_ref of table.eps_ref_row (default the first row),
    as Deep Defense compares models; white box against transfer is judged over the
    evaluation split's size. Each row's measures are kept in `saved` (RowResults) under
    its row key and the reference's eps_ref, as its results are."""
    wanted = [name for name in evaluated if trained[name][0].eval.measures]
    reference = table.eps_ref_row or evaluated[0]
    if reference not in evaluated:
        raise ConfigError(f"config.table.eps_ref_row={reference!r} trains no classifier")
    order = sorted(wanted, key=lambda name: name != reference)  # the reference first
    measures, eps_ref = {}, None
    for name in order:
        run_config, classifier = trained[name]
        row = results[name]
        transfer = [row[c] for c, col in cols.items() if col.source is not None]
        reference_eps = None if eps_ref is None else (reference, eps_ref)
        key = row_key(table, run_config, run_dirs) + json.dumps(reference_eps, default=float)
        measures[name] = saved.reuse_or(
            f"{name} (measures)", key, protocol.protocol_measures, run_config, dataset,
            classifier, mesh, white_box_accuracy=row.get("pgd"),
            transfer_accuracy=min(transfer) if transfer else None,
            evaluation_examples=row["num_examples"], reference_eps=reference_eps)
        if name == reference:
            eps_ref = measures[name]["eps_ref"]
    return {name: measures[name] for name in wanted}
