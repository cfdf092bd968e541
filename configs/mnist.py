"""MNIST (Wang & Yu section 4.1): D1, inputs in [-1, 1], eps 0.3.

Arg: 'standard' or 'pgd_at', optionally ',cpu'. The default is the paper's schedule
(SGD 0.01 momentum 0.9, wd 1e-4, batch 64, 200k steps, lr / 10 at 100k: GPU work).
',cpu' is the recipe that fits a CPU budget: Adam 1e-3, cosine decay, eps ramped over
the first epoch, 3 epochs (standard: 2 epochs).
"""

from robustgan import config as configlib


def get_config(arg=None):
    c = configlib.paper_classifier_config(
        arg, name="mnist", model="d1", eps=0.3, value_range=(-1.0, 1.0),
        learning_rate=0.01, weight_decay=1e-4, num_train_steps=200_000, known_options=("cpu",),
    )
    if "cpu" in c.options:
        configlib.apply_cpu_recipe(c, epochs=3 if c.method == "pgd_at" else 2, train_size=60_000)
    c.lock()
    return c
