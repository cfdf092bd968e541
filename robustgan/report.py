"""Results as people read them: JSON, Markdown tables and PNG figures."""

from __future__ import annotations

import json
import os

COLUMN_TITLES = {"clean": "No noise", "fgsm": "FGS", "pgd": "PGD", "min": "Min"}


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Rows of accuracies (fractions) as a Markdown table in percent."""
    header = "| model | " + " | ".join(COLUMN_TITLES.get(c, c) for c in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for name, values in rows.items():
        cells = " | ".join(f"{100 * values[c]:.2f}" if c in values else "-" for c in columns)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return
    keys = [k for k in rows[0] if k != "step"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [r.get(key) for r in rows])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
