"""Samangouei et al., "Defense-GAN" (ICLR 2018) Sec. 4.1.3 and Figures 4-5: detecting
attacks by the projection's reconstruction error, and clean test images beside their
reconstructions.

Eq. 9 flags an image x as attacked when ||G(z*) - x||_2^2 >= theta. The score here is the
projection's per-image mean squared error in [0, 1] pixel units (`attacks.projection`):
the squared norm over the pixel count, so the same ranking and the same ROC curve. The
clean evaluation images and their FGSM versions are scored with the same random starts
per image; adversarial images are the positives: the true positive rate is the fraction
of them flagged, the false positive rate that of clean images (scikit-learn's
`roc_curve` and `roc_auc_score`).

`python -m robustgan.main --config configs/mnist.py:defense_gan_detection_cpu --mode study
--workdir DIR` trains or reuses the table's runs (table.train_runs): a GAN row and one
classifier row behind its projection (the row's `front_end.run` names the GAN row). FGSM
is crafted on that classifier undefended, as in the white-box setting (the paper's
figures craft it on substitute E for classifier F). The projection's settings are the
row's config.defense_gan.projection, with L (steps) and R (restarts) replaced per sweep
point. As the figures' panels: L over config.study.steps and R over
config.study.restarts at the row's eps (config.eval.eps), and eps over config.study.eps
at the row's L and R. Writes DIR/defense_gan_detection.{md,json,png} (AUCs; AUCs and ROC
points; one ROC panel per sweep) and DIR/defense_gan_detection_reconstructions.png: the
first config.study.grid_images clean evaluation images above their reconstructions G(z*)
at the row's L and R, each with its mean squared error (also in the JSON).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from robustgan import data, parallel, report, runs, table
from robustgan.attacks import fgsm, projection
from robustgan.checks import check_at_least
from robustgan.errors import ConfigError
from robustgan.evaluate import protocol
from robustgan.evaluate.batching import map_batches

OUTPUT = "defense_gan_detection"
GRID_OUTPUT = f"{OUTPUT}_reconstructions"


def reconstruction_errors(front: projection.ProjectionFrontEnd, variables, x, rng):
    """Eq. 9's score of each image of x: the mean squared error of its projection G(z*)
    through `front` (pixel units)."""
    return projection.mean_squared_error(front(variables, x, rng), x, front.data_scale)


def detection_errors(front: projection.ProjectionFrontEnd, variables, classifier, x, y, *,
                     eps_values, batch_size: int, rng, value_range=None, mesh=None,
                     progress: bool = False) -> dict:
    """{'clean': the scores of x, eps: the scores of FGSM(classifier, x, y, eps) for each
    eps of eps_values} (numpy, one per image). An image and its adversarial versions get
    the same random starts (batch i: fold_in(rng, i)), so only the perturbation differs.
    x: uint8 pixels with value_range, or floats in the data range (value_range None)."""

    @jax.jit
    def scores(tree, xb, yb, key):
        clf, v = tree
        adversarial = [reconstruction_errors(front, v, fgsm(clf, xb, yb, eps=eps), key)
                       for eps in eps_values]
        return {"clean": reconstruction_errors(front, v, xb, key),
                "adversarial": jnp.stack(adversarial, axis=1)}

    out = map_batches(scores, (classifier, variables), x, y, batch_size=batch_size, rng=rng,
                      value_range=value_range, mesh=mesh, progress=progress)
    return {"clean": out["clean"]} | {
        eps: out["adversarial"][:, i] for i, eps in enumerate(eps_values)}


def roc(clean_errors, adversarial_errors) -> dict:
    """Eq. 9's test at every threshold theta, adversarial images the positives: the AUC
    and the ROC points (false positive rate on the clean images, true positive rate on
    the adversarial ones)."""
    from sklearn.metrics import roc_auc_score, roc_curve  # lazy: a seconds-long import

    labels = np.concatenate([np.zeros(len(clean_errors)), np.ones(len(adversarial_errors))])
    scores = np.concatenate([clean_errors, adversarial_errors])
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)), "fpr": fpr.tolist(),
            "tpr": tpr.tolist()}


def reconstructions(front: projection.ProjectionFrontEnd, variables, x, *, batch_size: int,
                    rng, value_range=None, mesh=None) -> dict:
    """{'reconstruction': G(z*) of each image of x, 'error': its mean squared error}
    (numpy), with the starts `detection_errors` draws for the same batches."""

    @jax.jit
    def project(v, xb, yb, key):
        reconstruction = front(v, xb, key)
        return {"reconstruction": reconstruction,
                "error": projection.mean_squared_error(reconstruction, xb, front.data_scale)}

    return map_batches(project, variables, x, None, batch_size=batch_size, rng=rng,
                       value_range=value_range, mesh=mesh)


def sweep_points(study, *, steps: int, restarts: int, eps: float) -> dict[str, list[tuple]]:
    """{sweep: [(L, R, eps), ...]} for the non-empty sweeps of config.study: 'L' at
    (R=restarts, eps), 'R' at (L=steps, eps), 'eps' at (steps, restarts)."""
    sweeps = {"L": [(int(s), restarts, eps) for s in study.steps],
              "R": [(steps, int(r), eps) for r in study.restarts],
              "eps": [(steps, restarts, float(e)) for e in study.eps]}
    return {name: points for name, points in sweeps.items() if points}


def check_study(config) -> tuple[str, str]:
    """Stops a bad config.study or layout before training. Returns (the classifier row
    behind the GAN, the GAN row its front_end.run names)."""
    s = config.study
    if not (s.steps or s.restarts or s.eps):
        raise ConfigError("config.study.steps, .restarts and .eps are all empty: nothing "
                          "to sweep")
    for key in ("steps", "restarts"):
        for value in s[key]:
            check_at_least(f"study.{key}", value, 1, "at least 1 (a list of values)")
    for value in s.eps:
        if not 0 < value <= 1:
            raise ConfigError(f"config.study.eps holds {value!r}: eps values are in (0, 1] "
                              "pixel units")
    check_at_least("study.grid_images", s.grid_images, 1, "at least 1")
    rows = [name for name, *_ in config.table.rows]
    defended = [(name, dict(overrides)["front_end.run"])
                for name, _, _, overrides in config.table.rows
                if dict(overrides).get("front_end.run")]
    if len(defended) != 1:
        raise ConfigError(
            f"the detection study scores one classifier row behind a GAN row's projection "
            f"(overrides {{'front_end.run': <the GAN row>}}); rows {rows} have "
            f"{len(defended)} such rows")
    row, gan = defended[0]
    if gan not in rows:
        raise ConfigError(f"row {row!r} has front_end.run={gan!r}, which is no row of the "
                          f"table {rows}: list the defense_gan run as a row before it")
    return row, gan


def run(config, workdir: str) -> dict:
    """Trains or reuses the GAN and classifier runs, scores clean and FGSM images at every
    sweep point, projects the grid's images; writes the outputs. Returns the JSON record."""
    row, gan = check_study(config)
    trained, run_dirs, dataset = table.train_runs(config, workdir)
    row_config = trained[row][0]
    front, variables = runs.front_end(row_config)
    if not isinstance(front, projection.ProjectionFrontEnd):
        raise ConfigError(f"row {gan!r} offers {type(front).__name__}, not Defense-GAN's "
                          "projection: name a defense_gan run")
    clf_run = runs.load_run(run_dirs[row])
    classifier = clf_run.method.classifier(clf_run.state)  # undefended: FGSM's target
    p = row_config.defense_gan.projection
    sweeps = sweep_points(config.study, steps=p.steps, restarts=p.restarts,
                          eps=row_config.eval.eps)
    x, y = protocol.eval_split(row_config, dataset)
    common = dict(batch_size=row_config.eval.batch_size, rng=jax.random.key(row_config.seed + 2),
                  value_range=row_config.data.value_range, mesh=parallel.make_mesh())
    eps_at = {}  # (L, R) -> the eps its points need: one pass over the images each
    for points in sweeps.values():
        for steps, restarts, eps in points:
            eps_at.setdefault((steps, restarts), set()).add(eps)
    errors = {}
    for (steps, restarts), eps_values in eps_at.items():
        print(f"[detection] L={steps}, R={restarts}, eps {sorted(eps_values)}", flush=True)
        settings = dataclasses.replace(front, steps=steps, restarts=restarts)
        errors[steps, restarts] = detection_errors(
            settings, variables, classifier, x, y, eps_values=tuple(sorted(eps_values)),
            progress=config.progress_bar, **common)
    results = {name: [sweep_result(errors[steps, restarts], steps, restarts, eps)
                      for steps, restarts, eps in points] for name, points in sweeps.items()}
    grid = reconstructions(front, variables, x[: config.study.grid_images], **common)
    images = data.scale(x[: config.study.grid_images], row_config.data.value_range)
    record = {
        "title": config.table.title, "num_examples": len(y),
        "at": {"steps": p.steps, "restarts": p.restarts, "eps": row_config.eval.eps},
        "sweeps": results,
        "reconstructions": {"steps": p.steps, "restarts": p.restarts,
                            "mse": grid["error"].tolist(),
                            "mean_mse": float(grid["error"].mean())},
        "runs": {n: os.path.basename(d) for n, d in run_dirs.items()},
    }
    markdown = detection_markdown(record, row)

    def draw():
        roc_figure(config.table.title, results, os.path.join(workdir, f"{OUTPUT}.png"))
        reconstruction_grid(images, grid["reconstruction"], grid["error"],
                            row_config.data.value_range,
                            f"Defense-GAN reconstructions (L={p.steps}, R={p.restarts})",
                            os.path.join(workdir, f"{GRID_OUTPUT}.png"))

    report.save_outputs(workdir, OUTPUT, markdown, record, draw)
    return record


def sweep_result(errors: dict, steps: int, restarts: int, eps: float) -> dict:
    """One sweep point: its settings, the mean scores, the AUC and ROC points."""
    return {"steps": steps, "restarts": restarts, "eps": eps,
            "clean_mse": float(errors["clean"].mean()),
            "adversarial_mse": float(errors[eps].mean()),
            **roc(errors["clean"], errors[eps])}


def detection_markdown(record: dict, row: str) -> str:
    """The AUC of every sweep point, then the grid's errors."""
    lines = ["| sweep | L | R | eps | AUC | mean MSE clean | mean MSE FGSM |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, points in record["sweeps"].items():
        lines += [f"| {name} | {q['steps']} | {q['restarts']} | {q['eps']:g} | "
                  f"{q['auc']:.4f} | {q['clean_mse']:.4g} | {q['adversarial_mse']:.4g} |"
                  for q in points]
    at, rec = record["at"], record["reconstructions"]
    return (f"# {record['title']}\n\n"
            f"Detection by the projection's reconstruction error (Sec. 4.1.3, Eq. 9) on "
            f"{record['num_examples']} test images and their FGSM versions, crafted on "
            f"{row}'s classifier undefended; the L and R sweeps at eps {at['eps']:g}, the "
            f"eps sweep at L={at['steps']}, R={at['restarts']}. MSE: per-image mean squared "
            f"error in [0, 1] pixel units. AUC: adversarial images the positives.\n\n"
            + "\n".join(lines) + "\n\n"
            f"Reconstructions of the first {len(rec['mse'])} clean test images (L="
            f"{rec['steps']}, R={rec['restarts']}): mean MSE {rec['mean_mse']:.4g}; per "
            f"image " + ", ".join(f"{e:.4g}" for e in rec["mse"]) + ".\n")


def roc_figure(title: str, sweeps: dict, png_path: str) -> None:
    """One panel per sweep (as Figures 4-5): an ROC curve per point, AUC in the legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(sweeps), 4), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, len(sweeps)))
    for ax, (name, points) in zip(axes, sweeps.items(), strict=True):
        for q in points:
            label = {"L": f"L={q['steps']}", "R": f"R={q['restarts']}",
                     "eps": f"eps={q['eps']:g}"}[name]
            ax.plot(q["fpr"], q["tpr"], label=f"{label} (AUC {q['auc']:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="gray")
        fixed = {"L": f"R={points[0]['restarts']}, eps={points[0]['eps']:g}",
                 "R": f"L={points[0]['steps']}, eps={points[0]['eps']:g}",
                 "eps": f"L={points[0]['steps']}, R={points[0]['restarts']}"}[name]
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"{name} ({fixed})", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, format="png", bbox_inches="tight")


def reconstruction_grid(images, projected, errors, value_range, title: str,
                        png_path: str) -> None:
    """The images (top row) above their reconstructions (bottom row), each column titled
    with its mean squared error, the mean in the title."""
    from matplotlib.figure import Figure

    low, high = value_range
    n = len(images)
    fig = Figure(figsize=(1.1 * n + 0.4, 2.8), dpi=110)
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for i in range(n):
        for ax, image in zip(axes[:, i], (images[i], projected[i]), strict=True):
            pixels = np.clip((np.asarray(image) - low) / (high - low), 0.0, 1.0)
            ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray",
                      vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, i].set_title(f"{errors[i]:.4f}", fontsize=7)
    axes[0, 0].set_ylabel("clean", fontsize=8)
    axes[1, 0].set_ylabel("G(z*)", fontsize=8)
    fig.suptitle(f"{title}: mean MSE {float(np.mean(errors)):.4f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, format="png", bbox_inches="tight")
