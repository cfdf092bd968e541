"""The generic training loop: data, mesh, jitted step, checkpoints, metrics, progress.

Method-agnostic: it runs whatever Method config.method names (`runs.build_method`, which
loads the runs the config refers to). Determinism: the batch at global step t and the
step's key `fold_in(key(seed), t)` depend only on (seed, t), so a resumed run replays
exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from robustgan import checkpoint, data, parallel, report, runs
from robustgan.errors import ConfigError, DivergenceError


def prepare_run(config, workdir: str):
    """Loads data and builds the method, mesh and initial state; checks shapes early."""
    dataset = data.load_dataset(config.data)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    method = runs.build_method(config)
    sample = data.scale(dataset.x_train[:1], config.data.value_range)
    # raises ConfigError on a bad image shape
    state = jax.jit(method.init)(runs.init_key(config), sample)
    os.makedirs(workdir, exist_ok=True)
    return dataset, mesh, method, state


class MetricsLog:
    """Training metrics as JSON lines (metrics.jsonl) and TensorBoard event files."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        # In a multi-host run only the first process writes.
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def _truncate_log(path: str, last_step: int) -> None:
    """Drops logged steps after the checkpoint a resumed run restarts from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with open(path, "w") as f:
        f.writelines(rows)


def _flush(pending, log: MetricsLog, batch_size: int, since: float):
    """Fetches the pending steps' metrics, stops on the first non-finite loss, logs means.

    Throughput is timed once the metrics have arrived: steps are dispatched
    asynchronously, so the clock must not stop before they have run.
    """
    host = jax.device_get(pending)
    seconds = time.perf_counter() - since
    for step, metrics in host:
        bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
        if bad:
            raise DivergenceError(
                f"non-finite training metrics at step {step}: {bad}. The last good checkpoint "
                f"is kept; lower the learning rate, add an eps ramp "
                f"(config.train_attack.eps_ramp_steps) or change the seed, then resume."
            )
    last_step = host[-1][0]
    means = {k: float(np.mean([m[k] for _, m in host])) for k in host[0][1]}
    means["images_per_second"] = len(host) * batch_size / max(seconds, 1e-9)
    log.write(last_step, means)
    return means


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def step_on_front_end(train_step, front_end, state, x, y, rng, front_end_variables):
    """train_step on the batch, or with a front end (config.front_end.train) on its image
    of the batch under stop_gradient (Defense-GAN-Rec: the classifier trained on
    reconstructions G(z*(x)), Samangouei et al. Sec. 3.2), drawn with the first half of
    the step's key."""
    if front_end is not None:
        front_rng, rng = jax.random.split(rng)
        x = jax.lax.stop_gradient(front_end(front_end_variables, x, front_rng))
    return train_step(state, x, y, rng)


def train(config, workdir: str):
    """Trains config.method to config.num_train_steps, resuming from workdir if possible.

    Returns (dataset, method, state) with the final state on the host's default device.
    """
    dataset, mesh, method, state = prepare_run(config, workdir)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS),
                                   config.keep_checkpoints)
    start = ckpts.latest_step() or 0
    if start > config.num_train_steps:
        if config.num_train_steps not in ckpts.steps():
            raise ConfigError(
                f"{workdir} has trained to step {start}, past num_train_steps="
                f"{config.num_train_steps}, whose checkpoint was not kept (steps "
                f"{ckpts.steps()}): use another --workdir for the shorter run")
        start = config.num_train_steps
    if start:
        runs.check_same_run(config, workdir)
        state = ckpts.restore(state, start)
        print(f"resumed from step {start} in {ckpts.directory}", flush=True)
    else:
        state = runs.warm_start(method, state, config)
    log_path = os.path.join(workdir, "metrics.jsonl")
    total = config.num_train_steps
    recorded = all(os.path.exists(os.path.join(workdir, f))
                   for f in (runs.CONFIG_FILE, runs.RUN_FILE))
    if jax.process_index() == 0 and (start < total or not recorded):
        # A finished run reused with other evaluation settings keeps the config it trained.
        runs.write_run_files(config, workdir, dataset.image_shape)
        _truncate_log(log_path, start)

    state = parallel.replicate(state, mesh)
    front, front_variables = (runs.front_end(config) if config.front_end.train
                              and start < total else (None, None))
    front_variables = parallel.replicate(front_variables, mesh)
    step_fn = jax.jit(functools.partial(step_on_front_end, method.train_step, front),
                      donate_argnums=0)
    log = MetricsLog(workdir)
    base_key = jax.random.key(config.seed + 1)
    batches = data.train_batches(
        dataset, config.batch_size, config.seed, start,
        pad_crop=config.data.pad_crop, flip=config.data.flip,
    )
    bar = tqdm(total=total, initial=start, disable=not config.progress_bar, unit="step",
               dynamic_ncols=True, desc=config.method)
    pending, tick = [], time.perf_counter()
    try:
        for step in range(start, total):
            x, y = next(batches)
            x, y = parallel.shard_batch((data.scale(x, config.data.value_range), y), mesh)
            state, metrics = step_fn(state, x, y, jax.random.fold_in(base_key, step),
                                     front_variables)
            pending.append((step + 1, metrics))
            done = step + 1
            save = done % config.checkpoint_every == 0 or done == total
            if done % config.log_every == 0 or save:
                means = _flush(pending, log, config.batch_size, tick)
                bar.update(len(pending))
                bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})
                if not config.progress_bar:
                    print(f"step {done}/{total} " +
                          " ".join(f"{k}={v:.4g}" for k, v in means.items()), flush=True)
                pending, tick = [], time.perf_counter()
            if save:
                if not bool(_all_finite(state)):
                    raise DivergenceError(
                        f"the training state became non-finite by step {done}; the last good "
                        f"checkpoint ({ckpts.latest_step()}) is kept. Lower the learning rate "
                        f"or add an eps ramp, then resume."
                    )
                ckpts.save(done, state)
    finally:
        bar.close()
        log.close()
        ckpts.wait()
        ckpts.close()
    if log.enabled:
        report.training_curves(log_path, os.path.join(workdir, "training_curves.png"))
    return dataset, method, jax.device_get(state)


def restore_trained(config, workdir: str):
    """(dataset, method, state) of a finished run in workdir, for --mode eval."""
    dataset, _, method, state = prepare_run(config, workdir)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS),
                                   config.keep_checkpoints)
    try:
        step = ckpts.latest_step()
        if step is None:
            raise ConfigError(f"no checkpoint in {workdir}: train first (--mode train)")
        if step < config.num_train_steps:
            logging.warning("evaluating step %d of %d: training did not finish", step,
                            config.num_train_steps)
        return dataset, method, ckpts.restore(state, step)
    finally:
        ckpts.close()
