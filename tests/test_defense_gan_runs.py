"""Defense-GAN end to end from configs (Samangouei et al., ICLR 2018): a classifier run
defended by a GAN run (config.front_end.run), trained on reconstructions
(config.front_end.train), and the recipe's settings and tables."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import config_file_calling, run_table_with_dirs, tiny_config
from test_attacks import linear_apply
from test_attacks_adaptive import quantize
from test_defense_gan import TINY

from robustgan import attacks, data, recipes, runs, table, train
from robustgan import config as configlib
from robustgan.attacks import projection as proj
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.evaluate import columns, protocol
from robustgan.methods import defense_gan
from robustgan.recipes import defense_gan as recipe

PROJECTION = {"defense_gan.projection.steps": 2, "defense_gan.projection.restarts": 2}
EXAMPLES = 16


def _tiny(tmp_path, arg, steps=2, **overrides):
    """The tiny GAN ('gan') or classifier ('clf'), evaluated on 16 images in one batch."""
    if arg == "gan":
        method, model = "defense_gan", "d1"
    else:  # Table 5's model D (two FC layers): the classifier that compiles fastest
        method, model = "standard", "dgan_d"
    return tiny_config(tmp_path, method, steps=steps, checkpoint_every=2, **TINY,
                       **{"model.name": model},
                       **{"eval.batch_size": EXAMPLES, "eval.num_examples": EXAMPLES},
                       **overrides)


def _project(gan, x, rng):
    """G(z*(x)) through `gan`'s generator at PROJECTION, computed directly."""
    p = gan.config.defense_gan.projection
    generate = defense_gan.GeneratorApply(defense_gan.wgan_gp(gan.config, 1).generator)
    return proj.project(generate, {"params": gan.state.generator.params}, x, rng,
                        latent_dim=gan.config.defense_gan.latent_dim, steps=2, restarts=2,
                        step_size=p.step_size, momentum=p.momentum, data_scale=2.0
                        ).reconstruction


@pytest.fixture(scope="module")
def defended_table(tmp_path_factory):
    """A table: the GAN, the classifier undefended, and the same classifier run behind the
    GAN's projection (eval-only overrides)."""
    tmp_path = tmp_path_factory.mktemp("dgan_runs")
    config_file = config_file_calling(tmp_path, "test_defense_gan_runs", "_tiny")
    config = configlib.table_config("t", str(config_file), surrogates=[], attacks=(), rows=[
        ("GAN", "gan", 0), ("No defense", "clf", 0),
        ("Defense-GAN-Orig", "clf", 0, {"front_end.run": "GAN", **PROJECTION})])
    with config.unlocked():
        config.progress_bar = False
    workdir = tmp_path / "table"
    results, run_dirs = run_table_with_dirs(config, workdir)
    return tmp_path, results, run_dirs


def test_the_defended_row_is_the_classifier_on_the_projections(defended_table):
    tmp_path, results, run_dirs = defended_table
    assert list(results) == ["No defense", "Defense-GAN-Orig"]  # the GAN is not evaluated
    # L and R are evaluation settings: both rows evaluate one trained classifier run.
    assert run_dirs["No defense"] == run_dirs["Defense-GAN-Orig"]
    gan, clf = runs.load_run(run_dirs["GAN"]), runs.load_run(run_dirs["No defense"])
    dataset = data.load_dataset(clf.config.data)
    x = data.scale(dataset.x_test[:EXAMPLES], (-1.0, 1.0))
    y = dataset.y_test[:EXAMPLES]
    # The table's one batch draws with fold_in(key(seed + 2), 0); the front end its half.
    rng = jax.random.split(jax.random.fold_in(jax.random.key(2), 0))[0]
    rec = _project(gan, x, rng)
    assert float(np.abs(rec - x).max()) > 0.1
    model = clf.method.classifier(clf.state)
    accuracy = lambda images: float(np.mean(model.logits(images).argmax(-1) == y))
    assert results["No defense"]["clean"] == accuracy(x)
    assert results["Defense-GAN-Orig"]["clean"] == accuracy(rec)


def test_a_front_end_from_a_run_that_offers_none_is_a_config_error(defended_table):
    tmp_path, _, run_dirs = defended_table
    clf = runs.load_run(run_dirs["No defense"])
    config = _tiny(tmp_path, "clf", **{"front_end.run": run_dirs["No defense"]})
    with pytest.raises(ConfigError, match="'standard', which offers no front end"):
        runs.evaluated_classifier(config, clf.method, clf.state)
    with pytest.raises(ConfigError, match="front_end.run is empty"):
        configlib.validate(_tiny(tmp_path, "clf", **{"front_end.train": True}))


def test_projection_settings_are_evaluation_only_unless_trained_on(tmp_path):
    orig = _tiny(tmp_path, "clf", **{"front_end.run": "GAN"})
    rec = _tiny(tmp_path, "clf", **{"front_end.run": "GAN", "front_end.train": True})
    overrides = (("defense_gan.projection.steps", 7), ("front_end.run", "GAN"))
    assert table.run_name(orig, overrides) == "standard_seed0"
    assert table.run_name(rec, overrides) != table.run_name(orig)
    resumable = configlib.resumable_keys(rec)
    assert not configlib.is_resumable("defense_gan.projection.steps", resumable)
    assert not configlib.is_resumable("front_end.run", resumable)


def test_defense_gan_rec_trains_on_the_reconstructions(defended_table):
    """With config.front_end.train, the loop's step (`train.step_on_front_end`) hands the
    method G(z*(batch)), drawn with the first half of the step's key, and the second half."""
    tmp_path, _, run_dirs = defended_table
    config = _tiny(tmp_path, "clf", **{"front_end.run": run_dirs["GAN"],
                                       "front_end.train": True, **PROJECTION})
    front, variables = runs.front_end(config)
    x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1), minval=-1.0, maxval=1.0)
    key = jax.random.key(4)
    seen, rng = train.step_on_front_end(lambda s, x_, y, r: (x_, r), front, None, x, None,
                                        key, variables)
    front_rng, step_rng = jax.random.split(key)
    np.testing.assert_allclose(seen, _project(runs.load_run(run_dirs["GAN"]), x, front_rng),
                               atol=1e-6)
    assert jax.random.key_data(rng).tolist() == jax.random.key_data(step_rng).tolist()
    without, _ = train.step_on_front_end(lambda s, x_, y, r: (x_, r), None, None, x, None,
                                         key, None)
    assert without is x


@pytest.mark.parametrize("dataset", recipe.DATASETS)
def test_the_recipe_holds_the_papers_settings(dataset):
    file = f"configs/{dataset}.py"
    gan = recipes.get_config(dataset, "defense_gan", file)
    g = gan.defense_gan
    # A train step: 5 critic steps on batches of 50, then a generator step; 200k of them.
    assert (gan.method, gan.batch_size, gan.num_train_steps) == ("defense_gan", 250, 200_000)
    assert (g.learning_rate, g.b1, g.b2, g.latent_dim, g.critic_steps, g.gp_weight) == (
        1e-4, 0.5, 0.9, 128, 5, 10.0)
    assert tuple(gan.data.value_range) == (0.0, 1.0)
    assert recipes.get_config(dataset, "defense_gan,cpu", file).num_train_steps == 1_000
    for model in recipe.CLASSIFIERS:
        clf = recipes.get_config(dataset, f"standard,defense_gan,{model}", file)
        assert (clf.method, clf.model.name, clf.batch_size, clf.num_train_steps) == (
            "standard", f"dgan_{model}", 50, 12_000)
        assert (clf.optimizer.name, clf.optimizer.learning_rate) == ("adam", 1e-3)
        p = clf.defense_gan.projection
        assert (p.steps, p.restarts, clf.eval.eps) == (200, 10, 0.3)  # Table 4: L=200, R=10
        assert clf.eval.attacks[:2] == ("fgsm", "rand_fgsm")
        assert "cw_l2(steps=100, learning_rate=10, initial_const=100, binary_steps=1)" in (
            clf.eval.attacks[2])
    with pytest.raises(ConfigError, match="several classifiers"):
        recipes.get_config(dataset, "standard,defense_gan,a,b", file)


def test_the_layouts_share_one_workdir_under_their_own_output_names():
    names = ("defense_gan_table1_cpu", "defense_gan_table1_e_cpu", "defense_gan_table4_cpu",
             "defense_gan_lr_sweep_cpu")
    configs = [recipes.get_config("mnist", name, "configs/mnist.py") for name in names]
    outputs = {c.table.output for c in configs}
    assert len(outputs) == len(names) and "table" not in outputs
    runs_of = set()
    for c in configs:  # the GAN and classifier A are the same runs in every layout
        run_dirs = {}
        for row in c.table.rows:
            if row[0] in ("GAN", "No defense"):
                run_dirs[row[0]] = f"/runs/{row[0]}"
                runs_of.add(table.run_name(table.table_run_config(c.table, row, False, run_dirs),
                                           row[3]))
    assert runs_of == {"defense_gan_cpu_seed0", "standard_a_cpu_seed0"}


def test_table4_holds_the_papers_rows_on_table1s_runs_with_the_papers_numbers():
    """Table 4's Defense-GAN-Rec, MagNet and Adv. Tr. rows train the same runs as Table
    1's (one workdir trains each once), and the paper's model-A numbers sit under their
    columns (clean, FGSM, RAND+FGSM, C&W-L2)."""
    table4, table1 = (recipes.get_config("mnist", name, "configs/mnist.py").table
                      for name in ("defense_gan_table4_cpu", "defense_gan_table1_cpu"))

    def runs(t):
        run_dirs = {"GAN": "/runs/GAN", "MagNet reformer": "/runs/MagNet reformer"}
        return {row[0]: table.run_name(table.table_run_config(t, row, False, run_dirs), row[3])
                for row in t.rows}

    rows4, rows1 = runs(table4), runs(table1)
    assert list(rows4) == ["GAN", "MagNet reformer", "No defense", "Defense-GAN-Rec",
                           "Defense-GAN-Orig", "Defense-GAN-Orig, known starts", "MagNet",
                           "Adv. Tr. eps=0.3"]
    assert {name: rows1[name] for name in rows4 if name in rows1} == {
        name: run for name, run in rows4.items() if name in rows1}
    assert rows4["Defense-GAN-Rec"] != rows4["No defense"] == rows4["MagNet"]
    paper = dict(table4.paper)
    assert table4.attacks[:3] == recipe.TABLE4_ATTACKS
    assert paper["Defense-GAN-Rec"] == (99.7, 98.8, 98.8, 98.9)
    assert paper["Adv. Tr. eps=0.3"] == (99.7, 65.1, 77.4, 7.7)
    assert set(paper) == {"No defense", "Defense-GAN-Rec", "MagNet", "Adv. Tr. eps=0.3"}


def test_the_cpu_tables_sweep_l_and_r_over_one_classifier_run():
    """Every row behind the projection (Defense-GAN-Orig, the L and R rows) validates and
    resolves to the classifier run of 'No defense' behind the GAN row's run."""
    for name in ("defense_gan_table4_cpu", "defense_gan_lr_sweep_cpu"):
        config = recipes.get_config("mnist", name, "configs/mnist.py")
        t = config.table
        run_dirs = {"GAN": "/runs/gan"}
        names, settings = set(), set()
        swept = [row for row in t.rows if row[0].startswith(("Defense-GAN-Orig", "L="))]
        for row in [row for row in t.rows if row[0] == "No defense"] + swept:
            run_config = table.table_run_config(t, row, False, run_dirs)
            names.add(table.run_name(run_config, row[3]))
            if run_config.front_end.run:
                assert run_config.front_end.run == "/runs/gan"
                p = run_config.defense_gan.projection
                settings.add((p.steps, p.restarts, p.starts))
        assert names == {"standard_a_cpu_seed0"}
        assert len(settings) == len(swept) > 0
        if name == "defense_gan_table4_cpu":  # drawn starts, then starts the attacker knows
            assert settings == {(10, 2, "drawn"), (10, 2, "fixed")}
            assert {"apgd_ce", "bpda(apgd_ce)"} <= set(t.attacks)
    assert settings == {(5, 2, "drawn"), (10, 2, "drawn"), (20, 2, "drawn"), (10, 1, "drawn"),
                        (10, 4, "drawn")}
    # Figure 3's curves: the L rows at R=2 and the R rows at L=10, by their settings.
    assert config.table.sweeps == (
        ("L (R=2)", (("L=5, R=2", 5), ("L=10, R=2", 10), ("L=20, R=2", 20))),
        ("R (L=10)", (("L=10, R=1", 1), ("L=10, R=2", 2), ("L=10, R=4", 4))))


def test_the_athalye_column_is_bpda_l2_pgd_within_their_mean_squared_distance():
    """Athalye et al.'s MNIST setting: BPDA through the front end, L2 PGD whose examples
    stay within a mean squared perturbation of 0.005 per [0, 1] pixel, and reach it on a
    linear model (whose loss grows along the gradient to the ball's edge)."""
    config = recipes.get_config("mnist", "defense_gan_table4_cpu", "configs/mnist.py")
    assert recipe.ATHALYE_L2 in config.table.attacks
    orig = next(row for row in config.table.rows if row[0] == "Defense-GAN-Orig")
    run_config = table.table_run_config(config.table, orig, False, {"GAN": "/runs/gan"})
    column = protocol.white_box_columns(run_config.eval, (recipe.ATHALYE_L2,))["athalye_l2"]
    rng = np.random.default_rng(0)
    variables = {"w": jnp.asarray(rng.normal(size=(784, 10)), jnp.float32),
                 "b": jnp.zeros(10, jnp.float32)}
    low, high = run_config.data.value_range
    classifier = attacks.with_front_end(  # a front end with no useful gradient
        quantize, {"levels": 4.0}, Classifier(linear_apply, variables, (low, high), 10))
    x = jnp.full((4, 28, 28, 1), (low + high) / 2)
    y = classifier.logits(x).argmax(-1)
    x_adv = column.attack(classifier, x, y, jax.random.key(0))
    pixels = (x_adv - x) / (high - low)  # [0, 1] pixel units
    mse = (pixels ** 2).reshape(4, -1).mean(1)
    assert np.all(mse <= recipe.ATHALYE_MSE * (1 + 1e-4))
    assert np.all(mse >= 0.99 * recipe.ATHALYE_MSE)
    assert column.attack.wrap is columns.bpda_column
