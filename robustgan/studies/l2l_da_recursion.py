"""Jang et al. (ICCV 2019) Figure 2 and Sec. 4.3: the classification loss of a classifier
along the steps t = 1..T of three attacks, PGD (Eq. 3), L2L's generator and L2L-DA's
recursive generator (Eq. 5), with `samples` attacks per image (PGD: random starts; L2L-DA:
z draws); per step the maximum and the standard deviation of the loss over an image's
attacks, averaged over the images.

`python -m robustgan.main --config configs/mnist.py:l2l_da_figure2_cpu --mode study
--workdir DIR` trains or reuses the table's runs (table.train_runs), takes the generators
of the runs config.study.l2l_row and .l2l_da_row as they were trained (Figure 2(a): not
fine-tuned), attacks the classifiers of config.study.classifiers on the first
config.table.eval_num_examples test images, and writes DIR/l2l_da_recursion.{md,json,png}
(one panel per classifier, one curve per attack, the std as a band under the maximum, as
the paper's lower error bar).

Every attack takes T steps of eps_step = step_fraction * eps (PGD10's eps/4, L2L-DA's
eps_step), eps the classifier's evaluation eps. The paper does not say how its one-shot
L2L makes T steps: here L2L's generator runs in the recursion of Eq. 5 (its inputs x and
the gradient at x_adv^(t)); it has no z, so it gives one attack per image (std 0), as
does PGD with `pgd_random_start` off.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from robustgan import parallel, report, table
from robustgan.attacks import common
from robustgan.attacks.l2l_da_attack import L2LDAAttack
from robustgan.checks import check_at_least, check_range
from robustgan.errors import ConfigError
from robustgan.evaluate import protocol
from robustgan.evaluate.batching import map_batches

OUTPUT = "l2l_da_recursion"


def pgd_losses(classifier, x, y, rng, *, eps, step_size, steps: int, random_start: bool):
    """CE(x^(t), y) at PGD's iterates t = 1..steps, (steps, N): the L-inf steps of
    `attacks.pgd` (sign of the input gradient, step_size, projection onto the eps-ball and
    the data range) from a uniform start in the ball (random_start) or from x. eps,
    step_size: pixel units."""
    scale = common.data_scale(classifier)
    eps_data, step_data = eps * scale, step_size * scale
    start = (common.random_in_ball(rng, x.shape, eps_data, "linf") if random_start
             else jnp.zeros_like(x))

    def step(x_adv, _):
        _, grad, _ = common.loss_and_input_grad(classifier, common.cross_entropy, x_adv, y,
                                                None)
        x_next = common.project_to_threat(
            classifier, x_adv + step_data * common.steepest_step(grad, "linf"), x, eps_data,
            "linf")
        return x_next, common.cross_entropy(common.model_logits(classifier, x_next), y)

    _, losses = lax.scan(step, common.clip_to_bounds(classifier, x + start), None,
                         length=steps, unroll=common.default_unroll(steps))
    return losses


def loss_statistics(losses: jax.Array) -> dict[str, jax.Array]:
    """Per image and step, the maximum and the standard deviation over the attacks:
    losses (attacks, steps, N) -> {'max', 'std'} of shape (N, steps)."""
    return {"max": losses.max(0).T, "std": losses.std(0).T}


def generator_attack(run_dir: str, *, eps: float, step_fraction: float, steps: int,
                     samples: int) -> L2LDAAttack:
    """The generator of the run in `run_dir` (an l2l_da or l2l run:
    protocol.generator_start), as trained, in the recursion of Eq. 5 (`steps` steps of
    step_fraction * eps, eps in pixel units) with `samples` z draws (one if the
    generator takes no z)."""
    start = protocol.generator_start(run_dir)
    return L2LDAAttack(start["module"], start["variables"], eps, step_fraction=step_fraction,
                       steps=steps, samples=start.get("samples", samples))


@functools.partial(jax.jit, static_argnames=("steps", "pgd_samples", "pgd_random_start"))
def _statistics(tree, x, y, key, *, eps, step_size, steps: int, pgd_samples: int,
                pgd_random_start: bool):
    """`loss_statistics` of PGD and of each generator of tree = (classifier, {name:
    L2LDAAttack}) on one batch."""
    classifier, generators = tree
    pgd_key, z_key = jax.random.split(key)
    pgd = functools.partial(pgd_losses, classifier, x, y, eps=eps, step_size=step_size,
                            steps=steps, random_start=pgd_random_start)
    out = {"PGD": loss_statistics(jax.vmap(pgd)(jax.random.split(pgd_key, pgd_samples)))}
    for i, (name, attack) in enumerate(generators.items()):
        draws = attack.draws(jax.random.fold_in(z_key, i), x)
        out[name] = loss_statistics(jax.vmap(
            lambda z, a=attack: a.trajectories(classifier, x, y, z)[1])(draws))
    return out


def loss_curves(classifier, x, y, generators: dict[str, L2LDAAttack], *, eps: float,
                step_fraction: float, steps: int, samples: int, pgd_random_start: bool,
                batch_size: int, value_range, mesh, rng, progress: bool = False) -> dict:
    """{attack: {'max': [steps], 'std': [steps], 'samples': attacks per image}}: the
    image-mean of `loss_statistics` for PGD and each generator on (x uint8, y)."""
    pgd_samples = samples if pgd_random_start else 1
    batch = functools.partial(_statistics, eps=eps, step_size=step_fraction * eps,
                              steps=steps, pgd_samples=pgd_samples,
                              pgd_random_start=pgd_random_start)
    per_image = map_batches(batch, (classifier, generators), x, y, batch_size=batch_size,
                            rng=rng, value_range=value_range, mesh=mesh, progress=progress)
    counts = {"PGD": pgd_samples} | {name: a.samples for name, a in generators.items()}
    return {name: {"max": per_image[name]["max"].mean(0).tolist(),
                   "std": per_image[name]["std"].mean(0).tolist(), "samples": counts[name]}
            for name in counts}


def _check(config) -> None:
    s = config.study
    names = [name for name, *_ in config.table.rows]
    for key, wanted in (("classifiers", tuple(s.classifiers)),
                        ("l2l_row", (s.l2l_row,)), ("l2l_da_row", (s.l2l_da_row,))):
        missing = [name for name in wanted if name not in names]
        if missing:
            raise ConfigError(f"config.study.{key} names {missing}, not rows of the table "
                              f"{names}")
    for key in ("steps", "samples", "batch_size"):
        check_at_least(f"study.{key}", s[key], 1, "at least 1")
    check_range("study.step_fraction", s.step_fraction, 0.0, 1.0)


def run(config, workdir: str) -> dict:
    """Trains or reuses the runs, measures the curves, writes the outputs. Returns
    {classifier: {attack: {'max', 'std', 'samples'}}}."""
    _check(config)
    s = config.study
    mesh = parallel.make_mesh()
    parallel.check_batch_size(s.batch_size, mesh, "study.batch_size")
    trained, run_dirs, dataset = table.train_runs(config, workdir)
    first = trained[s.classifiers[0]][0]  # its eval eps and test images for every attack
    settings = dict(eps=first.eval.eps, step_fraction=s.step_fraction, steps=s.steps)
    generators = {label: generator_attack(run_dirs[row], samples=s.samples, **settings)
                  for label, row in (("L2L", s.l2l_row), ("L2L-DA", s.l2l_da_row))}
    x, y = protocol.eval_split(first, dataset)
    curves = {}
    for name in s.classifiers:
        run_config, classifier = trained[name]
        print(f"[l2l_da recursion] attacking {name} on {len(y)} images", flush=True)
        curves[name] = loss_curves(
            classifier, x, y, generators, samples=s.samples,
            pgd_random_start=s.pgd_random_start, batch_size=s.batch_size,
            value_range=run_config.data.value_range, mesh=mesh,
            rng=jax.random.key(run_config.seed + 3), progress=config.progress_bar,
            **settings)
    notes = (f"{first.data.name}, {len(y)} test images, eps {first.eval.eps:g}, "
             f"{s.steps} steps of {s.step_fraction:g} eps. Cells: the loss (cross-entropy) "
             f"at step t, maximum over each image's attacks (PGD: "
             f"{'random starts' if s.pgd_random_start else 'one start at x'}; L2L-DA: z "
             f"draws; in brackets how many), averaged over the images; in parentheses the "
             f"standard deviation over each image's attacks, averaged likewise. Generators of "
             f"{s.l2l_row} (L2L) and {s.l2l_da_row} (L2L-DA), not fine-tuned.")
    markdown = curves_markdown(config.table.title, curves, notes)
    report.save_outputs(
        workdir, OUTPUT, markdown,
        {"title": config.table.title, "steps": s.steps, "num_examples": len(y),
         "curves": curves, "notes": notes,
         "runs": {n: os.path.basename(d) for n, d in run_dirs.items()}},
        lambda: draw_curves(config.table.title, curves, os.path.join(workdir, f"{OUTPUT}.png")))
    return curves


def curves_markdown(title: str, curves: dict, notes: str) -> str:
    """One row per (classifier, attack), one column per step: 'max (std)'."""
    steps = len(next(iter(next(iter(curves.values())).values()))["max"])
    lines = [f"## {title}\n", notes, "",
             "| classifier | attack | " + " | ".join(f"t={t}" for t in range(1, steps + 1)) + " |",
             "|---|---|" + "---:|" * steps]
    for name, attacks in curves.items():
        for attack, c in attacks.items():
            cells = " | ".join(f"{m:.3f} ({d:.3f})" for m, d in zip(c["max"], c["std"],
                                                                      strict=True))
            lines.append(f"| {name} | {attack} [{c['samples']}] | {cells} |")
    return "\n".join(lines) + "\n"


def draw_curves(title: str, curves: dict, png_path: str) -> None:
    """One panel per classifier: the mean maximum loss per step for each attack, with a
    band down to it minus the mean standard deviation."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(curves), 3.6), dpi=110)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, attacks) in zip(axes, curves.items(), strict=True):
        for attack, c in attacks.items():
            t = np.arange(1, len(c["max"]) + 1)
            top = np.asarray(c["max"])
            line, = ax.plot(t, top, marker="o", markersize=3, label=attack)
            ax.fill_between(t, top - np.asarray(c["std"]), top, color=line.get_color(),
                            alpha=0.2)
        ax.set(title=f"attacks on {name}", xlabel="step t", ylabel="loss (max over attacks)",
               xticks=t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, format="png", bbox_inches="tight")
