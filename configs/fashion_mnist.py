"""Fashion-MNIST with the MNIST setting (D1, [-1, 1]) at eps 0.1, the usual
Fashion-MNIST radius (no paper here reports it; these runs are our baseline).

Arg: 'standard', 'pgd_at' or 'advnet', optionally ',cpu' (see configs/mnist.py).
"""

from robustgan import config as configlib


def get_config(arg=None):
    c = configlib.paper_classifier_config(
        arg, name="fashion_mnist", model="d1", eps=0.1, value_range=(-1.0, 1.0),
        learning_rate=0.01, weight_decay=1e-4, num_train_steps=200_000, known_options=("cpu",),
    )
    if c.method == "advnet":  # MNIST's advnet setting (Wang & Yu Sec. 4.1)
        configlib.apply_advnet_paper(c, generator="g0", weight_decay=1e-5, d_every=5)
    if "cpu" in c.options:
        configlib.apply_cpu_recipe(c, epochs=2, train_size=60_000)
    c.lock()
    return c
