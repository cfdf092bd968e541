"""Wang & Yu, "A direct approach to robust deep learning using adversarial networks"
(ICLR 2019): their classifier setting (Sec. 4) for every dataset, advnet's settings, the
CPU-budget recipes, and the layouts of their Table 1, Table 5 and the gradreg study.

This is the home recipe of standard, pgd_at, advnet and eat: `configs/<dataset>.py:<method>`
gives Wang & Yu's setting for that dataset.
"""

from __future__ import annotations

import ml_collections

from robustgan import config as configlib
from robustgan import optim
from robustgan.data import default_source
from robustgan.errors import ConfigError
from robustgan.game import GRADREGS

METHODS = ("standard", "pgd_at", "advnet", "eat")
MNIST_LIKE = ("mnist", "fashion_mnist")
# Wang & Yu's Table 1 surrogates: the same method trained with seed 1.
TABLE1_SURROGATES = (("A'", "standard,cpu", 1), ("B'", "pgd_at,cpu", 1), ("C'", "advnet,cpu", 1))
# Wang & Yu Table 1 (%): No noise, FGS, PGD, FGS(A'), PGD(A'), FGS(B'), PGD(B'),
# FGS(C'), PGD(C'); the EAT row is their Table 4's "ensemble (MNIST)".
PAPER_TABLE1_MNIST = {
    "standard (A)": (99.40, 23.70, 0.00, 39.49, 3.41, 90.56, 86.10, 94.21, 91.36),
    "PGD-AT (B)": (98.70, 95.46, 92.92, 95.78, 96.18, 95.58, 95.01, 97.05, 96.48),
    "advnet (C)": (99.32, 94.66, 87.09, 95.75, 96.19, 96.15, 95.24, 96.96, 95.78),
    "EAT": (98.65, 2.52, 0.00, 90.91, 93.91, 90.94, 88.12, 90.79, 89.61),
}
GENERATOR_ATTACK_STEPS = 500


def paper_classifier_config(arg, *, name: str, model: str, eps: float, value_range,
                            learning_rate: float, weight_decay: float, num_train_steps: int,
                            model_kwargs=None, known_options=()) -> ml_collections.ConfigDict:
    """Wang & Yu's classifier setting (section 4): SGD momentum 0.9, batch 64, lr / 10
    after half the steps; PGD-10 with step eps/4 and a uniform random start, for
    training and evaluation alike. Returns the config unlocked for the caller's edits."""
    method, options = configlib.parse_arg(arg, known_options)
    c = configlib.base_config()
    c.method = method
    c.data.name = name
    c.data.source, c.data.dir = default_source(name)
    c.data.value_range = tuple(value_range)
    c.model.name = model
    c.model.kwargs = ml_collections.ConfigDict(model_kwargs or {})
    c.batch_size = 64
    c.num_train_steps = num_train_steps
    c.optimizer = optim.optimizer_config(
        name="sgd", learning_rate=learning_rate, momentum=0.9, weight_decay=weight_decay,
        schedule="step", decay_at=(0.5,))
    for block in (c.train_attack, c.eval):
        block.eps = eps
    c.train_attack.step_size = c.eval.pgd_step_size = eps / 4
    c.train_attack.steps = c.eval.pgd_steps = 10
    c.options = ",".join(sorted(options))
    return c


def apply_cpu_recipe(c: ml_collections.ConfigDict, *, epochs: float, train_size: int,
                     learning_rate: float = 1e-3) -> None:
    """The recipe that fits a CPU budget (docs/ARCHITECTURE.md): Adam (1e-3), eps ramped
    linearly from 0 over the first epoch, cosine decay, `epochs` epochs in all; D1
    without BatchNorm.
    Plain SGD from scratch at MNIST eps 0.3 can collapse to a constant predictor."""
    steps_per_epoch = train_size // c.batch_size
    c.num_train_steps = int(epochs * steps_per_epoch)
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = learning_rate
    c.optimizer.b1 = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"
    c.train_attack.eps_ramp_steps = steps_per_epoch
    if c.model.name == "d1":
        # D1 with BatchNorm reached only 87.6% PGD-10 (98.5% clean) after 3 epochs of this
        # recipe on MNIST; without it the same recipe is the documented robust one. Without
        # BatchNorm there are no batch statistics to evaluate with.
        c.model.kwargs = ml_collections.ConfigDict({"use_bn": False})
        c.eval.batch_norm = "eval"
    c.checkpoint_every = steps_per_epoch // 2


def apply_advnet_paper(c: ml_collections.ConfigDict, *, generator: str, weight_decay: float,
                       d_every: int = 1, g_adam: bool = False) -> None:
    """Wang & Yu's advnet setting (Secs. 3.2, 4): G's eps is the evaluation eps; lambda 1,
    gamma 0.01, h = eta_G / 10, 5 ascent steps per G update, the adversarial image not
    clipped (Eq. 4 and the authors' code; advnet's defaults); G trained by SGD 0.01
    momentum 0.9, or Adam 0.002 beta1 0.5 (`g_adam`, CIFAR), at a constant rate;
    `weight_decay` for D and G alike; D updated every `d_every` iterations.

    BatchNorm (D1 and D2 have it): both players run in training mode inside F, so D's
    running averages move twice per D step, with the clean batch's statistics and then the
    adversarial batch's (game.py). The authors never used those averages: they evaluated
    with batch statistics, which the paper configs do too (eval.batch_norm='batch_stats';
    `--config.eval.batch_norm=eval` evaluates with the averages instead)."""
    c.advnet.eps = c.eval.eps
    c.eval.batch_norm = "batch_stats"
    c.advnet.generator = generator
    c.advnet.d_every = d_every
    c.optimizer.weight_decay = c.advnet.g_optimizer.weight_decay = weight_decay
    if g_adam:
        c.advnet.g_optimizer.name = "adam"
        c.advnet.g_optimizer.learning_rate = 0.002
        c.advnet.g_optimizer.b1 = 0.5


def apply_advnet_cpu_recipe(c: ml_collections.ConfigDict, *, train_size: int,
                            epochs: float = 1.1) -> None:
    """advnet on a CPU budget: D on `apply_cpu_recipe` (Adam, cosine, D1 without BN) at twice
    its learning rate (2e-3); G trained by Adam 0.002, beta1 0.5 (the paper's CIFAR G
    optimizer) with 20 ascent steps per G update, and a D update every iteration
    (d_every=1); lambda 2; the adversarial image not clipped; G's eps ramped up over the
    first eighth of an epoch.

    Why (docs/wang_yu.md, experiment record): against a D on Adam, G on the paper's MNIST
    SGD 0.01 fell behind (its per-update gain fell from 0.15 to 0.02) and 2 epochs gave
    2.6% PGD-10. In 400-iteration probes (500 test images) PGD-10 went 5.0% (SGD G, 5
    steps) -> 26.6% (Adam G) -> 37.6% (Adam G, 10 steps). On XLA:CPU a skipped D update
    costs as much as a taken one (`nets.when`), so more G work per D update is bought
    with g_steps, not d_every.

    The adversarial image is not clipped to the data range (the authors' code, CODE_NOTES):
    clipped, G wastes about half its pixels on directions the clip removes (negative on
    MNIST's black background), which pass it no gradient; unclipped, G learns PGD's
    pattern (brighten the background, dim the strokes) and PGD-10 after 400 iterations
    rose from 37.6% to 48.4%; a straight-through clip gave 37.6%. With 10 G steps and
    lambda 1 a 1.8-epoch run plateaued at 56.7% (full test set). Unclipped, 20 G steps
    gave 54.2% and lambda 2 51.6% after 400 iterations; together, seed 1 collapsed to a
    constant D within 20 iterations (a D warm-up did not prevent it), hence the eps ramp
    (as `apply_cpu_recipe`'s for PGD-AT). 20 steps cost ~1.6x the time per iteration, so
    the recipe takes 1.1 epochs by default (MNIST: 1,030 iterations, 56 minutes on one
    core). In that time D at Adam 1e-3 stayed under-fit (clean accuracy under PGD-AT's,
    which gets 3 epochs); 2e-3 raised clean and PGD-10 accuracy together. Keeps a
    checkpoint every half epoch for the gradreg study's agreement probes."""
    apply_cpu_recipe(c, epochs=epochs, train_size=train_size, learning_rate=2e-3)
    c.advnet.d_every = 1
    c.advnet.g_steps = 20
    c.advnet.adv_weight = 2.0
    c.advnet.eps_ramp_steps = train_size // c.batch_size // 8
    c.advnet.g_optimizer.name = "adam"
    c.advnet.g_optimizer.learning_rate = 0.002
    c.advnet.g_optimizer.b1 = 0.5
    c.keep_checkpoints = max(3, int(2 * epochs) + 1)
    c.log_every = 20


def mnist_like_config(arg, *, name: str, eps: float,
                      pgd_at_epochs: float) -> ml_collections.ConfigDict:
    """Wang & Yu's MNIST setting (Sec. 4.1) for a 60,000-image 28x28 grayscale set: D1 on
    inputs in [-1, 1], the paper's classifier schedule (200k steps), advnet with G0, 5 G
    updates per D update and wd 1e-5. The arg's options: ',cpu' switches to the CPU
    recipes (`apply_cpu_recipe`: standard and eat 2 epochs, pgd_at `pgd_at_epochs`;
    `apply_advnet_cpu_recipe` for advnet); an advnet arg may name one gradreg
    mode other than the default finite_difference (Eq. 9). Returns the config locked."""
    gradreg_options = tuple(g for g in GRADREGS if g != "finite_difference")
    c = paper_classifier_config(
        arg, name=name, model="d1", eps=eps, value_range=(-1.0, 1.0), learning_rate=0.01,
        weight_decay=1e-4, num_train_steps=200_000, known_options=("cpu", *gradreg_options),
    )
    options = set(c.options.split(","))
    gradregs = sorted(options & set(gradreg_options))
    if gradregs and c.method != "advnet":
        raise ConfigError(f"the gradreg options {gradreg_options} are for advnet")
    if len(gradregs) > 1:
        raise ConfigError(f"the config argument names gradreg modes {gradregs}: name one")
    if c.method == "advnet":
        apply_advnet_paper(c, generator="g0", weight_decay=1e-5, d_every=5)
        c.advnet.gradreg = gradregs[0] if gradregs else "finite_difference"
    if "cpu" in options:
        if c.method == "advnet":
            apply_advnet_cpu_recipe(c, train_size=60_000)
        else:
            apply_cpu_recipe(c, epochs=pgd_at_epochs if c.method == "pgd_at" else 2,
                             train_size=60_000)
    c.lock()
    return c


def svhn_config(arg) -> ml_collections.ConfigDict:
    """SVHN (Sec. 4.2): D2 (ResNet-20 layout), [-1, 1], eps 0.05; train set plus 80k images
    of 'extra'; SGD 0.01 momentum 0.9, wd 1e-4, batch 64, 200k steps; advnet: G1, G by
    SGD 0.01 momentum 0.9, wd 1e-4 for D and G."""
    c = paper_classifier_config(
        arg, name="svhn_cropped", model="d2", eps=0.05, value_range=(-1.0, 1.0),
        learning_rate=0.01, weight_decay=1e-4, num_train_steps=200_000,
        model_kwargs={"width": 1},
    )
    c.data.svhn_extra = 80_000
    if c.method == "advnet":
        apply_advnet_paper(c, generator="g1", weight_decay=1e-4)
    c.lock()
    return c


def cifar_config(arg, *, name: str, num_classes: int) -> ml_collections.ConfigDict:
    """CIFAR-10 (Sec. 4.3) and CIFAR-100 (appendix): D2, [-1, 1], eps 8/256, pad-crop 4 +
    flip; SGD lr 0.1 momentum 0.9, / 10 after 100k of 200k steps, batch 64; weight decay
    1e-4 for standard CIFAR-10 training, 1e-5 otherwise (CIFAR-100: always 1e-5); advnet:
    G1, G by Adam 0.002, beta1 0.5, wd 1e-5. --config.model.kwargs.width=10 is the wide
    variant of their appendix."""
    c = paper_classifier_config(
        arg, name=name, model="d2", eps=8 / 256, value_range=(-1.0, 1.0),
        learning_rate=0.1, weight_decay=1e-4 if name == "cifar10" else 1e-5,
        num_train_steps=200_000, model_kwargs={"width": 1},
    )
    c.data.num_classes = num_classes
    if c.method != "standard":
        c.optimizer.weight_decay = 1e-5
    c.data.pad_crop, c.data.flip = 4, True
    if c.method == "advnet":
        apply_advnet_paper(c, generator="g1", weight_decay=1e-5, g_adam=True)
    c.lock()
    return c


def config(dataset: str, arg) -> ml_collections.ConfigDict:
    """Wang & Yu's setting of the method `arg` names on `dataset`."""
    if dataset == "mnist":
        return mnist_like_config(arg, name="mnist", eps=0.3, pgd_at_epochs=3)
    if dataset == "fashion_mnist":
        # eps 0.1, the usual Fashion-MNIST radius (no paper here reports it).
        return mnist_like_config(arg, name="fashion_mnist", eps=0.1, pgd_at_epochs=2)
    if dataset == "svhn":
        return svhn_config(arg)
    if dataset in ("cifar10", "cifar100"):
        return cifar_config(arg, name=dataset, num_classes=100 if dataset == "cifar100" else 10)
    raise ConfigError(f"Wang & Yu's recipes cover mnist, fashion_mnist, svhn, cifar10 and "
                      f"cifar100, not {dataset!r}")


def table1_config(title: str, config_file: str, *, paper=None) -> ml_collections.ConfigDict:
    """Wang & Yu's Table 1 layout on `config_file`'s ',cpu' recipes: rows standard (A),
    PGD-AT (B), advnet (C) and EAT (on A's examples), surrogates TABLE1_SURROGATES."""
    return configlib.table_config(
        title, config_file,
        rows=[("standard (A)", "standard,cpu", 0), ("PGD-AT (B)", "pgd_at,cpu", 0),
              ("advnet (C)", "advnet,cpu", 0),
              ("EAT", "eat,cpu", 0, {"eat.sources": ("standard (A)",)})],
        surrogates=TABLE1_SURROGATES, paper=paper,
    )


def gradreg_study_config(title: str, config_file: str, *, rows, surrogates,
                         agreement_row: str) -> ml_collections.ConfigDict:
    """The exact-vs-finite-difference study (robustgan/studies/gradreg.py): a table of
    advnet runs, one per gradreg mode (rows), with transfer from `surrogates`; agreement
    probed along the run of row `agreement_row`."""
    return configlib.study_config(
        "gradreg", title, config_file, rows=rows, surrogates=surrogates,
        settings=dict(agreement_row=agreement_row, fd_steps=tuple(10.0 ** -k for k in range(1, 8)),
                      cost_steps=5, cost_rounds=5))


def generator_attack_config(title: str, config_file: str, *, target, others, generators,
                            steps: int, paper=None) -> ml_collections.ConfigDict:
    """Wang & Yu's Table 5 (robustgan/studies/generator_attacks.py): `generators` ((row
    label, generator name, width k; 0: the paper's k), ...) each trained for `steps`
    minibatches against the classifier of run `target` ((name, config argument, seed)),
    then applied to it and to the runs `others`. G's optimizer defaults to Adam 0.002,
    beta1 0.5 (the paper's CIFAR G optimizer; Sec. 4.5 ran SGD 0.01 for 200k steps)."""
    return configlib.study_config(
        "generator_attacks", title, config_file, rows=[target], surrogates=others, paper=paper,
        settings=dict(
            generators=tuple(tuple(row) for row in generators), steps=steps, batch_size=64,
            eps=0.0,  # in [0, 1] pixel units; 0: the target's evaluation eps
            optimizer=optim.optimizer_config(name="adam", learning_rate=0.002, momentum=0.9,
                                             b1=0.5, weight_decay=1e-5, schedule="constant")))


def tables(dataset: str, config_file: str) -> dict:
    """{arg: () -> table or study config} that `configs/<dataset>.py:<arg>` offers."""
    if dataset == "mnist":
        return {
            "table1": lambda: table1_config(
                "Wang & Yu Table 1 layout: MNIST, eps 0.3", config_file,
                paper=PAPER_TABLE1_MNIST),
            "table5": lambda: generator_attack_config(
                "Wang & Yu Table 5 layout: generator attacks on MNIST, eps 0.3", config_file,
                target=("A", "standard,cpu", 0), others=TABLE1_SURROGATES,
                generators=[("autoencoder (8 filters)", "g1", 8),
                            ("autoencoder (64 filters)", "g1", 64),
                            ("random Gaussian", "g2", 0), ("label", "g3", 0)],
                steps=GENERATOR_ATTACK_STEPS),
            "gradreg_study": lambda: gradreg_study_config(
                "MNIST advnet: gradient regularization modes", config_file,
                rows=[("finite_difference", "advnet,cpu", 0), ("exact", "advnet,cpu,exact", 0),
                      ("none", "advnet,cpu,none", 0)],
                surrogates=TABLE1_SURROGATES, agreement_row="finite_difference"),
        }
    if dataset == "fashion_mnist":
        return {"table1": lambda: table1_config(
            "Wang & Yu Table 1 layout: Fashion-MNIST, eps 0.1", config_file)}
    return {}
