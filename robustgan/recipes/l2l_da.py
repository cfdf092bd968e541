"""Jang, Zhao, Hero & Kim, "Adversarial Defense via Learning to Generate Diverse Attacks"
(ICCV 2019): the settings of `l2l_da` and its one-shot baseline `l2l` (Sec. 5.1 and the
authors' code).

`configs/<dataset>.py:l2l_da` / `:l2l`: SGD momentum 0.9 and weight decay 1e-5 for both
networks, batch 100, 100k iterations; eps 0.3 (MNIST-like sets, LeNet-5) or 8/255
(others, ResNet-18 here: the paper's ResNet-20 is not in the model zoo); lambda 0.02
(MNIST) or 0.5 (CIFAR-10) in the code's scale (methods/l2l_da.py). The paper's CIFAR
classifier is fine-tuned from a `standard` run: set --config.init_from.run. Evaluation as
Table 2: FGSM, PGD-10, PGD-100 and the C&W margin loss under the L-inf bound, with APGD
beside them.
"""

from __future__ import annotations

import ml_collections

from robustgan import config as configlib
from robustgan import optim

METHODS = ("l2l_da", "l2l")
MNIST_LIKE = ("mnist", "fashion_mnist")
ITERATIONS = 100_000
TABLE2_ATTACKS = ("fgsm", "pgd10=pgd(steps=10)", "pgd100=pgd(steps=100)",
                  "cw100=pgd(steps=100, loss=\"margin\")", "apgd_ce", "apgd_dlr")


def config(dataset: str, arg) -> ml_collections.ConfigDict:
    """The paper's setting of `arg` ('l2l_da' or 'l2l') on `dataset`, locked."""
    method, options = configlib.parse_arg(arg, ())
    mnist_like = dataset in MNIST_LIKE
    c = configlib.method_config(method, options, dataset)  # [0, 1] data
    c.model.name = "lenet5" if mnist_like else "resnet18"
    c.batch_size = 100
    c.num_train_steps = ITERATIONS
    c.optimizer = optim.optimizer_config(name="sgd", learning_rate=0.01, momentum=0.9,
                                         weight_decay=1e-5, schedule="constant")
    eps = 0.3 if mnist_like else 8 / 255
    c.eval.eps = c.train_attack.eps = c[method].eps = eps
    if method == "l2l_da":
        c.l2l_da.diversity_weight = 0.02 if mnist_like else 0.5
    c.eval.pgd_steps, c.eval.pgd_step_size = 10, eps / 4
    c.eval.attacks = TABLE2_ATTACKS
    c.checkpoint_every = 5_000
    c.log_every = 100
    c.lock()
    return c


def tables(dataset: str, config_file: str) -> dict:
    """No table layouts yet."""
    del dataset, config_file
    return {}
