"""The config schema and its validation.

A config file in configs/ is `get_config(arg) -> ConfigDict` (big_vision style); `arg`
names the method, optionally followed by comma-separated options
(`configs/mnist.py:pgd_at,cpu`). The dataset files take their settings from the papers'
recipes (robustgan/recipes/). Everything a run needs is in the ConfigDict, which is
locked: an unknown key is an error, never silently added.

`base_config` holds the keys every run reads; each registered method adds its own block
(`MethodSpec.defaults`, stored as config.<method name>). `table_config` and
`study_config` are the schema of results tables and studies.
"""

from __future__ import annotations

import importlib.util
import os
import re

import ml_collections

from robustgan import methods, optim
from robustgan.attacks import common as attack_common
from robustgan.checks import check_at_least, check_choice, check_range
from robustgan.data import default_source
from robustgan.errors import ConfigError
from robustgan.evaluate.columns import white_box as attacks_by_name

DATA_SOURCES = ("tfds", "idx", "imagefolder", "npz", "embedded")
BATCH_NORM_MODES = ("eval", "batch_stats")
# Keys (or key prefixes ending in '.') a resumed run may change: how long it runs and logs,
# where its data and warm-start run lie (runs move between directories and machines), and
# how it is evaluated. Each method adds its own (`MethodSpec.resumable`). Any other
# difference means a checkpoint belongs to another recipe.
RESUMABLE_KEYS = ("num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                  "progress_bar", "data.dir", "eval.", "init_from.run")


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
    c.optimizer = optim.optimizer_config()

    # Warm start (big_vision's model_init): before the first step, the named networks
    # (`Method.networks`, e.g. 'classifier'; () = every network both methods have) take
    # their parameters and BatchNorm averages from the finished run `run` (a run
    # directory, or in a table the name of an earlier row). Optimizer states start fresh.
    c.init_from = ml_collections.ConfigDict()
    c.init_from.run = ""
    c.init_from.networks = ()

    # A defense's input front end (Defense-GAN's projection, Samangouei et al. Sec. 3.2):
    # the classifier is evaluated behind the front end that the finished run `run` (a run
    # directory, or in a table the name of an earlier row; '' = none) offers
    # (`MethodSpec.front_end`), with this config's settings for it
    # (config.defense_gan.projection: evaluation settings). train: the classifier also
    # trains on the front end's outputs (Defense-GAN-Rec; Orig when False).
    c.front_end = ml_collections.ConfigDict()
    c.front_end.run = ""
    c.front_end.train = False

    # The attack adversarial training runs against (pgd_at, eat): Madry et al. PGD.
    c.train_attack = ml_collections.ConfigDict()
    c.train_attack.eps = 0.3
    c.train_attack.step_size = 0.075
    c.train_attack.steps = 10
    c.train_attack.random_start = True
    # The loss PGD ascends (attacks/common.LOSSES): 'margin' is the C&W loss under the
    # L-inf bound (Jang et al. Table 2's C&W100 defense).
    c.train_attack.loss = "ce"
    # eps grows linearly from 0 to eps over the first eps_ramp_steps (0: no ramp).
    c.train_attack.eps_ramp_steps = 0
    # FracAT (Wang et al., ATGAN): the fraction of each batch replaced by adversarial images.
    c.train_attack.fraction = 1.0
    c.train_attack.batch_norm = "batch_stats"
    c.train_attack.unroll = 0  # 0: the attack's default for this backend

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 500
    # White-box columns after 'clean', by name (evaluate/columns.py): 'fgsm', 'pgd',
    # 'apgd_ce', 'bpda(pgd)', 'eot(pgd, 10)', 'pgd40=pgd(steps=40)', ...
    c.eval.attacks = ("fgsm", "pgd")
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
    # DeepFool's steps for rho (clipped to the image range, and the paper's unclipped):
    # enough to converge; the loop stops once every image is fooled.
    c.eval.deepfool_steps = 50
    c.eval.curve_eps_fractions = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    # Substitute black box (Papernot et al., as Defense-GAN): a model name ('' = skip),
    # seeded with the first `substitute_seed_size` evaluation images.
    c.eval.substitute = ""
    c.eval.substitute_seed_size = 150
    c.eval.substitute_rounds = 6
    c.eval.substitute_epochs = 10
    # FGSM eps beyond eval.eps on the same substitute (Defense-GAN's Table 3), one column each.
    c.eval.substitute_eps = ()

    for spec in methods.REGISTRY.values():
        if spec.defaults is not None:
            c[spec.name] = spec.defaults()

    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    # Options given after the method in the config argument (e.g. "cpu"), for the record.
    c.options = ""
    return c


# Dataset names whose TFDS name differs, and class counts other than 10.
TFDS_NAMES = {"svhn": "svhn_cropped"}
NUM_CLASSES = {"cifar100": 100, "imagenet2012": 1000}


def method_config(method: str, options, dataset: str) -> ml_collections.ConfigDict:
    """base_config() for `method` with `options` on `dataset`: its data source, class count
    and the [0, 1] value range (what a paper's recipe starts from)."""
    c = base_config()
    c.method = method
    c.options = ",".join(sorted(options))
    c.data.name = TFDS_NAMES.get(dataset, dataset)
    c.data.source, c.data.dir = default_source(c.data.name)
    c.data.num_classes = NUM_CLASSES.get(dataset, 10)
    c.data.value_range = (0.0, 1.0)
    return c


def parse_arg(arg: str | None, known_options=()) -> tuple[str, set[str]]:
    """Splits 'method[,option...]' and checks both against what the config file offers."""
    parts = [p.strip() for p in (arg or "standard").split(",") if p.strip()]
    method, options = parts[0], set(parts[1:])
    if method not in methods.REGISTRY:
        raise ConfigError(
            f"unknown method {method!r} in the config argument; choose one of "
            f"{tuple(methods.REGISTRY)}"
        )
    unknown = options - set(known_options)
    if unknown:
        raise ConfigError(
            f"unknown config option(s) {sorted(unknown)}; "
            f"this config offers {sorted(known_options)}"
        )
    return method, options


def validate(config: ml_collections.ConfigDict) -> None:
    """Stops a bad config before anything is loaded or compiled, naming the key."""
    spec = methods.spec(config.method)
    check_choice("data.source", config.data.source, DATA_SOURCES)
    optim.check_optimizer_config("optimizer", config.optimizer)
    check_choice("train_attack.loss", config.train_attack.loss, attack_common.LOSSES)
    check_choice("train_attack.batch_norm", config.train_attack.batch_norm, BATCH_NORM_MODES)
    check_choice("eval.batch_norm", config.eval.batch_norm, BATCH_NORM_MODES)
    check_choice("eval.split", config.eval.split, ("test", "validation"))
    for key in ("train_attack.eps", "train_attack.step_size", "eval.eps", "eval.pgd_step_size"):
        check_range(key, get(config, key), 0.0, 1.0)
    check_range("train_attack.fraction", config.train_attack.fraction, 0.0, 1.0)
    for eps in config.eval.substitute_eps:
        check_range("eval.substitute_eps", eps, 0.0, 1.0)
    if config.eval.eps in config.eval.substitute_eps:
        raise ConfigError(f"config.eval.substitute_eps repeats eval.eps={config.eval.eps}, "
                          "which the 'substitute' column already measures")
    if config.eval.substitute_eps and not config.eval.substitute:
        raise ConfigError("config.eval.substitute_eps is set but config.eval.substitute is "
                          "empty: name the substitute model to craft FGSM on")
    for key in ("batch_size", "num_train_steps", "eval.batch_size", "log_every",
                "checkpoint_every", "keep_checkpoints", "data.num_classes"):
        check_at_least(key, get(config, key), 1, "a positive integer")
    for key in ("train_attack.steps", "eval.pgd_steps", "eval.pgd_restarts"):
        check_at_least(key, get(config, key), 1, "at least 1")
    low, high = config.data.value_range
    if not low < high:
        raise ConfigError(
            f"config.data.value_range={tuple(config.data.value_range)} must be (low, high)"
        )
    check_at_least("data.validation_size", config.data.validation_size, 0)
    if config.eval.split == "validation" and config.data.validation_size == 0:
        raise ConfigError("config.eval.split='validation' needs config.data.validation_size > 0")
    attacks_by_name(config.eval)  # every column spec names an attack and its settings
    if config.init_from.networks and not config.init_from.run:
        raise ConfigError("config.init_from.networks is set but config.init_from.run is empty: "
                          "name the run to warm-start from")
    if config.front_end.train and not config.front_end.run:
        raise ConfigError("config.front_end.train is set but config.front_end.run is empty: "
                          "name the run whose front end to train on")
    spec.validate(config)


def resumable_keys(config) -> tuple[str, ...]:
    """Keys (or prefixes) a resumed run of config.method may change (RESUMABLE_KEYS plus
    the method's own); unless the run trains on its front end's outputs, also its front
    end's run and settings (every method's `front_end_keys`: which method the run names
    is not known here, and the others' are read by nothing)."""
    keys = RESUMABLE_KEYS + methods.spec(config.method).resumable
    if config.front_end.train:
        return keys
    return keys + ("front_end.run",) + tuple(
        k for spec in methods.REGISTRY.values() for k in spec.front_end_keys)


def is_resumable(key: str, resumable: tuple[str, ...]) -> bool:
    """Whether the dotted `key` is one of `resumable` or under a prefix of it ending in '.'."""
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in resumable)


def reference_keys(config) -> tuple[str, ...]:
    """Keys whose values name finished runs: config.init_from.run, config.front_end.run
    and the method's own."""
    return ("init_from.run", "front_end.run") + methods.spec(config.method).references


def get(config, dotted: str):
    """config['a.b.c'] for a dotted key."""
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


def table_config(title: str, config_file: str, *, rows, surrogates, attacks=("fgsm", "pgd"),
                 paper=None, eps_ref_row: str = "", sweeps=()) -> ml_collections.ConfigDict:
    """A results table in the papers' layout (`--mode table`).

    rows / surrogates: (name, config argument of `config_file`, seed[, overrides]), with
    overrides a {dotted key: value} dict applied to that run's config. A run reference
    in an override (e.g. 'eat.sources', 'init_from.run') may name an earlier row or
    surrogate. Rows whose configs differ only in evaluation settings share one trained
    run. Each row is attacked white box (clean, then `attacks`: column specs as
    config.eval.attacks) and black box by transfer (`attacks` crafted on each
    surrogate). paper: row name -> the paper's numbers for those columns, printed beside
    ours (kept as (name, numbers) pairs: row names such as 'Adv. Tr. eps=0.3' hold
    dots, which a ConfigDict key may not). eps_ref_row: the row whose eps_ref (Deep
    Defense Sec. 4.1) every row's accuracy at 0.2/0.5/1.0 eps_ref is measured at ('' =
    the first row). sweeps: (axis label, ((row name, x value), ...)) pairs, rows that vary
    one setting: each is a panel of `<output>_sweeps.png`, every column's accuracy
    against x (Defense-GAN's Figure 3).
    """
    c = ml_collections.ConfigDict()
    c.table = ml_collections.ConfigDict()
    c.table.title = title
    c.table.config_file = os.path.abspath(config_file)
    c.table.rows = tuple(_table_run(r) for r in rows)
    c.table.surrogates = tuple(_table_run(r) for r in surrogates)
    c.table.attacks = tuple(attacks)
    c.table.paper = tuple((k, tuple(v)) for k, v in (paper or {}).items())
    c.table.eps_ref_row = eps_ref_row
    c.table.sweeps = tuple((label, tuple((row, x) for row, x in points))
                           for label, points in sweeps)
    c.table.eval_num_examples = 0  # 0: the whole test split
    # workdir/<output>.md, .json, .png: layouts that share one workdir (and so its
    # trained runs) name their outputs apart.
    c.table.output = "table"
    # `--mode train` on a table config trains these runs only (() = every run) and
    # stops: a table's runs spread over machines, then `--mode table` reuses them.
    c.table.train_runs = ()
    # `--mode table` scores these rows only (() = every row, then the table is written),
    # their runs and the surrogates already trained: a table's evaluation spread over
    # machines in one workdir; their results wait in <output>.partial.json.
    c.table.score_rows = ()
    c.progress_bar = True
    attacks_by_name(base_config().eval, c.table.attacks)
    names = [r[0] for r in (*c.table.rows, *c.table.surrogates)]
    if len(set(names)) != len(names):
        raise ConfigError(f"table runs need distinct names, got {names}")
    row_names = [r[0] for r in c.table.rows]
    if eps_ref_row and eps_ref_row not in row_names:
        raise ConfigError(f"eps_ref_row={eps_ref_row!r} is not one of the rows")
    unknown = [row for _, points in c.table.sweeps for row, _ in points if row not in row_names]
    if unknown:
        raise ConfigError(f"sweeps name rows that are not in the table: {unknown}")
    c.lock()
    return c


def _table_run(run) -> tuple:
    """(name, arg, seed, ((key, value), ...)): overrides as sorted pairs (a ConfigDict
    holds no dicts inside tuples)."""
    name, arg, seed, *rest = run
    overrides = rest[0] if rest else {}
    return (name, arg, seed, tuple(sorted(dict(overrides).items())))


def study_config(name: str, title: str, config_file: str, *, rows, surrogates, settings,
                 paper=None) -> ml_collections.ConfigDict:
    """A study (`--mode study`, robustgan/studies/): the table of runs it needs (as
    `table_config`) plus config.study = {'name': the registered study, **settings}."""
    c = table_config(title, config_file, rows=rows, surrogates=surrogates, paper=paper)
    with c.unlocked():
        c.study = ml_collections.ConfigDict({"name": name, **settings})
    return c
