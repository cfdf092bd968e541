"""Defense-GAN's baselines (Samangouei et al., ICLR 2018): MagNet's reformer (appendix
Table 7; Meng & Chen 2017) as a run that offers a front end, Adv. Tr. as pgd_at options,
and the Table 1 black-box layout (robustgan/methods/magnet.py, recipes/defense_gan.py)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import config_file_calling, run_table_with_dirs, tiny_config

from robustgan import attacks, data, recipes, runs, table
from robustgan import config as configlib
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods import magnet
from robustgan.models import magnet as magnet_models
from robustgan.models import wgan
from robustgan.recipes import defense_gan as recipe

TINY_AE = {"magnet.encoder_widths": (4, 4, 4), "magnet.generator_widths": (8, 8, 4),
           "magnet.latent_dim": 8}
EXAMPLES = 16
REFORMER_STEPS = 20


def _tiny(tmp_path, arg, **overrides):
    """The tiny reformer ('magnet': REFORMER_STEPS steps, each one logged) or classifier
    ('clf': Table 5's model D, 2 steps), evaluated on 16 images in one batch."""
    if arg == "magnet":
        method, steps, extra = "magnet", REFORMER_STEPS, {**TINY_AE, "log_every": 1}
    else:
        method, steps, extra = "standard", 2, {}
    return tiny_config(tmp_path, method, steps=steps, checkpoint_every=steps,
                       **{"model.name": "dgan_d", "eval.batch_size": EXAMPLES,
                          "eval.num_examples": EXAMPLES}, **extra, **overrides)


def _shapes(tree):
    return jax.tree.map(lambda leaf: leaf.shape, tree)


def test_the_encoder_is_table7_and_the_decoder_a_table6_generator():
    key, x = jax.random.key(0), jnp.zeros((1, 28, 28, 1))
    params = jax.eval_shape(magnet_models.MagNetAutoEncoder().init, key, x)["params"]
    encoder = _shapes(params["encoder"])
    assert [encoder[f"Conv_{i}"]["kernel"] for i in range(3)] == [
        (5, 5, 1, 64), (5, 5, 64, 128), (5, 5, 128, 256)]
    assert encoder["Dense_0"]["kernel"] == (4 * 4 * 256, 128)  # 28 -> 14 -> 7 -> 4, FC(128)
    generator = jax.eval_shape(wgan.WGANGenerator().init, key, jnp.zeros((1, 128)))["params"]
    assert _shapes(params["generator"]) == _shapes(generator)  # a defense_gan run's fits


def test_the_reformer_is_the_generator_of_the_tanh_code_in_the_data_range():
    module = magnet_models.MagNetAutoEncoder((4, 4, 4), (8, 8, 4), latent_dim=8,
                                             value_range=(-1.0, 1.0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1.0, 1.0, (5, 28, 28, 1)), jnp.float32)
    variables = jax.tree.map(  # N(0, 0.1^2) weights: no initializers to compile
        lambda leaf: jnp.asarray(0.1 * rng.standard_normal(leaf.shape), jnp.float32),
        jax.eval_shape(module.init, jax.random.key(0), x))
    out = jax.jit(module.apply)(variables, x)
    assert out.shape == x.shape and float(jnp.abs(out).max()) < 1.0
    params = variables["params"]
    encoder = magnet_models.MagNetEncoder((4, 4, 4), latent_dim=8)
    code = jax.jit(encoder.apply)({"params": params["encoder"]}, x)
    assert code.shape == (5, 8) and float(jnp.abs(code).max()) < 1.0
    generator = wgan.WGANGenerator((8, 8, 4), value_range=(-1.0, 1.0))
    decoded = jax.jit(generator.apply)({"params": params["generator"]}, code)
    np.testing.assert_allclose(out, decoded, atol=1e-6)
    # The front end (transposed convolutions as matmuls on CPU) computes the same.
    reformed = jax.jit(magnet.Reformer(module))(variables, x, jax.random.key(3))
    np.testing.assert_allclose(reformed, out, atol=1e-5)


@pytest.fixture(scope="module")
def reformed_table(tmp_path_factory):
    """A table: the reformer, and a classifier run behind it, white box FGSM."""
    tmp_path = tmp_path_factory.mktemp("magnet_runs")
    config_file = config_file_calling(tmp_path, "test_magnet", "_tiny")
    config = configlib.table_config("t", str(config_file), surrogates=[], attacks=("fgsm",), rows=[
        ("MagNet reformer", "magnet", 0),
        ("MagNet", "clf", 0, {"front_end.run": "MagNet reformer"})])
    with config.unlocked():
        config.progress_bar = False
    workdir = tmp_path / "table"
    results, run_dirs = run_table_with_dirs(config, workdir)
    return tmp_path, results, run_dirs


def test_training_steps_lower_the_reconstruction_error(reformed_table):
    _, _, run_dirs = reformed_table
    run = runs.load_run(run_dirs["MagNet reformer"])
    config = run.config
    dataset = data.load_dataset(config.data)
    apply = jax.jit(magnet.autoencoder(config, 1).apply)

    def error(state, images, x):  # mean squared error against x, in [0, 1] pixel units
        return float(jnp.mean(((apply(magnet.reformer_variables(state), images) - x) / 2) ** 2))

    x = jnp.asarray(data.scale(next(data.train_batches(dataset, 16, config.seed))[0],
                               (-1.0, 1.0)))
    initial = jax.jit(run.method.init)(runs.init_key(config), x[:1])
    # The first step's error is on MagNet's noisy inputs, drawn with the step's key.
    rng = jax.random.fold_in(jax.random.key(config.seed + 1), 0)
    noisy = jnp.clip(x + 0.1 * 2.0 * jax.random.normal(rng, x.shape), -1.0, 1.0)
    with open(os.path.join(run_dirs["MagNet reformer"], "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    assert first["step"] == 1
    assert first["reconstruction_error"] == pytest.approx(error(initial, noisy, x), rel=1e-4)
    test = jnp.asarray(data.scale(dataset.x_test, (-1.0, 1.0)))
    assert error(run.state, test, test) < 0.95 * error(initial, test, test)


def test_a_classifier_behind_the_reformer_is_evaluated_on_its_reconstructions(reformed_table):
    tmp_path, results, run_dirs = reformed_table
    assert list(results) == ["MagNet"]  # the reformer is not evaluated
    reformer, clf = runs.load_run(run_dirs["MagNet reformer"]), runs.load_run(run_dirs["MagNet"])
    reform = functools.partial(jax.jit(magnet.autoencoder(reformer.config, 1).apply),
                               magnet.reformer_variables(reformer.state))
    logits = jax.jit(lambda classifier, images: classifier.logits(images, jax.random.key(7)))
    model = clf.method.classifier(clf.state)
    dataset = data.load_dataset(clf.config.data)
    x = jnp.asarray(data.scale(dataset.x_test[:EXAMPLES], (-1.0, 1.0)))
    y = dataset.y_test[:EXAMPLES]
    reconstruction = reform(x)
    assert float(jnp.abs(reconstruction - x).max()) > 0.1
    behind = _tiny(tmp_path, "clf", **{"front_end.run": run_dirs["MagNet reformer"]})
    defended = runs.evaluated_classifier(behind, clf.method, clf.state)
    np.testing.assert_allclose(logits(defended, x), logits(model, reconstruction), atol=1e-5)
    accuracy = lambda images: float(np.mean(logits(model, images).argmax(-1) == y))
    assert results["MagNet"]["clean"] == pytest.approx(accuracy(reconstruction), abs=1e-6)
    # White box through the reformer: FGSM on classifier(AE(x)), scored on AE(x_adv).
    x_adv = attacks.fgsm(defended, x, y, eps=0.3)
    assert float(jnp.abs(x_adv - x).max()) > 0.29  # the gradient reaches x through AE
    assert results["MagNet"]["fgsm"] == pytest.approx(accuracy(reform(x_adv)),
                                                      abs=1.5 / EXAMPLES)


def test_the_magnet_recipe_is_magnets_training():
    c = recipes.get_config("mnist", "magnet", "configs/mnist.py")
    assert (c.method, c.batch_size, c.num_train_steps) == ("magnet", 256, 100 * (60_000 // 256))
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.schedule) == (
        "adam", 1e-3, "constant")
    assert (c.magnet.noise_std, c.magnet.latent_dim, tuple(c.magnet.encoder_widths)) == (
        0.1, 128, (64, 128, 256))
    assert recipes.get_config("mnist", "magnet,cpu", "configs/mnist.py").num_train_steps == 234
    with pytest.raises(ConfigError, match="magnet takes only ',cpu'"):
        recipes.get_config("mnist", "magnet,a", "configs/mnist.py")


def _linear(variables, x, rng=None):
    return x.reshape(x.shape[0], -1) @ variables


@pytest.mark.parametrize("option,eps", [("", 0.3), (",eps015", 0.15)])
def test_adv_tr_options_train_on_fgsm_at_eps_on_half_of_each_batch(option, eps):
    c = recipes.get_config("mnist", f"pgd_at,defense_gan,a,fgsm{option},cpu", "configs/mnist.py")
    a = c.train_attack
    assert (c.method, c.model.name, c.eval.eps) == ("pgd_at", "dgan_a", 0.3)
    assert (a.eps, a.step_size, a.steps, a.random_start, a.fraction, a.eps_ramp_steps) == (
        eps, eps, 1, False, 0.5, 0)
    # One PGD step of size eps from x is FGSM.
    clf = Classifier(_linear, jax.random.normal(jax.random.key(0), (16, 3)), (0.0, 1.0), 3)
    x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 1))
    y = jnp.arange(6) % 3
    x_pgd = attacks.pgd(clf, x, y, jax.random.key(2), eps=a.eps, step_size=a.step_size,
                        steps=a.steps, random_start=a.random_start)
    x_fgsm = attacks.fgsm(clf, x, y, eps=eps)
    assert float(jnp.abs(x_fgsm - x).max()) == pytest.approx(eps, abs=1e-6)
    np.testing.assert_allclose(x_pgd, x_fgsm, atol=1e-6)


def test_adv_tr_options_belong_to_pgd_at_with_fgsm():
    with pytest.raises(ConfigError, match="a setting of pgd_at, not of standard"):
        recipes.get_config("mnist", "standard,defense_gan,a,fgsm", "configs/mnist.py")
    with pytest.raises(ConfigError, match="add ',fgsm'"):
        recipes.get_config("mnist", "pgd_at,defense_gan,a,eps015", "configs/mnist.py")


ROWS = ["GAN", "MagNet reformer", "No defense", "Defense-GAN-Rec", "Defense-GAN-Orig", "MagNet",
        "Adv. Tr. eps=0.3", "Adv. Tr. eps=0.15"]


def test_every_classifier_substitute_pair_of_the_paper_has_its_table1_layout():
    for dataset in recipe.DATASETS:
        layouts = {name: make() for name, make in
                   recipe.tables(dataset, f"configs/{dataset}.py").items()
                   if name.startswith("defense_gan_table1")}
        assert {c.table.output for c in layouts.values()} == {
            f"defense_gan_table1_{pair.replace('/', '')}" for pair in recipe.PAPER_TABLE1[dataset]}
        assert len(layouts) == 8


@pytest.mark.parametrize("dataset", recipe.DATASETS)
@pytest.mark.parametrize("name,model,substitute", [("defense_gan_table1_cpu", "a", "b"),
                                                   ("defense_gan_table1_e_cpu", "a", "e"),
                                                   ("defense_gan_table1_c_e_cpu", "c", "e")])
def test_the_table1_layout_attacks_every_defense_from_one_substitute(dataset, name, model,
                                                                     substitute):
    t = recipes.get_config(dataset, name, f"configs/{dataset}.py").table
    assert [row[0] for row in t.rows] == ROWS and t.surrogates == () and t.attacks == ()
    run_dirs = {}
    configs = {}
    for row in t.rows:  # every run validates, its references resolved
        configs[row[0]] = table.table_run_config(t, row, False, run_dirs)
        run_dirs[row[0]] = f"/runs/{row[0]}"
    reformer = configs["MagNet reformer"]
    assert (configs["GAN"].method, reformer.method) == ("defense_gan", "magnet")
    assert reformer.init_from.run == "/runs/GAN"  # the decoder starts as the GAN's generator
    rows = {row[0]: (configs[row[0]], table.run_name(configs[row[0]], row[3]))
            for row in t.rows[2:]}
    for c, _ in rows.values():
        e = c.eval
        # The substitute alone: through the projection the other measures cost far more.
        assert (e.measures, e.substitute, e.substitute_seed_size, e.substitute_rounds,
                e.substitute_epochs, e.eps) == (False, f"dgan_{substitute}", 150, 6, 10, 0.3)
        assert e.num_examples == e.measure_examples == 150 + recipe.CPU_TABLE1_TEST_EXAMPLES
        # Substitute E also answers Table 3: FGSM at its smaller eps.
        assert e.substitute_eps == (recipe.TABLE3_EPS if substitute == "e" else ())
    # No defense, Defense-GAN-Orig and MagNet evaluate one classifier run.
    assert {rows[n][1] for n in ("No defense", "Defense-GAN-Orig", "MagNet")} == {
        f"standard_{model}_cpu_seed0"}
    rec, orig = rows["Defense-GAN-Rec"][0], rows["Defense-GAN-Orig"][0]
    assert rows["Defense-GAN-Rec"][1] != f"standard_{model}_cpu_seed0"  # on reconstructions
    assert (rec.front_end.run, rec.front_end.train) == ("/runs/GAN", True)
    assert (orig.front_end.run, orig.front_end.train) == ("/runs/GAN", False)
    for c in (rec, orig):
        assert (c.defense_gan.projection.steps, c.defense_gan.projection.restarts) == (10, 2)
    assert rows["MagNet"][0].front_end.run == "/runs/MagNet reformer"
    for n, eps in (("Adv. Tr. eps=0.3", 0.3), ("Adv. Tr. eps=0.15", 0.15)):
        c = rows[n][0]
        assert (c.method, c.model.name, c.train_attack.eps, c.train_attack.steps) == (
            "pgd_at", f"dgan_{model}", eps, 1)
    no_attack, *paper = recipe.PAPER_TABLE1[dataset][f"{model}/{substitute}"]
    assert dict(t.paper)["MagNet"] == (round(100 * no_attack, 2), None, round(100 * paper[3], 2))
    assert [name for name, _ in t.paper] == ROWS[2:] == list(recipe.TABLE1_DEFENSES)
    if (dataset, model, substitute) == ("mnist", "a", "b"):  # Table 1's A/B, as printed
        assert [dict(t.paper)[n][2] for n in ROWS[2:]] == [63.43, 93.12, 92.82, 69.37, 96.54,
                                                           62.23]
    table3 = [round(100 * v, 2) for v in recipe.PAPER_TABLE3_REC[dataset]]
    assert dict(t.paper)["Defense-GAN-Rec"][3:] == (tuple(table3) if substitute == "e" else ())
