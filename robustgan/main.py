"""Command line: `python -m robustgan.main --config configs/<dataset>.py[:<method>] --workdir DIR`.

Modes: `train` (default: train, then evaluate), `eval` (evaluate the newest
checkpoint in --workdir), `table` (a table config such as configs/mnist.py:table1:
train or reuse every run it names under --workdir, then write the table) and `study` (a
study config such as configs/mnist.py:gradreg_study, dispatched by name to
robustgan/studies/; `--mode table` runs a study config too). `--mode train` on a table or
study config trains its runs and stops; with `--config.table.train_runs='("name",)'` those
runs alone, so that a table's runs can train on several machines at once.
Override any config key with `--config.key=value`; unknown keys and bad values stop
before data are loaded or anything is compiled.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from robustgan import config as configlib
from robustgan.errors import ConfigError, RobustGANError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mnist.py:pgd_at"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "table", "study"],
    "train (then evaluate), eval (the newest checkpoint), table (a table config: train or "
    "reuse its runs, then build the table), or study (a study config)."
)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str) -> dict:
    """Trains and/or evaluates as `mode` says; writes and returns the results."""
    import jax

    from robustgan import parallel, report, runs, studies, table, train
    from robustgan.evaluate import protocol

    kind = "study" if "study" in config else "table" if "table" in config else "run"
    allowed = {"run": ("train", "eval"), "table": ("table", "train"),
               "study": ("study", "table", "train")}
    if mode not in allowed[kind]:
        wanted = "run" if mode in ("train", "eval") else mode
        example = {"run": "pgd_at", "table": "table1", "study": "gradreg_study"}[wanted]
        raise ConfigError(
            f"--mode {mode} needs a {wanted} config (e.g. configs/mnist.py:{example}); "
            f"this is a {kind} config: run it with --mode {allowed[kind][0]}")
    parallel.initialize()
    if kind != "run" and mode == "train":
        trained, run_dirs, _ = table.train_runs(config, workdir, config.table.train_runs)
        for name in trained:
            print(f"[table] {name} trained in {run_dirs[name]}", flush=True)
        return {}
    if kind == "study":
        return studies.run(config, workdir)
    if kind == "table":
        return table.run_table(config, workdir, config.table.output)
    configlib.validate(config)
    if mode == "train":
        dataset, method, state = train.train(config, workdir)
    else:
        dataset, method, state = train.restore_trained(config, workdir)
    classifier = runs.evaluated_classifier(config, method, state)
    if classifier is None:
        print(f"{config.method} trains no classifier: nothing to evaluate; its networks "
              f"({', '.join(method.networks)}) are in {workdir}", flush=True)
        return {}
    mesh = parallel.make_mesh()
    results = protocol.evaluate(config, dataset, classifier, mesh)
    measures = substitute = None
    if config.eval.measures:
        measures = protocol.protocol_measures(config, dataset, classifier, mesh)
    if config.eval.substitute:
        substitute = protocol.substitute_black_box(config, dataset, classifier, mesh)
        results |= protocol.substitute_columns(substitute)
    context = {
        "method": config.method, "data": f"{config.data.source}:{config.data.name}",
        "model": config.model.name, "train_steps": config.num_train_steps,
        "eval": f"{config.eval.split} split, {results['num_examples']} examples, "
                f"eps {config.eval.eps}, columns {', '.join(config.eval.attacks)}; PGD-"
                f"{config.eval.pgd_steps} step {config.eval.pgd_step_size} "
                f"x{config.eval.pgd_restarts} restarts",
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    if config.front_end.run:
        context["front_end"] = (f"{config.front_end.run}"
                                f"{' (also trained on)' if config.front_end.train else ''}")
    if jax.process_index() == 0:
        name = f"{config.data.name}/{config.method}"
        print(report.write_results(workdir, name, results, context, measures, substitute),
              flush=True)
    return results


def compilation_cache_dir(environ) -> str | None:
    """Where the command line keeps XLA's persistent compilation cache: a table compiles
    the same attack again for every row, and a resumed run everything again (minutes
    through an unrolled projection). ROBUSTGAN_JAX_CACHE names the folder ('' turns the
    cache off; default ~/.cache/robustgan/jax); None also when JAX_COMPILATION_CACHE_DIR
    is set, which JAX reads itself."""
    if "JAX_COMPILATION_CACHE_DIR" in environ:
        return None
    folder = environ.get("ROBUSTGAN_JAX_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "robustgan", "jax"))
    return folder or None


def _parse_flags(argv):
    try:
        configlib.check_overrides(argv)
        return flags.FLAGS(argv)
    except RobustGANError as e:
        sys.exit(f"robustgan: {e}")
    except flags.Error as e:
        sys.exit(f"robustgan: {e}\nPass --helpshort for the flags.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Orbax and XLA log every save and start-up detail at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
    cache = compilation_cache_dir(os.environ)
    if cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
    try:
        run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except RobustGANError as e:
        sys.exit(f"robustgan: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
