"""MNIST (Wang & Yu section 4.1): D1, inputs in [-1, 1], eps 0.3.

Arg: 'standard', 'pgd_at' or 'advnet', optionally ',cpu'. The default is the paper's schedule
(SGD 0.01 momentum 0.9, wd 1e-4, batch 64, 200k steps, lr / 10 at 100k: GPU work).
',cpu' is the recipe that fits a CPU budget: Adam 1e-3, cosine decay, eps ramped over
the first epoch, 3 epochs (standard: 2 epochs).

Arg 'table1' (with --mode table): Wang & Yu's Table 1 layout on the ',cpu' recipe; rows
standard (A) and PGD-AT (B), surrogates A' and B' (same method, seed 1).
"""

from robustgan import config as configlib

# Wang & Yu Table 1 (%): No noise, FGS, PGD, FGS(A'), PGD(A'), FGS(B'), PGD(B').
PAPER_TABLE1 = {
    "standard (A)": (99.40, 23.70, 0.00, 39.49, 3.41, 90.56, 86.10),
    "PGD-AT (B)": (98.70, 95.46, 92.92, 95.78, 96.18, 95.58, 95.01),
}


def get_config(arg=None):
    if arg == "table1":
        return configlib.table_config(
            "Wang & Yu Table 1 layout: MNIST, eps 0.3", __file__,
            rows=[("standard (A)", "standard,cpu", 0), ("PGD-AT (B)", "pgd_at,cpu", 0)],
            surrogates=[("A'", "standard,cpu", 1), ("B'", "pgd_at,cpu", 1)],
            paper=PAPER_TABLE1,
        )
    c = configlib.paper_classifier_config(
        arg, name="mnist", model="d1", eps=0.3, value_range=(-1.0, 1.0),
        learning_rate=0.01, weight_decay=1e-4, num_train_steps=200_000, known_options=("cpu",),
    )
    if c.method == "advnet":  # Sec. 4.1: G0; 5 G updates per D update; wd 1e-5 for D and G
        configlib.apply_advnet_paper(c, generator="g0", weight_decay=1e-5, d_every=5)
    if "cpu" in c.options:
        configlib.apply_cpu_recipe(c, epochs=3 if c.method == "pgd_at" else 2, train_size=60_000)
    c.lock()
    return c
