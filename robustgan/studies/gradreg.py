"""Exact against finite-difference gradient regularization (Wang & Yu Eqs. 8-9), the study
`python -m robustgan.main --config configs/mnist.py:gradreg_study --mode study` runs:

1. agreement: at the checkpoints of a training run (and at its initialization), the cosine
   similarity and relative error of the finite-difference term
   [grad_theta F(theta, phi + h v) - grad_theta F(theta, phi)] / h against the exact
   H_theta_phi v, for h over several decades, on one fixed minibatch;
2. cost: wall time of one D step (gradient + optimizer update) for none / exact /
   finite_difference, interleaved round by round in one process, with ratios;
3. outcome: the Table-1 columns (white box, transfer from the surrogates) of advnet models
   trained with each mode, via `table.run_table` (finished runs in the workdir are reused,
   so the study can share its workdir with the Table-1 run), plus how much each run's
   adversarial loss oscillated over the second half of training.

Writes gradreg_study.md / .json, gradreg_agreement.png and the outcome table
(gradreg_outcome.md / .json / .png) in the workdir.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time

import jax
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from robustgan import checkpoint, data, game, parallel, report, runs, table, train
from robustgan.errors import ConfigError
from robustgan.methods import advnet

COST_MODES = ("none", "exact", "finite_difference")


@functools.partial(jax.jit, static_argnums=0)
def _exact_and_fd_terms(players: game.Game, theta, phi, stats, x, y, rng, h):
    """The exact H v and the finite-difference term at step h, flattened (compiled once
    per game and shapes, whatever the checkpoint or h)."""
    def flat(gradreg):
        _, term, _ = game.regularizer(players, theta, phi, stats, x, y, rng, gradreg=gradreg,
                                      fd_step=h)
        return ravel_pytree(term)[0]
    return flat("exact"), flat("finite_difference")


def regularizer_agreement(players: game.Game, state, x, y, rng, fd_steps) -> list[dict]:
    """Per h in fd_steps: cosine similarity and relative error ||fd - exact|| / ||exact|| of
    the finite-difference term against the exact H v at the (theta, phi) of an advnet state."""
    stats = (state.d.batch_stats, state.g.batch_stats)
    rows = []
    for h in fd_steps:
        exact, fd = (np.asarray(t, np.float64) for t in _exact_and_fd_terms(
            players, state.d.params, state.g.params, stats, x, y, rng, h))
        norm = np.linalg.norm(exact) + 1e-30
        rows.append({
            "h": float(h),
            "cosine": float(fd @ exact / (np.linalg.norm(fd) * norm + 1e-30)),
            "relative_error": float(np.linalg.norm(fd - exact) / norm),
        })
    return rows


def first_minibatch(run_dir: str):
    """(config, initial state, x, y) of the advnet run in run_dir: its config.json, the
    state it started from, and its first training minibatch (scaled)."""
    config = runs.read_config(run_dir)
    if config.method != "advnet":
        raise ConfigError(f"config.study.agreement_row must name an advnet run; {run_dir} "
                          f"trained {config.method!r}")
    dataset, _, _, initial = train.prepare_run(config, run_dir)
    x, y = next(data.train_batches(dataset, config.batch_size, config.seed, 0))
    return config, jax.device_get(initial), data.scale(x, config.data.value_range), y


def agreement_along_run(run_dir: str, probe, fd_steps) -> dict[int, list[dict]]:
    """{step: regularizer_agreement rows} at initialization and at every kept checkpoint
    of the advnet run in run_dir, all on its first minibatch (probe: `first_minibatch`)."""
    config, initial, x, y = probe
    players, _, _ = advnet.players(config, config.data.num_classes)
    ckpts = checkpoint.Checkpoints(os.path.join(run_dir, runs.CHECKPOINTS), config.keep_checkpoints)
    try:
        states = {0: initial} | {step: ckpts.restore(initial, step) for step in ckpts.steps()}
    finally:
        ckpts.close()
    rng = jax.random.key(config.seed)
    return {step: regularizer_agreement(players, state, x, y, rng, fd_steps)
            for step, state in states.items()}


def d_step_cost(config, x, y, *, steps: int, rounds: int, modes=COST_MODES) -> dict:
    """Median seconds per D step (game.d_gradient + D's optimizer update) for each gradreg
    mode, with the config's players at initialization on the minibatch (x, y); the modes
    run interleaved, round by round, so that load on the machine hits them alike.
    Returns {mode: {"seconds": median, "rounds": [...], "compile_seconds": ...}}."""
    a = config.advnet
    players, d, generator = advnet.players(config, config.data.num_classes)
    d_state = d.init(jax.random.key(0), x[:1])
    g_vars = generator.init({"params": jax.random.key(1), "noise": jax.random.key(2)},
                            x[:1], y[:1], train=False)
    stats = (d_state.batch_stats, g_vars.get("batch_stats", {}))
    h = advnet.fd_step(config)

    def step(mode, theta, opt_state, phi, x, y, key):
        grads, aux = game.d_gradient(players, theta, phi, stats, x, y, key, gradreg=mode,
                                     gamma=a.gamma, fd_step=h)
        updates, opt_state = d.tx.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, aux.metrics["loss"]

    # As training runs it: parameters replicated, the minibatch sharded over the mesh.
    mesh = parallel.make_mesh()
    theta, opt_state, phi = parallel.replicate(
        (d_state.params, d_state.opt_state, g_vars["params"]), mesh)
    x, y = parallel.shard_batch((x, y), mesh)
    key = jax.random.key(3)
    compiled, result = {}, {}
    for mode in modes:
        start = time.perf_counter()
        compiled[mode] = jax.jit(step, static_argnums=0).lower(
            mode, theta, opt_state, phi, x, y, key).compile()
        result[mode] = {"compile_seconds": time.perf_counter() - start, "rounds": []}
        jax.block_until_ready(compiled[mode](theta, opt_state, phi, x, y, key))  # warm-up
    for _ in range(rounds):
        for mode in modes:
            start = time.perf_counter()
            th, st = theta, opt_state
            for i in range(steps):
                th, st, loss = compiled[mode](th, st, phi, x, y, jax.random.fold_in(key, i))
            jax.block_until_ready((th, loss))
            result[mode]["rounds"].append((time.perf_counter() - start) / steps)
    for mode in modes:
        result[mode]["seconds"] = statistics.median(result[mode]["rounds"])
    return result


def oscillation(metrics_path: str, key: str = "adv_loss") -> dict:
    """How much `key` swung over the second half of a run's logged training metrics:
    the mean absolute change between consecutive log points and the standard deviation
    (both in loss units; each log point is a mean over config.log_every steps)."""
    with open(metrics_path) as f:
        values = [row[key] for row in map(json.loads, f) if key in row]
    tail = np.asarray(values[len(values) // 2:], np.float64)
    if tail.size < 2:
        return {"mean_abs_change": float("nan"), "std": float("nan"), "points": int(tail.size)}
    return {"mean_abs_change": float(np.abs(np.diff(tail)).mean()), "std": float(tail.std()),
            "points": int(tail.size)}


def run(config, workdir: str) -> dict:
    """Outcome table, agreement along the chosen run, cost; writes the study files."""
    study = config.study
    outcome = table.run_table(config, workdir, output="gradreg_outcome")
    with open(os.path.join(workdir, "gradreg_outcome.json")) as f:
        saved = json.load(f)
    run_names = saved["runs"]
    row_names = [name for name, *_ in config.table.rows]
    if study.agreement_row not in row_names:
        raise ConfigError(f"config.study.agreement_row={study.agreement_row!r} is not one of "
                          f"the rows {row_names}")
    run_dirs = {name: os.path.join(workdir, run_names[name]) for name in row_names}
    print(f"[study] agreement along {run_dirs[study.agreement_row]}", flush=True)
    probe = first_minibatch(run_dirs[study.agreement_row])
    agreement = agreement_along_run(run_dirs[study.agreement_row], probe, study.fd_steps)
    print("[study] cost per D step", flush=True)
    probe_config, _, x, y = probe
    cost = d_step_cost(probe_config, x, y, steps=study.cost_steps, rounds=study.cost_rounds)
    swings = {name: oscillation(os.path.join(path, "metrics.jsonl"))
              for name, path in run_dirs.items()}
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    results = {"agreement": {str(k): v for k, v in agreement.items()}, "cost": cost,
               "outcome": outcome, "outcome_columns": saved["columns"],
               "oscillation": swings, "device": device,
               "agreement_run": run_names[study.agreement_row]}
    markdown = study_markdown(results)
    report.save_outputs(
        workdir, "gradreg_study", markdown, results,
        lambda: plot_agreement(agreement, os.path.join(workdir, "gradreg_agreement.png")))
    return results


def plot_agreement(agreement: dict[int, list[dict]], png_path: str) -> None:
    """Relative error and cosine similarity of the finite-difference regularizer against
    the exact one, against h (log scale), one line per training step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), dpi=120)
    err_ax, cos_ax = fig.subplots(1, 2)
    for step, rows in agreement.items():
        h = [r["h"] for r in rows]
        err_ax.loglog(h, [max(r["relative_error"], 1e-12) for r in rows], marker="o",
                      markersize=3, label=f"step {step}")
        cos_ax.semilogx(h, [r["cosine"] for r in rows], marker="o", markersize=3)
    err_ax.set(xlabel="h", ylabel="||FD - exact|| / ||exact||",
               title="finite difference vs exact H v")
    cos_ax.set(xlabel="h", ylabel="cosine similarity", ylim=(-1.05, 1.05))
    for ax in (err_ax, cos_ax):
        ax.grid(alpha=0.3)
    err_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, format="png")


def study_markdown(results: dict) -> str:
    """The study as Markdown: agreement, cost, outcome
    with the oscillation of the adversarial loss."""
    agreement = results["agreement"]
    steps = list(agreement)
    hs = [r["h"] for r in agreement[steps[0]]]
    lines = [f"## Exact vs finite-difference gradient regularization ({results['device']})",
             "", f"### Agreement along `{results['agreement_run']}`", "",
             "Relative error ||FD - exact|| / ||exact|| (cosine similarity) of the "
             "finite-difference term against the exact H v, on one minibatch:", "",
             "| step | " + " | ".join(f"h={h:.0e}" for h in hs) + " |",
             "|---|" + "---:|" * len(hs)]
    for step in steps:
        cells = " | ".join(f"{r['relative_error']:.2e} ({r['cosine']:.4f})"
                           for r in agreement[step])
        lines.append(f"| {step} | {cells} |")
    cost = results["cost"]
    lines += ["", "### Cost per D step (interleaved, median)", "",
              "| gradreg | ms / D step | / none | compile s |", "|---|---:|---:|---:|"]
    for mode, c in cost.items():
        lines.append(f"| {mode} | {1e3 * c['seconds']:.1f} | "
                     f"{c['seconds'] / cost['none']['seconds']:.2f} | "
                     f"{c['compile_seconds']:.1f} |")
    if "exact" in cost and "finite_difference" in cost:
        ratio = cost["exact"]["seconds"] / cost["finite_difference"]["seconds"]
        lines.append(f"\nexact / finite_difference = {ratio:.2f}")
    outcome = results["outcome"]
    columns = results["outcome_columns"]
    lines += ["", "### Outcome", "",
              "Accuracy (%) and the oscillation of the adversarial loss over the second half "
              "of training (mean |change| between log points; std):", "",
              report.markdown_table(outcome, columns, "gradreg").rstrip("\n")]
    lines += ["", "| gradreg | adv-loss mean abs change | adv-loss std |", "|---|---:|---:|"]
    for name, swing in results["oscillation"].items():
        lines.append(f"| {name} | {swing['mean_abs_change']:.4f} | {swing['std']:.4f} |")
    return "\n".join(lines) + "\n"

