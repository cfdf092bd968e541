"""Results as people read them: JSON, Markdown tables and PNG figures."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable, Sequence

import jax

COLUMN_TITLES = {"clean": "No noise", "fgsm": "FGS", "pgd": "PGD", "min": "Min",
                 "rand_fgsm": "RAND+FGSM", "cw_l2": "C&W-L2", "apgd_ce": "APGD-CE",
                 "apgd_dlr": "APGD-DLR", "deepfool": "DeepFool", "random_search": "random",
                 "substitute": "substitute FGS", "advgan": "AdvGAN", "gap": "GAP",
                 "l2l_da": "L2L-DA"}


def column_title(column: str) -> str:
    """'fgsm(A\')' -> 'FGS(A\')': the papers' names for attacks."""
    attack, paren, rest = column.partition("(")
    return COLUMN_TITLES.get(attack, attack) + paren + rest


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str],
                   row_label: str = "model", plain=()) -> str:
    """Rows of accuracies (fractions) as a Markdown table in percent; the columns in
    `plain` (distances, ratios) as numbers to 4 significant digits."""
    header = f"| {row_label} | " + " | ".join(column_title(c) for c in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]

    def cell(values, c):
        if c not in values:
            return "-"
        return f"{values[c]:.4g}" if c in plain else f"{100 * values[c]:.2f}"

    for name, values in rows.items():
        cells = " | ".join(cell(values, c) for c in columns)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def results_table_markdown(title: str, results, columns, paper, notes: str,
                           row_label: str = "model") -> str:
    """Our rows, then the paper's rows (percent, as printed; None: not in the paper) for
    the same columns."""
    text = (f"## {title}\n\n{notes}\n\nThis run:\n\n"
            + markdown_table(results, columns, row_label))
    if paper:
        rows = {name: {c: v / 100 for c, v in values.items() if v is not None}
                for name, values in paper.items()}
        text += "\nThe paper:\n\n" + markdown_table(rows, columns, row_label)
    return text


def table_figure(title: str, results, columns, png_path: str) -> None:
    """Grouped bars: one group per column, one bar per row."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2, 3.2))
    width = 0.8 / max(len(results), 1)
    for i, (name, values) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(columns))]
        ax.bar(xs, [100 * values.get(c, float("nan")) for c in columns], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))])
    ax.set_xticklabels([column_title(c) for c in columns], rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(textwrap.fill(title, 60), fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def sweep_figure(title: str, results, columns, sweeps, png_path: str) -> dict:
    """One panel per sweep (axis label, ((row, x), ...)): each column's accuracy over the
    sweep's rows against x (`config.table_config`'s sweeps). Returns what it drew:
    {axis label: {column: (xs, accuracies in %)}}."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.4), squeeze=False)
    drawn = {}
    for ax, (label, points) in zip(axes[0], sweeps, strict=True):
        xs = [x for _, x in points]
        drawn[label] = {c: (xs, [100 * results[row].get(c, float("nan")) for row, _ in points])
                        for c in columns}
        for column, (_, accuracies) in drawn[label].items():
            ax.plot(xs, accuracies, marker="o", label=column_title(column))
        ax.set_xticks(xs)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(textwrap.fill(title, 90), fontsize="medium")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return drawn


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_outputs(workdir: str, output: str, markdown: str, record: dict,
                 draw: Callable[[], None]) -> None:
    """workdir/<output>.md and .json and the figures `draw()` makes, written by process 0
    only (every process of a multi-host run computes the same results); then prints
    the Markdown."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"{output}.md"), "w") as f:
            f.write(markdown)
        with open(os.path.join(workdir, f"{output}.json"), "w") as f:
            json.dump(record, f, indent=2)
        draw()
    print(markdown, flush=True)


def write_results(workdir: str, name: str, results: dict[str, float], context: dict,
                  measures: dict | None = None, substitute: dict | None = None) -> str:
    """Writes results.json, results.md (and robustness_curve.png with measures) in
    workdir; returns the Markdown for the console."""
    columns = [c for c in results if c != "num_examples"]
    text = markdown_table({name: results}, columns)
    if substitute:
        text += "\n" + substitute_note({name: substitute}) + "\n"
    if measures:
        text += "\n" + measures_markdown({name: measures})
        curve = measures["pgd_curve"]
        plot_curves({name: (curve["eps"], curve["accuracy"])},
                    os.path.join(workdir, "robustness_curve.png"), title=f"{name}: PGD")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"model": name, "results": results, "measures": measures,
                   "substitute": substitute, **context}, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"# {name}\n\n")
        f.write("".join(f"- {k}: {v}\n" for k, v in context.items()) + "\n")
        f.write(text)
    return text


def substitute_note(rows: dict[str, dict]) -> str:
    """What the 'substitute' column measured, per row (`protocol.substitute_black_box`)."""
    parts = [f"{name}: {m['model']} from {m['seed_examples']} images, oracle agreement per "
             f"round {', '.join(f'{a:.2f}' for a in m['agreement_per_round'])}"
             for name, m in rows.items()]
    first = next(iter(rows.values()))
    return (f"Substitute: FGSM crafted on a substitute trained by Papernot et al.'s "
            f"procedure with the row as its oracle, tested on {first['num_examples']} "
            f"further images ({'; '.join(parts)}).")


def sanity_summary(checks: dict[str, dict]) -> str:
    """'all passed', or the failed checks in capitals: a failure is shown, never hidden."""
    failed = [name for name, check in checks.items() if not check["passed"]]
    return "all passed" if not failed else "FAILED: " + ", ".join(failed)


def measures_markdown(rows: dict[str, dict]) -> str:
    """The protocol measures of each model as one Markdown table; every rho with the
    fraction of images DeepFool fooled beside it."""

    def rho(m, key):
        return f"{m[key]:.4f} ({100 * m[f'{key}_fooled_fraction']:.0f}%)"

    lines = ["| model | rho_2 | rho_inf | eps_ref | acc @ 0.2/0.5/1.0 eps_ref | "
             "sanity checks | rho_2 unclipped | rho_inf unclipped |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    for name, m in rows.items():
        at_ref = "/".join(f"{100 * v:.1f}" for v in m["accuracy_at_eps_ref"].values()) or "-"
        lines.append(f"| {name} | {rho(m, 'rho_2')} | {rho(m, 'rho_inf')} | "
                     f"{m['eps_ref']:.4f} | {at_ref} | {sanity_summary(m['sanity'])} | "
                     f"{rho(m, 'rho_2_unclipped')} | {rho(m, 'rho_inf_unclipped')} |")
    first = next(iter(rows.values()))
    references = {m["eps_ref_of"] for m in rows.values()} - {"itself"}
    at = (f"the eps_ref of {', '.join(sorted(references))}" if references
          else "each model's own eps_ref")
    return (f"Protocol measures on the first {first['num_examples']} evaluation images "
            f"(rho: DeepFool perturbation norm over image norm, pixel units, DeepFool "
            f"clipping every iterate to the image range; unclipped: the paper's DeepFool, "
            f"whose iterates may leave it; in parentheses the images DeepFool fooled within "
            f"{first['deepfool_steps']} steps, below 100% rho underestimates; accuracy "
            f"under FGS at 0.2/0.5/1.0 "
            f"of {at}):\n\n" + "\n".join(lines) + "\n")


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], path, *,
    title: str | None = None, xlabel: str = "eps (pixel units)", ylabel: str = "accuracy",
) -> None:
    """Writes a PNG with one accuracy-against-eps line per named curve."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    for name, (eps, acc) in curves.items():
        ax.plot(list(eps), list(acc), marker="o", markersize=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")  # long titles stay whole


def training_curves(metrics_path: str, png_path: str) -> None:
    """Plots every logged training metric against the step, one panel each."""
    plt = pyplot()
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return
    keys = [k for k in rows[0] if k != "step"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(steps, [r.get(key) for r in rows])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
