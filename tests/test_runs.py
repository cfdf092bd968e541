"""Finished runs as inputs (robustgan/runs.py): loading without data, warm starts, run
references, the resume guard's per-method keys, and a method that trains no classifier."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_config

from robustgan import config as configlib
from robustgan import data, main, methods, nets, runs, table, train
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec


def flat(tree):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 4-step standard run of D1 on the tiny data."""
    tmp = tmp_path_factory.mktemp("source")
    config = tiny_config(tmp, "standard", steps=4)
    workdir = str(tmp / "run")
    train.train(config, workdir)
    return config, workdir


def test_load_run_rebuilds_a_finished_run_without_reading_data(source, monkeypatch):
    config, workdir = source
    _, _, state = train.restore_trained(config, workdir)

    def no_data(*args, **kwargs):
        raise AssertionError("load_run read the dataset")

    monkeypatch.setattr(data, "load_dataset", no_data)
    run = runs.load_run(workdir)
    assert (run.step, run.config.method) == (4, "standard")
    np.testing.assert_array_equal(flat(run.state), flat(state))
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1), minval=-1.0, maxval=1.0)
    np.testing.assert_array_equal(run.classifier().logits(x),
                                  run.method.classifier(state).logits(x))
    with pytest.raises(ConfigError, match="has no network 'generator'.*'classifier'"):
        run.network("generator")
    with pytest.raises(ConfigError, match="holds no trained run"):
        runs.load_run(str(os.path.dirname(workdir)))


def test_runs_trained_before_the_platform_change_still_load(source, tmp_path):
    """Their config.json lacks the keys added since (init_from, eval.attacks, ...) and
    they have no run.json: the keys take their defaults, the shape comes from the data."""
    import shutil

    _, workdir = source
    old = str(tmp_path / "old")
    shutil.copytree(workdir, old)
    os.remove(os.path.join(old, runs.RUN_FILE))
    with open(os.path.join(old, runs.CONFIG_FILE)) as f:
        saved = json.load(f)
    del saved["init_from"], saved["eval"]["attacks"]
    with open(os.path.join(old, runs.CONFIG_FILE), "w") as f:
        json.dump(saved, f)
    run = runs.load_run(old)
    assert run.config.init_from.run == "" and tuple(run.config.eval.attacks) == ("fgsm", "pgd")
    np.testing.assert_array_equal(flat(run.state), flat(runs.load_run(workdir).state))


def _initial(config, tmp_path):
    _, _, method, state = train.prepare_run(config, str(tmp_path / "new"))
    return method, state


def test_init_from_takes_parameters_and_averages_and_leaves_the_rest(source, tmp_path):
    _, source_dir = source
    loaded = runs.load_run(source_dir).state
    # A standard classifier into advnet's D: its generator stays as initialized.
    config = tiny_config(tmp_path, "advnet", steps=2, **{
        "init_from.run": source_dir, "advnet.generator_width": 2})
    method, fresh = _initial(config, tmp_path)
    warm = runs.warm_start(method, fresh, config)
    np.testing.assert_array_equal(flat(warm.d.params), flat(loaded.params))
    np.testing.assert_array_equal(flat(warm.g.params), flat(fresh.g.params))
    np.testing.assert_array_equal(flat(warm.d.opt_state), flat(fresh.d.opt_state))
    assert int(warm.d.step) == 0
    assert not np.array_equal(flat(fresh.d.params), flat(loaded.params))


def test_init_from_in_the_training_loop_and_its_errors(source, tmp_path):
    _, source_dir = source
    loaded = runs.load_run(source_dir).state
    config = tiny_config(tmp_path, "pgd_at", steps=1, **{
        "init_from.run": source_dir, "init_from.networks": ("classifier",),
        "optimizer.learning_rate": 1e-9})
    _, _, state = train.train(config, str(tmp_path / "warm"))
    np.testing.assert_allclose(flat(state.params), flat(loaded.params), atol=1e-6)

    other = tiny_config(tmp_path, "standard", steps=1, **{
        "init_from.run": source_dir, "model.name": "lenet5"})
    with pytest.raises(ConfigError, match="does not fit this run's"):
        runs.warm_start(*_initial(other, tmp_path), other)
    unknown = tiny_config(tmp_path, "standard", steps=1, **{
        "init_from.run": source_dir, "init_from.networks": ("critic",)})
    with pytest.raises(ConfigError, match="names 'critic'"):
        runs.warm_start(*_initial(unknown, tmp_path), unknown)
    with pytest.raises(ConfigError, match="init_from.run is empty"):
        configlib.validate(tiny_config(tmp_path, **{"init_from.networks": ("classifier",)}))


def test_references_resolve_table_names_and_keep_paths():
    config = configlib.base_config()
    config.method, config.eat.sources = "eat", ("A", "/runs/b")
    config.init_from.run = "A"
    assert runs.references(config) == {"init_from.run": ("A",), "eat.sources": ("A", "/runs/b")}
    resolved = runs.resolve(config, {"A": "/runs/a"})
    assert (resolved.init_from.run, resolved.eat.sources) == ("/runs/a", ("/runs/a", "/runs/b"))
    assert config.eat.sources == ("A", "/runs/b")  # a copy


def test_resume_guard_allows_the_method_s_own_resumable_keys(tmp_path):
    def eat_config(sources, eps=0.3):
        c = configlib.base_config()
        c.method, c.eat.sources, c.train_attack.eps = "eat", sources, eps
        return c

    with open(tmp_path / "config.json", "w") as f:
        f.write(eat_config(("/old/place",)).to_json_best_effort())
    runs.check_same_run(eat_config(("/new/place",)), str(tmp_path))  # sources moved: fine
    with pytest.raises(ConfigError, match=r"train_attack.eps: 0.3 -> 0.2"):
        runs.check_same_run(eat_config(("/old/place",), eps=0.2), str(tmp_path))
    assert "eat.sources" in configlib.resumable_keys(eat_config(()))
    assert "eat.sources" not in configlib.resumable_keys(configlib.base_config())


class Denoiser(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(x.shape[-1], (3, 3))(x)


def denoiser(config, num_classes, runs_=None) -> Method:
    """A method that trains no classifier: an image-to-image network on noisy images."""
    module, tx = Denoiser(), optax.adam(1e-2)

    def init(rng, sample_x):
        return nets.init_state(module.init(rng, sample_x), tx)

    def train_step(state, x, y, rng):
        noisy = x + 0.1 * jax.random.normal(rng, x.shape)
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((module.apply({"params": p}, noisy) - x) ** 2))(state.params)
        return nets.apply_gradients(state, tx, grads), {"loss": loss}

    return Method(init=init, train_step=train_step, classifier=None,
                  networks={"generator": ""})


@pytest.fixture
def with_denoiser(monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "denoiser", MethodSpec("denoiser", build=denoiser))


def test_a_method_without_a_classifier_trains_checkpoints_and_is_not_evaluated(
        with_denoiser, tmp_path):
    config = tiny_config(tmp_path, "denoiser", steps=8)
    workdir = str(tmp_path / "run")
    assert main.run(config, workdir, "train") == {}
    losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    run = runs.load_run(workdir)
    assert run.step == 8 and set(run.method.networks) == {"generator"}
    with pytest.raises(ConfigError, match="produces no classifier"):
        run.classifier()
    # A longer run resumes from its checkpoint, as any run does.
    longer = tiny_config(tmp_path, "denoiser", steps=10)
    _, _, state = train.train(longer, workdir)
    assert int(state.step) == 10


def _tiny_config_file(tmp_path):
    """A config file whose runs are `tiny_config`'s, 2 steps each."""
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import pathlib, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from helpers import tiny_config\n"
        "def get_config(arg):\n"
        f"    return tiny_config(pathlib.Path({str(tmp_path)!r}), arg, steps=2)\n")
    return config_file


def test_a_table_trains_a_classifier_free_row_and_evaluates_the_others(
        with_denoiser, tmp_path):
    config_file = _tiny_config_file(tmp_path)
    config = configlib.table_config("t", str(config_file), surrogates=[], rows=[
        ("G", "denoiser", 0), ("std", "standard", 0)])
    with config.unlocked():
        config.progress_bar = False
    results = table.run_table(config, str(tmp_path / "table"))
    assert list(results) == ["std"]
    assert os.path.isdir(tmp_path / "table" / "denoiser_seed0" / "checkpoints")


def test_a_stopped_table_resumes_from_its_saved_rows_under_the_same_key(tmp_path, monkeypatch):
    config_file = _tiny_config_file(tmp_path)

    def layout(pgd_steps):
        config = configlib.table_config("t", str(config_file), surrogates=[], attacks=("fgsm",),
                                        rows=[("std", "standard", 0, {
                                            "eval.pgd_steps": pgd_steps,
                                            "eval.substitute": "dgan_e",
                                            "eval.substitute_seed_size": 16,
                                            "eval.substitute_rounds": 1,
                                            "eval.substitute_epochs": 1,
                                            "eval.measures": True,
                                            "eval.deepfool_steps": 3,
                                            "eval.measure_examples": 32})])
        with config.unlocked():
            config.progress_bar = False
        return config

    workdir = str(tmp_path / "table")
    partial = os.path.join(workdir, "table.partial.json")
    with monkeypatch.context() as m:  # stopped after its row, before writing the table
        m.setattr(table.RowResults, "done", lambda self: None)
        first = table.run_table(layout(10), workdir)
    with open(partial) as f:
        saved = json.load(f)
    assert saved["std"]["results"] == {k: v for k, v in first["std"].items() if k != "substitute"}
    assert saved["std (substitute)"]["results"]["fgsm_accuracy"] == first["std"]["substitute"]
    with open(os.path.join(workdir, "table.json")) as f:
        assert saved["std (measures)"]["results"] == json.load(f)["measures"]["std"]
    saved["std"]["results"]["clean"] = 0.25  # a marker: reused, not recomputed
    with open(partial, "w") as f:
        json.dump(saved, f)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated a row whose results were saved")

    monkeypatch.setattr(table.protocol, "accuracy_under_attacks", no_evaluation)
    monkeypatch.setattr(table.protocol, "substitute_black_box", no_evaluation)
    monkeypatch.setattr(table.protocol, "protocol_measures", no_evaluation)
    kept_otherwise = layout(10)  # checkpointing and logging do not change the scores
    kept_otherwise.table.rows = tuple((*row[:3], (*row[3], ("checkpoint_every", 1)))
                                      for row in kept_otherwise.table.rows)
    assert table.run_table(kept_otherwise, workdir)["std"]["clean"] == 0.25
    assert not os.path.exists(partial)  # the table is written: nothing left to resume
    with open(partial, "w") as f:
        json.dump(saved, f)
    with pytest.raises(AssertionError, match="evaluated a row"):  # another key: recomputed
        table.run_table(layout(3), workdir)


def test_a_table_s_runs_train_and_score_apart_and_equal_time_rows_get_their_own_directory(
        tmp_path, monkeypatch):
    config_file = _tiny_config_file(tmp_path)
    config = configlib.table_config("t", str(config_file), surrogates=[], attacks=("fgsm",), rows=[
        ("short", "standard", 0), ("long", "standard", 0, {"num_train_steps": 4})])
    workdir = str(tmp_path / "table")
    with config.unlocked():
        config.progress_bar = False
        config.table.train_runs = ("long",)  # trained first, by another process
    assert main.run(config, workdir, "train") == {}
    assert os.listdir(workdir) == ["standard_seed0_steps4"]
    with config.unlocked():
        config.table.train_runs = ("missing",)
    with pytest.raises(ConfigError, match="not runs of the table"):
        main.run(config, workdir, "train")
    with pytest.raises(ConfigError, match="--mode eval needs a run config"):
        main.run(config, workdir, "eval")
    with config.unlocked():
        config.table.train_runs = ()
    trained, run_dirs, _ = table.train_runs(config, workdir)
    assert run_dirs == {"short": os.path.join(workdir, "standard_seed0"),
                        "long": os.path.join(workdir, "standard_seed0_steps4")}
    assert runs.load_run(run_dirs["short"]).step == 2
    assert runs.load_run(run_dirs["long"]).step == 4
    # Rows scored apart (table.score_rows) wait in the partial file; the table reuses them.
    with config.unlocked():
        config.table.score_rows = ("long",)
    assert list(main.run(config, workdir, "table")) == ["long"]
    assert not os.path.exists(os.path.join(workdir, "table.md"))
    with open(os.path.join(workdir, "table.partial.json")) as f:
        assert list(json.load(f)) == ["long"]
    scored = []
    score = table.protocol.accuracy_under_attacks
    monkeypatch.setattr(table.protocol, "accuracy_under_attacks",
                        lambda clf, *a, **k: scored.append(clf) or score(clf, *a, **k))
    with config.unlocked():
        config.table.score_rows = ()
    assert list(main.run(config, workdir, "table")) == ["short", "long"]
    assert len(scored) == 1 and os.path.exists(os.path.join(workdir, "table.md"))
    with config.unlocked():
        config.table.score_rows = ("nothing",)
    with pytest.raises(ConfigError, match="score_rows names"):
        main.run(config, workdir, "table")


def test_a_run_trained_past_its_steps_gives_that_step_s_checkpoint_or_refuses(tmp_path):
    workdir = str(tmp_path / "run")
    _, _, four = train.train(tiny_config(tmp_path, "standard", steps=4), workdir)
    train.train(tiny_config(tmp_path, "standard", steps=8), workdir)  # checkpoints 4 and 8
    _, _, again = train.train(tiny_config(tmp_path, "standard", steps=4), workdir)
    assert int(again.step) == 4
    np.testing.assert_array_equal(flat(again.params), flat(four.params))
    with pytest.raises(ConfigError, match="past num_train_steps=2, whose checkpoint was not kept"):
        train.train(tiny_config(tmp_path, "standard", steps=2), workdir)
