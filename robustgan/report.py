"""Results as people read them: JSON, Markdown tables and PNG figures."""

from __future__ import annotations

import json
import os

COLUMN_TITLES = {"clean": "No noise", "fgsm": "FGS", "pgd": "PGD", "min": "Min"}


def column_title(column: str) -> str:
    """'fgsm(A\')' -> 'FGS(A\')': the papers' names for attacks."""
    attack, paren, rest = column.partition("(")
    return COLUMN_TITLES.get(attack, attack) + paren + rest


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Rows of accuracies (fractions) as a Markdown table in percent."""
    header = "| model | " + " | ".join(column_title(c) for c in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for name, values in rows.items():
        cells = " | ".join(f"{100 * values[c]:.2f}" if c in values else "-" for c in columns)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def results_table_markdown(title: str, results, columns, paper, notes: str) -> str:
    """Our rows, then the paper's rows (percent, as printed) for the same columns."""
    text = f"## {title}\n\n{notes}\n\nThis run:\n\n" + markdown_table(results, columns)
    if paper:
        rows = {name: {c: v / 100 for c, v in values.items()} for name, values in paper.items()}
        text += "\nThe paper:\n\n" + markdown_table(rows, columns)
    return text


def table_figure(title: str, results, columns, png_path: str) -> None:
    """Grouped bars: one group per column, one bar per row."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2, 3.2))
    width = 0.8 / max(len(results), 1)
    for i, (name, values) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(columns))]
        ax.bar(xs, [100 * values[c] for c in columns], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))])
    ax.set_xticklabels([column_title(c) for c in columns], rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_results(workdir: str, name: str, results: dict[str, float], context: dict) -> str:
    """Writes results.json and results.md in workdir; returns the Markdown table."""
    columns = [c for c in ("clean", "fgsm", "pgd", "min") if c in results]
    table = markdown_table({name: results}, columns)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"model": name, "results": results, **context}, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"# {name}\n\n")
        f.write("".join(f"- {k}: {v}\n" for k, v in context.items()) + "\n")
        f.write(table)
    return table


def training_curves(metrics_path: str, png_path: str) -> None:
    """Plots every logged training metric against the step, one panel each."""
    plt = _pyplot()
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
