"""Yan et al.'s Deep Defense experiments beyond the shared table: the rho_2 columns of
Table 1 as the paper measured them, C&W-L2 distances, the paper's pattern checked, and
the c / lambda / layer sweeps of Figures 3 and 4.

rho_2 (Eq. 7) is reported three ways: `rho_2_paper`, the authors' evaluation (their
5-step DeepFool, away from the label or toward it for misclassified images, unclipped, in
the model's input space: mean-subtracted 0-255 MNIST), the number the paper's Table 1
compares with; `rho_2_converged`, the same with 50 steps and its fooled fraction; and
`rho_2_pixels`, the 5-step one with r and x in [0, 1] pixel units. The shared protocol
(robustgan/evaluate/protocol.py) adds rho_2 on valid images, rho_inf, eps_ref (found on
the row `table.eps_ref_row`, Ours) and the accuracies at 0.2 / 0.5 / 1.0 of it.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from robustgan import attacks, data, parallel, report, runs, table
from robustgan.attacks.common import data_scale
from robustgan.evaluate import measures, protocol
from robustgan.evaluate.batching import map_batches

CW_L2 = attacks.make_attack("cw_l2", steps=100, binary_steps=5, learning_rate=0.01,
                            initial_const=0.1)
PAPER_COLUMNS = ("clean", "rho_2_paper", "acc@0.2", "acc@0.5", "acc@1.0")
# The rows Ours is compared with in `pattern_checks`: Table 1's, and the control.
TABLE1_BASELINES = ("Reference", "Clean fine-tune", "Par. Train", "Adv. Train I")
# Columns that are ratios or distances, not accuracies.
PLAIN = ("rho_2_paper", "rho_2_converged", "rho_2_pixels", "cw_l2_mean", "eps_ref")


def _row_runs(config, workdir: str, saved: dict) -> dict[str, runs.Run]:
    return {name: runs.load_run(os.path.join(workdir, saved["runs"][name]))
            for name, *_ in config.table.rows}


def _eval_data(run: runs.Run):
    dataset = data.load_dataset(run.config.data)
    x, y = protocol.eval_split(run.config, dataset)
    return x, y, dict(value_range=run.config.data.value_range, mesh=parallel.make_mesh())


def rho_columns(classifier, x, y, *, batch_size: int, **common) -> dict:
    """rho_2 as the paper (5 steps, model input space), converged (50 steps) and in pixel
    units, with the fooled fractions."""
    out = {}
    for name, steps, space in (("rho_2_paper", 5, "model_input"),
                               ("rho_2_converged", 50, "model_input"),
                               ("rho_2_pixels", 5, "pixels")):
        r = measures.rho(classifier, x, y, "l2", batch_size=batch_size, label="true",
                         space=space, max_iter=steps, **common)
        out[name], out[f"{name}_fooled_fraction"] = r["rho"], r["fooled"]
    return out


@jax.jit
def _cw_batch(classifier, xb, yb, key):
    x_adv = CW_L2(classifier, xb, yb)
    fooled = classifier.logits(x_adv).argmax(-1) != yb
    distance = jnp.sqrt(((x_adv - xb) ** 2).reshape(len(yb), -1).sum(1))
    return {"distance": distance / data_scale(classifier), "fooled": fooled}


def cw_distance(classifier, x, y, *, batch_size: int, **common) -> dict:
    """Mean L2 distance (pixel units) of C&W-L2 examples (100 steps, 5 binary-search
    rounds) over the images it fooled, and the fooled fraction (supplement Table 2)."""
    out = map_batches(_cw_batch, classifier, x, y, batch_size=batch_size,
                      rng=jax.random.key(0), **common)
    fooled = out["fooled"]
    return {"cw_l2_mean": float(out["distance"][fooled].mean()) if fooled.any()
            else float("nan"),
            "cw_l2_fooled_fraction": float(fooled.mean()), "cw_examples": len(fooled)}


def pattern_checks(rows: dict[str, dict]) -> dict[str, bool]:
    """The paper's claims on Table 1: Ours has the highest rho_2 of Table 1's rows (and of
    the Clean fine-tune control; the supplement's rows aside) and at least 1.3x the
    Reference's, clean accuracy at least
    the Reference's minus 0.3 points, and the highest accuracy at each fraction of
    eps_ref."""
    ours, ref = rows["Ours"], rows["Reference"]
    others = [r for name, r in rows.items() if name in TABLE1_BASELINES]
    checks = {
        "Ours has the highest rho_2": all(ours["rho_2_paper"] > r["rho_2_paper"] for r in others),
        "Ours rho_2 >= 1.3 x Reference": ours["rho_2_paper"] >= 1.3 * ref["rho_2_paper"],
        "Ours clean >= Reference - 0.3": ours["clean"] >= ref["clean"] - 0.003,
    }
    for f in ("0.2", "0.5", "1.0"):
        checks[f"Ours highest at {f} eps_ref"] = all(
            ours[f"acc@{f}"] > r[f"acc@{f}"] for r in others)
    return checks


def table1(config, workdir: str) -> dict:
    """Table 1 on one network: the shared table (columns and protocol measures), then the
    paper's rho_2 columns and C&W distances per row, beside the paper's numbers."""
    table.run_table(config, workdir)
    with open(os.path.join(workdir, "table.json")) as f:
        saved = json.load(f)
    row_runs = _row_runs(config, workdir, saved)
    first = next(iter(row_runs.values()))
    x, y, common = _eval_data(first)
    batch_size = first.config.eval.batch_size
    cw_n = config.study.cw_examples
    rows = {}
    for name, run in row_runs.items():
        print(f"[study] Deep Defense measures: {name}", flush=True)
        classifier = run.classifier()
        measured = saved["measures"][name]
        rows[name] = {"clean": saved["results"][name]["clean"],
                      **rho_columns(classifier, x, y, batch_size=batch_size, **common),
                      **{f"acc@{k}": v for k, v in measured["accuracy_at_eps_ref"].items()},
                      **cw_distance(classifier, x[:cw_n], y[:cw_n], batch_size=batch_size,
                                    **common),
                      "eps_ref": measured["eps_ref"]}
    paper = {name: dict(zip(PAPER_COLUMNS, (v[0] / 100, v[1], *(a / 100 for a in v[2:])),
                            strict=True))
             for name, v in config.study.paper}
    checks = pattern_checks(rows)
    markdown = table1_markdown(config.table.title, rows, paper, checks, len(y),
                               saved["measures"]["Ours"]["num_examples"])
    results = {"rows": rows, "paper": paper, "checks": checks, "num_examples": len(y)}
    report.save_outputs(workdir, "deep_defense_table1", markdown, results, lambda: None)
    return results


def table1_markdown(title, rows, paper, checks, num_examples, measure_examples) -> str:
    columns = ["clean", "rho_2_paper", "rho_2_converged", "rho_2_converged_fooled_fraction",
               "rho_2_pixels", "eps_ref", "acc@0.2", "acc@0.5", "acc@1.0", "cw_l2_mean"]
    text = report.markdown_table(rows, columns, plain=PLAIN)
    if paper:
        text += "\nThe paper (Table 1):\n\n" + report.markdown_table(
            paper, [c for c in columns if c in PAPER_COLUMNS], plain=PLAIN)
    text += (f"\nrho_2 over {num_examples} test images (rho_2_paper: the authors' 5-step "
             "DeepFool in the model's input space, what the paper reports); accuracies at "
             f"fractions of eps_ref (FGS, found on Ours) over {measure_examples} images; "
             "C&W-L2 mean distance in [0, 1] pixel units over the images it fooled.\n\n")
    text += "\n".join(f"- {'PASS' if ok else 'FAIL'}: {claim}" for claim, ok in checks.items())
    return f"# {title}\n\n{text}\n"


def sweep(config, workdir: str) -> dict:
    """Figures 3 / 4: clean accuracy against rho_2 (the paper's columns) for each
    deep_defense run of the sweep, one curve per group, the Reference beside them."""
    trained, run_dirs, dataset = table.train_runs(config, workdir)
    first = trained[config.table.rows[0][0]][0]
    x, y = protocol.eval_split(first, dataset)
    common = dict(value_range=first.data.value_range, mesh=parallel.make_mesh(),
                  batch_size=first.eval.batch_size)
    points = {}
    for name, (run_config, classifier) in trained.items():
        print(f"[study] sweep point {name}", flush=True)
        clean = measures.accuracy_at_eps(classifier, x, y, measures.fgs, 0.0,
                                         rng=jax.random.key(0), **common)
        rho = measures.rho(classifier, x, y, "l2", label="true", space="model_input",
                           max_iter=5, **common)["rho"]
        points[name] = {"clean": clean, "rho_2_paper": rho,
                        "c": run_config.deep_defense.c if name != "Reference" else None}
    groups = {g: {n: p for n, p in points.items() if n.startswith(f"{g}, ")}
              for g in config.study.groups}
    png = os.path.join(workdir, "deep_defense_sweep.png")
    markdown = (f"# {config.table.title}\n\n"
                + report.markdown_table(points, ["clean", "rho_2_paper"], plain=PLAIN)
                + f"\n{len(y)} test images; rho_2 as the paper (5-step DeepFool, model input "
                f"space). Figure: {os.path.basename(png)}.\n")
    results = {"points": points, "groups": {g: list(p) for g, p in groups.items()},
               "runs": {n: os.path.basename(d) for n, d in run_dirs.items()}}
    report.save_outputs(workdir, "deep_defense_sweep", markdown, results,
                        lambda: plot_sweep(config.table.title, points, groups, png))
    return results


def plot_sweep(title: str, points: dict, groups: dict, png_path: str) -> None:
    """rho_2 (x) against clean accuracy (y), a line per group ordered by c, the Reference
    as a star."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for group, members in groups.items():
        ordered = sorted(members.values(), key=lambda p: p["c"])
        ax.plot([p["rho_2_paper"] for p in ordered], [100 * p["clean"] for p in ordered],
                "o-", label=group)
    if "Reference" in points:
        ref = points["Reference"]
        ax.plot(ref["rho_2_paper"], 100 * ref["clean"], "k*", markersize=12, label="Reference")
    ax.set_xlabel("rho_2 (5-step DeepFool)")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
