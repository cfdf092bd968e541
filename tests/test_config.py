import glob
import os

import pytest

from robustgan import config as configlib
from robustgan import methods, table
from robustgan.errors import ConfigError

CONFIG_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def _load(path, arg):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# method -> (the run reference its config cannot know, a value for it)
RUNS_FROM_THE_USER = {"eat": ("eat.sources", ("runs/standard",)),
                      "deep_defense": ("init_from.run", "runs/standard"),
                      "deepfool_at": ("deepfool_at.source", "runs/standard")}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("method", tuple(methods.REGISTRY))
def test_every_config_is_valid_for_every_method(path, method):
    c = _load(path, method)
    if method in RUNS_FROM_THE_USER:  # a finished run the user must name
        key, value = RUNS_FROM_THE_USER[method]
        with pytest.raises(ConfigError, match=key):
            configlib.validate(c)
        c = c.copy_and_resolve_references()
        parent, _, leaf = key.rpartition(".")
        configlib.get(c, parent)[leaf] = value
    configlib.validate(c)
    assert c.method == method
    assert 0 < c.eval.eps <= 1 and c.is_locked


def test_paper_settings_are_what_the_papers_state():
    mnist = _load(
        CONFIG_FILES[[os.path.basename(p) for p in CONFIG_FILES].index("mnist.py")], "pgd_at"
    )
    assert (mnist.eval.eps, mnist.batch_size, mnist.num_train_steps) == (0.3, 64, 200_000)
    assert mnist.train_attack.step_size == pytest.approx(0.075)
    assert tuple(mnist.data.value_range) == (-1.0, 1.0)
    cifar = _load(
        CONFIG_FILES[[os.path.basename(p) for p in CONFIG_FILES].index("cifar10.py")], "pgd_at"
    )
    assert cifar.eval.eps == pytest.approx(8 / 256) and cifar.optimizer.learning_rate == 0.1
    assert cifar.optimizer.weight_decay == 1e-5 and cifar.data.flip


def test_cpu_recipe_ramps_eps_over_the_first_epoch():
    c = _load(
        CONFIG_FILES[[os.path.basename(p) for p in CONFIG_FILES].index("mnist.py")], "pgd_at,cpu"
    )
    assert c.optimizer.name == "adam" and c.train_attack.eps_ramp_steps == 60_000 // 64
    assert c.num_train_steps == 3 * (60_000 // 64)


def test_bad_config_argument_is_named():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        configlib.parse_arg("nope")
    with pytest.raises(ConfigError, match="unknown config option"):
        configlib.parse_arg("standard,turbo", known_options=("cpu",))


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("train_attack.eps", 1.5, "train_attack.eps=1.5 is out of range"),
        ("eval.eps", -0.1, r"eval.eps=-0.1 is out of range"),
        ("optimizer.name", "lbfgs", "optimizer.name='lbfgs' is not valid"),
        ("batch_size", 0, "batch_size=0 must be a positive integer"),
        ("eval.batch_norm", "train", "eval.batch_norm='train' is not valid"),
        ("eval.attacks", ("fgsm", "pgd(stepz=3)"), r"pgd has no setting\(s\) \['stepz'\]"),
        ("eval.substitute_eps", (0.1,), "eval.substitute_eps is set but config.eval.substitute"),
    ],
)
def test_bad_values_stop_with_the_key_named(key, value, match):
    c = configlib.base_config()
    parent, _, leaf = key.rpartition(".")
    (c[parent] if parent else c)[leaf] = value
    with pytest.raises(ConfigError, match=match):
        configlib.validate(c)


def test_unknown_override_key_is_named_before_parsing():
    path = CONFIG_FILES[[os.path.basename(p) for p in CONFIG_FILES].index("mnist.py")]
    argv = ["prog", f"--config={path}:standard", "--config.train_attack.epz=0.1"]
    with pytest.raises(ConfigError, match=r"config.train_attack has no key 'epz'.*'eps'"):
        configlib.check_overrides(argv)
    configlib.check_overrides(["prog", "--config", path, "--config.eval.eps=0.2"])


@pytest.mark.parametrize(
    "file,arg",
    [("mnist.py", "table1"), ("mnist.py", "table5"), ("mnist.py", "gradreg_study"),
     ("fashion_mnist.py", "table1")],
)
def test_every_table_run_is_a_valid_config_of_its_file(file, arg):
    t = _load(CONFIG_FILES[[os.path.basename(p) for p in CONFIG_FILES].index(file)], arg).table
    run_dirs = {}
    for run in (*t.rows, *t.surrogates):
        c = table.table_run_config(t, run, False, run_dirs)  # validated, references resolved
        run_dirs[run[0]] = f"runs/{run[0]}"
        assert "cpu" in c.options.split(",")
        if c.method == "eat":
            assert c.eat.sources == ("runs/standard (A)",)


def test_two_gradreg_modes_in_one_argument_are_refused():
    path = CONFIG_FILES[[os.path.basename(p) for p in CONFIG_FILES].index("mnist.py")]
    with pytest.raises(ConfigError, match=r"gradreg modes \['exact', 'none'\]: name one"):
        _load(path, "advnet,cpu,exact,none")
    with pytest.raises(ConfigError, match="are for advnet"):
        _load(path, "standard,exact")


def test_a_table_with_an_unknown_column_stops_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'"):
        configlib.table_config("t", str(tmp_path / "cfg.py"), rows=[("a", "standard", 0)],
                               surrogates=[], attacks=("fgsm", "pgdd"))


def test_the_command_line_keeps_a_persistent_compilation_cache_unless_told_not_to():
    from robustgan import main

    home = os.path.expanduser("~")
    assert main.compilation_cache_dir({}) == os.path.join(home, ".cache", "robustgan", "jax")
    assert main.compilation_cache_dir({"ROBUSTGAN_JAX_CACHE": "/tmp/c"}) == "/tmp/c"
    assert main.compilation_cache_dir({"ROBUSTGAN_JAX_CACHE": ""}) is None  # off
    # JAX's own variable: JAX reads it, the command line leaves it alone.
    assert main.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/x",
                                       "ROBUSTGAN_JAX_CACHE": "/tmp/c"}) is None
