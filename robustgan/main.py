"""Command line: `python -m robustgan.main --config configs/<dataset>.py[:<method>] --workdir DIR`.

Modes: `train` (default: train, then evaluate) and `eval` (evaluate the newest
checkpoint in --workdir). Override any config key with `--config.key=value`; unknown
keys and bad values stop before data are loaded or anything is compiled.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from robustgan import config as configlib
from robustgan.errors import RobustGANError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py:pgd_at")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (then evaluate) or eval.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str) -> dict:
    """Trains and/or evaluates as `mode` says; writes and returns the results."""
    import jax

    from robustgan import evaluate, parallel, report, train

    configlib.validate(config)
    parallel.initialize()
    if mode == "train":
        dataset, method, state = train.train(config, workdir)
    else:
        dataset, method, state = train.restore_trained(config, workdir)
    mesh = parallel.make_mesh()
    results = evaluate.evaluate(config, dataset, method.classifier(state), mesh)
    context = {
        "method": config.method, "data": f"{config.data.source}:{config.data.name}",
        "model": config.model.name, "train_steps": config.num_train_steps,
        "eval": f"{config.eval.split} split, {results['num_examples']} examples, "
                f"eps {config.eval.eps}, PGD-{config.eval.pgd_steps} step "
                f"{config.eval.pgd_step_size} x{config.eval.pgd_restarts} restarts",
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    table = report.write_results(workdir, f"{config.data.name}/{config.method}", results, context)
    print(table, flush=True)
    return results


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
    logging.set_verbosity(logging.INFO)
    try:
        run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except RobustGANError as e:
        sys.exit(f"robustgan: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
