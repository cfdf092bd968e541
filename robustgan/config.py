"""Config defaults, recipes and validation shared by the files in configs/.

A config file in configs/ is `get_config(arg) -> ConfigDict` (big_vision style); `arg`
names the method, optionally followed by comma-separated options
(`configs/mnist.py:pgd_at,cpu`). Everything a run needs is in the ConfigDict, which is
locked: an unknown key is an error, never silently added.
"""

from __future__ import annotations

import importlib.util
import os
import re

import ml_collections

from robustgan.errors import ConfigError

METHODS = ("standard", "pgd_at", "advnet", "eat")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
DATA_SOURCES = ("tfds", "idx", "imagefolder", "npz", "embedded")
BATCH_NORM_MODES = ("eval", "batch_stats")


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with neutral defaults; dataset configs override them."""
    c = ml_collections.ConfigDict()
    c.method = "standard"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"
    c.data.name = "mnist"
    c.data.dir = ""
    c.data.num_classes = 10
    c.data.validation_size = 0
    # SVHN only: images drawn from the 'extra' split and appended to train (-1: all).
    c.data.svhn_extra = 0
    c.data.value_range = (0.0, 1.0)
    c.data.pad_crop = 0
    c.data.flip = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "d1"
    c.model.kwargs = ml_collections.ConfigDict()

    c.batch_size = 64
    c.num_train_steps = 1000

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.b1 = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    # 'step': the learning rate is divided by 10 at each of these fractions of training.
    c.optimizer.decay_at = (0.5,)
    c.optimizer.warmup_steps = 0

    # The attack adversarial training runs against (pgd_at): Madry et al. PGD.
    c.train_attack = ml_collections.ConfigDict()
    c.train_attack.eps = 0.3
    c.train_attack.step_size = 0.075
    c.train_attack.steps = 10
    c.train_attack.random_start = True
    # eps grows linearly from 0 to eps over the first eps_ramp_steps (0: no ramp).
    c.train_attack.eps_ramp_steps = 0
    # FracAT (Wang et al., ATGAN): the fraction of each batch replaced by adversarial images.
    c.train_attack.fraction = 1.0
    c.train_attack.batch_norm = "batch_stats"
    c.train_attack.unroll = 0  # 0: the attack's default for this backend

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 500
    c.eval.eps = 0.3
    c.eval.pgd_steps = 10
    c.eval.pgd_step_size = 0.075
    c.eval.pgd_restarts = 1
    c.eval.batch_norm = "eval"
    c.eval.num_examples = 0  # 0: the whole test split
    c.eval.split = "test"
    # The rest of the protocol (evaluate.protocol_measures), on the first images only.
    c.eval.measures = True
    c.eval.measure_examples = 500
    c.eval.deepfool_steps = 10
    c.eval.curve_eps_fractions = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    # Substitute black box (Papernot et al., as Defense-GAN): a model name ('' = skip),
    # seeded with the first `substitute_seed_size` evaluation images.
    c.eval.substitute = ""
    c.eval.substitute_seed_size = 150
    c.eval.substitute_rounds = 6
    c.eval.substitute_epochs = 10

    # advnet (Wang & Yu, ICLR 2019): classifier D vs perturbation generator G (game.py).
    c.advnet = ml_collections.ConfigDict()
    c.advnet.eps = 0.3  # G's L-inf radius in [0, 1] pixel units
    c.advnet.adv_weight = 1.0  # lambda of Eq. 4
    # G's eps grows linearly from 0 to eps over the first eps_ramp_steps iterations (0: no
    # ramp; not in the paper, the CPU recipe's guard against a constant classifier).
    c.advnet.eps_ramp_steps = 0
    c.advnet.clip = True  # clip x + eps G(x) to the data range (the authors' code did not)
    # g0 | g1 (input x) | g2 (Gaussian z) | g3 (label y): appendix Figure 4.
    c.advnet.generator = "g0"
    c.advnet.generator_width = 0  # k; 0: the paper's (64; g3: 16)
    # D's gradient regularizer (Eqs. 8-9): none | exact | finite_difference | authors_code.
    c.advnet.gradreg = "finite_difference"
    c.advnet.gamma = 0.01
    c.advnet.fd_step = 0.0  # h of Eq. 9; 0: g_optimizer.learning_rate / 10
    c.advnet.g_steps = 5  # gradient-ascent steps per G update, on one minibatch
    c.advnet.d_every = 1  # D updates every d_every iterations (MNIST: 5)
    c.advnet.unroll = 0  # unrolling of the G-step scan; 0: the default for this backend
    c.advnet.g_optimizer = ml_collections.ConfigDict()
    c.advnet.g_optimizer.name = "sgd"
    c.advnet.g_optimizer.learning_rate = 0.01
    c.advnet.g_optimizer.momentum = 0.9
    c.advnet.g_optimizer.b1 = 0.5
    c.advnet.g_optimizer.weight_decay = 1e-5
    c.advnet.g_optimizer.schedule = "constant"
    c.advnet.g_optimizer.decay_at = (0.5,)
    c.advnet.g_optimizer.warmup_steps = 0

    # eat (Wang & Yu Sec. 4.4, after Tramer et al.): run directories of the pre-trained
    # undefended models whose adversarial examples it trains on (eps, PGD settings from
    # train_attack). In table mode an entry may name another run of the table.
    c.eat = ml_collections.ConfigDict()
    c.eat.sources = ()

    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    # Options given after the method in the config argument (e.g. "cpu"), for the record.
    c.options = ""
    return c


def parse_arg(arg: str | None, known_options=()) -> tuple[str, set[str]]:
    """Splits 'method[,option...]' and checks both against what the config file offers."""
    parts = [p.strip() for p in (arg or "standard").split(",") if p.strip()]
    method, options = parts[0], set(parts[1:])
    if method not in METHODS:
        raise ConfigError(
            f"unknown method {method!r} in the config argument; choose one of {METHODS}"
        )
    unknown = options - set(known_options)
    if unknown:
        raise ConfigError(
            f"unknown config option(s) {sorted(unknown)}; "
            f"this config offers {sorted(known_options)}"
        )
    return method, options


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not valid; choose one of {choices}")


def _check_range(key: str, value, low, high) -> None:
    if not low <= value <= high:
        raise ConfigError(f"config.{key}={value!r} is out of range: must be in [{low}, {high}]")


def validate(config: ml_collections.ConfigDict) -> None:
    """Stops a bad config before anything is loaded or compiled, naming the key."""
    _check_choice("method", config.method, METHODS)
    _check_choice("data.source", config.data.source, DATA_SOURCES)
    _check_optimizer("optimizer", config.optimizer)
    _check_optimizer("advnet.g_optimizer", config.advnet.g_optimizer)
    _check_choice("train_attack.batch_norm", config.train_attack.batch_norm, BATCH_NORM_MODES)
    _check_choice("eval.batch_norm", config.eval.batch_norm, BATCH_NORM_MODES)
    _check_choice("eval.split", config.eval.split, ("test", "validation"))
    for key in ("train_attack.eps", "train_attack.step_size", "eval.eps", "eval.pgd_step_size"):
        _check_range(key, _get(config, key), 0.0, 1.0)
    _check_range("train_attack.fraction", config.train_attack.fraction, 0.0, 1.0)
    for key in ("batch_size", "num_train_steps", "eval.batch_size", "log_every",
                "checkpoint_every", "keep_checkpoints", "data.num_classes"):
        if _get(config, key) < 1:
            raise ConfigError(f"config.{key}={_get(config, key)!r} must be a positive integer")
    for key in ("train_attack.steps", "eval.pgd_steps", "eval.pgd_restarts"):
        if _get(config, key) < 1:
            raise ConfigError(f"config.{key}={_get(config, key)!r} must be at least 1")
    low, high = config.data.value_range
    if not low < high:
        raise ConfigError(
            f"config.data.value_range={tuple(config.data.value_range)} must be (low, high)"
        )
    if config.data.validation_size < 0:
        raise ConfigError("config.data.validation_size must be >= 0")
    if config.eval.split == "validation" and config.data.validation_size == 0:
        raise ConfigError("config.eval.split='validation' needs config.data.validation_size > 0")
    _check_advnet(config.advnet)
    if config.method == "eat":
        if not config.eat.sources:
            raise ConfigError(
                "config.eat.sources is empty: eat trains on adversarial examples of "
                "pre-trained undefended models; give their run directories, e.g. "
                "--config.eat.sources='(\"runs/mnist_standard\",)'")
        if config.batch_size % 4:
            raise ConfigError(f"config.batch_size={config.batch_size}: eat splits each batch "
                              "into 4 (clean, FGS, PGD, LL-FGS); use a multiple of 4")


def _check_optimizer(key: str, opt) -> None:
    _check_choice(f"{key}.name", opt.name, OPTIMIZERS)
    _check_choice(f"{key}.schedule", opt.schedule, SCHEDULES)
    if opt.learning_rate <= 0:
        raise ConfigError(f"config.{key}.learning_rate must be positive")
    if any(not 0.0 < f < 1.0 for f in opt.decay_at):
        raise ConfigError(f"config.{key}.decay_at holds fractions of training in (0, 1)")


def _check_advnet(a) -> None:
    from robustgan.game import GRADREGS
    from robustgan.models.generators import GENERATORS

    _check_choice("advnet.generator", a.generator, tuple(GENERATORS))
    _check_choice("advnet.gradreg", a.gradreg, GRADREGS)
    _check_range("advnet.eps", a.eps, 0.0, 1.0)
    for key in ("adv_weight", "gamma", "fd_step", "generator_width", "unroll",
                "eps_ramp_steps"):
        if a[key] < 0:
            raise ConfigError(f"config.advnet.{key}={a[key]!r} must be >= 0")
    for key in ("g_steps", "d_every"):
        if a[key] < 1:
            raise ConfigError(f"config.advnet.{key}={a[key]!r} must be at least 1")


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file named as on the command line: 'path[:arg]'."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_robustgan_config", path)
    if module_spec is None or module_spec.loader is None or not os.path.isfile(path):
        raise ConfigError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=|$)")


def check_overrides(argv: list[str]) -> None:
    """Names an unknown `--config.key=value` override before absl parses it.

    ml_collections would raise a bare AttributeError; this loads the config file the
    same way and says which key does not exist and which keys its parent has.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    if spec is None:
        return
    config = load_config_file(spec)
    for a in argv:
        match = _OVERRIDE.match(a)
        if not match:
            continue
        node, walked = config, []
        for part in match.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = "config" + "".join(f".{w}" for w in walked)
                keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(
                    f"unknown config key 'config.{match.group(1)}': {where} has no key "
                    f"{part!r}. Valid keys there: {keys}"
                )
            node, walked = node[part], walked + [part]


def paper_classifier_config(arg, *, name: str, model: str, eps: float, value_range,
                            learning_rate: float, weight_decay: float, num_train_steps: int,
                            model_kwargs=None, known_options=()) -> ml_collections.ConfigDict:
    """Wang & Yu's classifier setting (section 4): SGD momentum 0.9, batch 64, lr / 10
    after half the steps; PGD-10 with step eps/4 and a uniform random start, for
    training and evaluation alike. Returns the config unlocked for the caller's edits."""
    from robustgan.data import default_source

    method, options = parse_arg(arg, known_options)
    c = base_config()
    c.method = method
    c.data.name = name
    c.data.source, c.data.dir = default_source(name)
    c.data.value_range = tuple(value_range)
    c.model.name = model
    c.model.kwargs = ml_collections.ConfigDict(model_kwargs or {})
    c.batch_size = 64
    c.num_train_steps = num_train_steps
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = learning_rate
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = weight_decay
    c.optimizer.schedule = "step"
    c.optimizer.decay_at = (0.5,)
    for block in (c.train_attack, c.eval):
        block.eps = eps
    c.train_attack.step_size = c.eval.pgd_step_size = eps / 4
    c.train_attack.steps = c.eval.pgd_steps = 10
    c.options = ",".join(sorted(options))
    return c


def apply_cpu_recipe(c: ml_collections.ConfigDict, *, epochs: float, train_size: int,
                     learning_rate: float = 1e-3) -> None:
    """The recipe that fits a CPU budget (ARCHITECTURE.md): Adam (1e-3), eps ramped
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
        # recipe on MNIST; without it the same recipe is the documented robust one.
        c.model.kwargs = ml_collections.ConfigDict({"use_bn": False})
    c.checkpoint_every = steps_per_epoch // 2


def table_config(title: str, config_file: str, *, rows, surrogates, attacks=("fgsm", "pgd"),
                 paper=None, eat_sources=()) -> ml_collections.ConfigDict:
    """A results table in the papers' layout (`--mode table`).

    rows / surrogates: (name, config argument of `config_file`, seed). Each row is
    attacked white box (clean, then `attacks`) and black box by transfer (`attacks`
    crafted on each surrogate). paper: row name -> the paper's numbers for those columns,
    printed beside ours. eat_sources: names of earlier runs whose models an eat row
    attacks (its config.eat.sources).
    """
    c = ml_collections.ConfigDict()
    c.table = ml_collections.ConfigDict()
    c.table.title = title
    c.table.config_file = os.path.abspath(config_file)
    c.table.rows = tuple(tuple(r) for r in rows)
    c.table.surrogates = tuple(tuple(r) for r in surrogates)
    c.table.attacks = tuple(attacks)
    c.table.paper = ml_collections.ConfigDict(
        {k: tuple(v) for k, v in (paper or {}).items()}
    )
    c.table.eat_sources = tuple(eat_sources)
    c.table.eval_num_examples = 0  # 0: the whole test split
    c.progress_bar = True
    c.lock()
    return c


def apply_advnet_cpu_recipe(c: ml_collections.ConfigDict, *, train_size: int,
                            epochs: float = 1.1) -> None:
    """advnet on a CPU budget: D on `apply_cpu_recipe` (Adam, cosine, D1 without BN) at twice
    its learning rate (2e-3); G trained by Adam 0.002, beta1 0.5 (the paper's CIFAR G
    optimizer) with 20 ascent steps per G update, and a D update every iteration
    (d_every=1); lambda 2; the adversarial image not clipped; G's eps ramped up over the
    first eighth of an epoch.

    Why: against a D on Adam, G on the paper's MNIST SGD 0.01 fell behind (its per-update
    gain fell from 0.15 to 0.02) and 2 epochs gave 2.6% PGD-10. In 400-iteration probes
    (500 test images) PGD-10 went 5.0% (SGD G, 5 steps) -> 26.6% (Adam G) -> 37.6% (Adam G,
    10 steps). On XLA:CPU a skipped D update costs as much as a taken one
    (methods/advnet.py `when`), so more G work per D update is bought with g_steps, not
    d_every.

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
    which gets 3 epochs); 2e-3 raised clean and PGD-10 accuracy together (README,
    Results). Keeps a checkpoint every half epoch for the gradreg study's agreement probes."""
    apply_cpu_recipe(c, epochs=epochs, train_size=train_size, learning_rate=2e-3)
    c.advnet.clip = False
    c.advnet.d_every = 1
    c.advnet.g_steps = 20
    c.advnet.adv_weight = 2.0
    c.advnet.eps_ramp_steps = train_size // c.batch_size // 8
    c.advnet.g_optimizer.name = "adam"
    c.advnet.g_optimizer.learning_rate = 0.002
    c.advnet.g_optimizer.b1 = 0.5
    c.keep_checkpoints = max(3, int(2 * epochs) + 1)
    c.log_every = 20


# Wang & Yu's Table 1 surrogates: the same method trained with seed 1.
TABLE1_SURROGATES = (("A'", "standard,cpu", 1), ("B'", "pgd_at,cpu", 1), ("C'", "advnet,cpu", 1))


def wang_yu_mnist_config(arg, *, name: str, eps: float,
                         pgd_at_epochs: float) -> ml_collections.ConfigDict:
    """Wang & Yu's MNIST setting (Sec. 4.1) for a 60,000-image 28x28 grayscale set: D1 on
    inputs in [-1, 1], the paper's classifier schedule (200k steps), advnet with G0, 5 G
    updates per D update and wd 1e-5. The arg's options: ',cpu' switches to the CPU
    recipes (`apply_cpu_recipe`: standard and eat 2 epochs, pgd_at `pgd_at_epochs`;
    `apply_advnet_cpu_recipe` for advnet); an advnet arg may name one gradreg
    mode other than the default finite_difference (Eq. 9). Returns the config locked."""
    from robustgan.game import GRADREGS

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


def wang_yu_table1_config(title: str, config_file: str, *, paper=None) -> ml_collections.ConfigDict:
    """Wang & Yu's Table 1 layout on `config_file`'s ',cpu' recipes: rows standard (A),
    PGD-AT (B), advnet (C) and EAT (on A's examples), surrogates TABLE1_SURROGATES."""
    return table_config(
        title, config_file,
        rows=[("standard (A)", "standard,cpu", 0), ("PGD-AT (B)", "pgd_at,cpu", 0),
              ("advnet (C)", "advnet,cpu", 0), ("EAT", "eat,cpu", 0)],
        surrogates=TABLE1_SURROGATES, paper=paper, eat_sources=("standard (A)",),
    )


def gradreg_study_config(title: str, config_file: str, *, rows, surrogates,
                         agreement_row: str) -> ml_collections.ConfigDict:
    """The exact-vs-finite-difference study (robustgan/gradreg_study.py): a table of advnet
    runs, one per gradreg mode (rows), with transfer from `surrogates`; agreement probed
    along the run of row `agreement_row`."""
    c = table_config(title, config_file, rows=rows, surrogates=surrogates)
    with c.unlocked():
        c.study = ml_collections.ConfigDict()
        c.study.agreement_row = agreement_row
        c.study.fd_steps = tuple(10.0 ** -k for k in range(1, 8))
        c.study.cost_steps = 5
        c.study.cost_rounds = 5
    return c


def generator_attack_config(title: str, config_file: str, *, target, others, generators,
                            steps: int, paper=None) -> ml_collections.ConfigDict:
    """Wang & Yu's Table 5 (robustgan/generator_table.py): `generators` ((row label,
    generator name, width k; 0: the paper's k), ...) each trained for `steps` minibatches
    against the classifier of run `target` ((name, config argument, seed)), then applied
    to it and to the runs `others`. G's optimizer defaults to Adam 0.002, beta1 0.5 (the
    paper's CIFAR G optimizer; Sec. 4.5 ran SGD 0.01 for 200k steps)."""
    c = table_config(title, config_file, rows=[target], surrogates=others, paper=paper)
    with c.unlocked():
        g = c.generator_attacks = ml_collections.ConfigDict()
        g.generators = tuple(tuple(row) for row in generators)
        g.steps = steps
        g.batch_size = 64
        g.eps = 0.0  # in [0, 1] pixel units; 0: the target's evaluation eps
        g.optimizer = base_config().advnet.g_optimizer
        g.optimizer.name = "adam"
        g.optimizer.learning_rate = 0.002
        g.optimizer.b1 = 0.5
    return c


def apply_advnet_paper(c: ml_collections.ConfigDict, *, generator: str, weight_decay: float,
                       d_every: int = 1, g_adam: bool = False) -> None:
    """Wang & Yu's advnet setting (Secs. 3.2, 4): G's eps is the evaluation eps; lambda 1,
    gamma 0.01, h = eta_G / 10, 5 ascent steps per G update (base_config's defaults); G
    trained by SGD 0.01 momentum 0.9, or Adam 0.002 beta1 0.5 (`g_adam`, CIFAR), at a
    constant rate; `weight_decay` for D and G alike; D updated every `d_every` iterations."""
    c.advnet.eps = c.eval.eps
    c.advnet.generator = generator
    c.advnet.d_every = d_every
    c.optimizer.weight_decay = c.advnet.g_optimizer.weight_decay = weight_decay
    if g_adam:
        c.advnet.g_optimizer.name = "adam"
        c.advnet.g_optimizer.learning_rate = 0.002
        c.advnet.g_optimizer.b1 = 0.5
