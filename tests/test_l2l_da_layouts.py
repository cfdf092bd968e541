"""Jang et al. (ICCV 2019): the CPU layouts of Tables 1-3 and Figure 2 (recipes/l2l_da.py)
and the Figure 2 study (studies/l2l_da_recursion.py), end to end on tiny runs."""

import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import write_tiny_npz

from robustgan import attacks, data, runs, studies, table
from robustgan import config as configlib
from robustgan.attacks.common import cross_entropy
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.evaluate import protocol
from robustgan.evaluate.columns import GeneratorColumn
from robustgan.methods.l2l_da import ABLATIONS
from robustgan.recipes import l2l_da as recipe
from robustgan.studies import l2l_da_recursion

ROOT = os.path.join(os.path.dirname(__file__), "..")
MNIST = os.path.join(ROOT, "configs", "mnist.py")
LAYOUTS = ("l2l_da_table2_cpu", "l2l_da_ablation_cpu", "l2l_da_table3_cpu",
           "l2l_da_figure2_cpu")


def run_configs(config) -> dict:
    """{run name: its validated config} for every row and surrogate of a layout."""
    t, run_dirs, out = config.table, {}, {}
    for run in (*t.rows, *t.surrogates):
        out[run[0]] = table.table_run_config(t, run, False, run_dirs)
        run_dirs[run[0]] = f"runs/{run[0]}"
    return out


def columns(config) -> list[str]:
    """The layout's columns for its first row: clean, white box, transfer, min."""
    e = configlib.load_config_file(f"{MNIST}:l2l_da").eval
    surrogates = [name for name, *_ in config.table.surrogates]
    return [*protocol.white_box_columns(e, config.table.attacks),
            *protocol.transfer_columns(e, config.table.attacks, surrogates), "min"]


@pytest.mark.parametrize("arg", LAYOUTS)
def test_every_layout_validates_with_equal_classifier_budgets(arg):
    """Every run validates on mnist; each run that starts from a clean classifier takes
    CPU_STEPS updates after that start's CLEAN_START_STEPS."""
    config = configlib.load_config_file(f"{MNIST}:{arg}")
    assert config.table.eval_num_examples == (
        recipe.FIGURE2_EXAMPLES if arg == "l2l_da_figure2_cpu" else recipe.CPU_EXAMPLES)
    configs = run_configs(config)
    starts = {name for name, c in configs.items() if not c.init_from.run}
    assert starts == ({"Plain", "A"} if arg == "l2l_da_table3_cpu" else {"Plain"})
    for name, c in configs.items():
        assert c.model.name == "lenet5" and c.batch_size == 100 and c.eval.eps == 0.3
        if name in starts:
            assert (c.method, c.num_train_steps) == ("standard", recipe.CLEAN_START_STEPS)
        elif name in (recipe.EQUAL_TIME_ROW, recipe.HALF_CLEAN_EQUAL_TIME_ROW):  # L2L-DA's time
            assert (c.method, c.num_train_steps) == (
                "pgd_at", recipe.CPU_STEPS * recipe.L2L_DA_OVER_PGD10_STEP_TIME)
        else:
            assert c.num_train_steps == recipe.CPU_STEPS, name
            assert c.init_from.run in {f"runs/{s}" for s in starts}, name
    budgets = {configs[n].num_train_steps for n, *_ in config.table.rows
               if n not in starts | {recipe.EQUAL_TIME_ROW, recipe.HALF_CLEAN_EQUAL_TIME_ROW}}
    assert budgets == {recipe.CPU_STEPS}


def test_table2_columns_and_the_papers_numbers_line_up():
    config = configlib.load_config_file(f"{MNIST}:l2l_da_table2_cpu")
    assert [name for name, *_ in config.table.rows] == [
        "Plain", "PGD10", recipe.EQUAL_TIME_ROW, recipe.HALF_CLEAN_ROW,
        recipe.HALF_CLEAN_EQUAL_TIME_ROW, "PGD100", "C&W100", "L2L*", "L2L-DA (full)"]
    cols = columns(config)
    assert cols == ["clean", "fgsm", "pgd10", "pgd100", "cw100", "cw1000", "advgan", "gap",
                    "l2l_da", "apgd_ce", "apgd_dlr", "min"]
    paper = dict(config.table.paper)
    assert set(paper) == {name for name, *_ in config.table.rows} - {
        recipe.EQUAL_TIME_ROW, recipe.HALF_CLEAN_ROW, recipe.HALF_CLEAN_EQUAL_TIME_ROW}
    full = dict(zip(cols, paper["L2L-DA (full)"], strict=False))
    assert full == {"clean": 98.47, "fgsm": 97.87, "pgd10": 95.70, "pgd100": 95.15,
                    "cw100": 97.26, "cw1000": 95.26, "advgan": 95.72, "gap": 96.92,
                    "l2l_da": 94.61}
    assert dict(zip(cols, paper["C&W100"], strict=False))["l2l_da"] == 34.51
    configs = run_configs(config)
    pgd10 = configs["PGD10"].train_attack
    assert (pgd10.steps, pgd10.step_size, pgd10.random_start, pgd10.loss) == (
        10, 0.075, True, "ce")
    half_clean = configs[recipe.HALF_CLEAN_ROW]
    assert (half_clean.train_attack.fraction, half_clean.num_train_steps) == (0.5, recipe.CPU_STEPS)
    assert half_clean.train_attack.to_dict() == {**pgd10.to_dict(), "fraction": 0.5}
    both = configs[recipe.HALF_CLEAN_EQUAL_TIME_ROW]
    assert both.train_attack.to_dict() == half_clean.train_attack.to_dict()
    assert both.num_train_steps == configs[recipe.EQUAL_TIME_ROW].num_train_steps
    assert (configs["PGD100"].train_attack.steps, configs["PGD100"].train_attack.loss) == (
        100, "ce")
    assert (configs["C&W100"].train_attack.steps, configs["C&W100"].train_attack.loss) == (
        100, "margin")
    assert configs["L2L*"].method == "l2l" and configs["L2L-DA (full)"].l2l_da.steps == 10
    # The generator columns: AdvGAN and GAP from scratch, the L2L-DA attack from the
    # L2L-DA (full) row's generator, each for its CPU steps.
    e = configs["PGD10"].eval
    generators = {label: c.attack for label, c in
                  protocol.white_box_columns(e, config.table.attacks).items()
                  if isinstance(c.attack, GeneratorColumn)}
    assert {label: dict(g.settings) for label, g in generators.items()} == {
        "advgan": {"eps": 0.3, "num_steps": recipe.CPU_ADVGAN_STEPS},
        "gap": {"eps": 0.3, "num_steps": recipe.CPU_GAP_STEPS},
        "l2l_da": {"eps": 0.3, "num_steps": recipe.CPU_L2L_DA_ATTACK_STEPS,
                   "samples": recipe.L2L_DA_ATTACK_SAMPLES, "start": "L2L-DA (full)"}}
    assert not configlib.load_config_file(
        os.path.join(ROOT, "configs", "fashion_mnist.py:l2l_da_table2_cpu")).table.paper
    outputs = {configlib.load_config_file(f"{MNIST}:{arg}").table.output
               for arg in LAYOUTS[:3]}
    assert len(outputs) == 3  # one workdir holds every layout's outputs


def test_ablation_rows_are_table1s_overrides():
    config = configlib.load_config_file(f"{MNIST}:l2l_da_ablation_cpu")
    configs = run_configs(config)
    full = configlib.load_config_file(f"{MNIST}:l2l_da").l2l_da
    for label, overrides in ABLATIONS.items():
        row = configs[f"L2L-DA ({label})"]
        assert row.method == "l2l_da"
        expected = {**full.to_dict(), **overrides}
        assert row.l2l_da.to_dict() == expected, label
    assert configs["L2L*"].method == "l2l"
    # One-shot rows take the whole eps in one step; R O, D O is the full method.
    assert configs["L2L-DA (R X, D O)"].l2l_da.steps == 1
    assert configs["L2L-DA (R O, D O)"].l2l_da.to_dict() == full.to_dict()
    cols = columns(config)
    assert cols == ["clean", "fgsm", "pgd100", "cw1000", "min"]
    paper = dict(config.table.paper)
    row = dict(zip(cols, paper["L2L-DA (delta X, y O)"], strict=True))
    assert row == {"clean": 98.50, "fgsm": 95.73, "pgd100": 92.46, "cw1000": 93.59,
                   "min": 92.46}
    assert set(paper) == {name for name, *_ in config.table.rows} - {"Plain"}


def test_table3_transfers_from_plain_fgsm_and_pgd_surrogates():
    config = configlib.load_config_file(f"{MNIST}:l2l_da_table3_cpu")
    configs = run_configs(config)
    assert [name for name, *_ in config.table.rows] == [
        "Plain", "PGD10", recipe.HALF_CLEAN_ROW, "PGD100", "C&W100", "L2L*", "L2L-DA (full)"]
    fgsm, pgd = configs["B"].train_attack, configs["C"].train_attack
    # FGSM training: one step of the whole eps from x (Eq. 2); both on half-clean batches
    # (adversarial batches alone collapse to a constant surrogate at this scale).
    assert (fgsm.steps, fgsm.step_size, fgsm.random_start, fgsm.fraction) == (
        1, 0.3, False, 0.5)
    assert (pgd.steps, pgd.step_size, pgd.random_start, pgd.fraction) == (10, 0.075, True, 0.5)
    assert {configs[s].seed for s in "ABC"} == {1}
    assert columns(config) == ["clean", "l2l_da", "pgd10", "pgd100"] + [
        f"{attack}({s})" for s in "ABC" for attack in ("l2l_da", "pgd10", "pgd100")] + ["min"]


def test_baselines_take_the_papers_setting_and_other_methods_are_refused():
    for arg in ("standard,l2l_da", "pgd_at,l2l_da"):
        c = configlib.load_config_file(f"{MNIST}:{arg}")
        configlib.validate(c)
        assert (c.model.name, c.batch_size, c.optimizer.name) == ("lenet5", 100, "sgd")
        assert c.options == "l2l_da"  # run directories apart from Wang & Yu's
    with pytest.raises(ConfigError, match="covers"):
        configlib.load_config_file(f"{MNIST}:advnet,l2l_da")


# --- the Figure 2 study -------------------------------------------------------------------


def linear_classifier():
    """A fixed 3-class linear classifier on 4x4 images in [0, 1]."""
    w = jax.random.normal(jax.random.key(0), (16, 3)) * 3

    def apply_fn(variables, x, rng=None):
        return x.reshape(x.shape[0], -1) @ variables["w"]

    return Classifier(apply_fn, {"w": w}, (0.0, 1.0), 3)


def test_pgd_losses_are_the_loss_at_each_iterate_of_attacks_pgd():
    """Step t of the curve is CE at the output of attacks.pgd run for t steps."""
    classifier = linear_classifier()
    x = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
    y = jnp.array([0, 1, 2, 0, 1])
    losses = l2l_da_recursion.pgd_losses(classifier, x, y, None, eps=0.3, step_size=0.1,
                                         steps=3, random_start=False)
    assert losses.shape == (3, 5)
    for t in (1, 3):
        x_adv = attacks.pgd(classifier, x, y, jax.random.key(2), eps=0.3, step_size=0.1,
                            steps=t, random_start=False)
        np.testing.assert_allclose(losses[t - 1], cross_entropy(classifier.logits(x_adv), y),
                                   rtol=1e-5)
    assert float(losses[-1].mean()) > float(losses[0].mean())


def test_loss_statistics_by_hand():
    losses = jnp.array([[[1.0, 4.0]], [[3.0, 4.0]]])  # 2 attacks, 1 step, 2 images
    stats = l2l_da_recursion.loss_statistics(losses)
    np.testing.assert_allclose(stats["max"], [[3.0], [4.0]])
    np.testing.assert_allclose(stats["std"], [[1.0], [0.0]])  # population std


_TINY_CONFIG = """
    from robustgan.recipes import l2l_da

    def get_config(arg):
        c = l2l_da.config("mnist", arg)
        with c.unlocked():
            c.data.source, c.data.name, c.data.dir = "npz", "tiny", {npz!r}
            c.batch_size, c.train_attack.steps = 8, 2
            for block in ("l2l_da", "l2l"):
                c[block].generator_width, c[block].unroll = 2, 1
            c.l2l_da.steps = 1  # the study runs its own T; one step trains fastest
            c.eval.batch_size, c.eval.measures = 8, False
            c.checkpoint_every, c.log_every, c.progress_bar = 2, 2, False
        return c
"""


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """(config file, workdir) of tiny runs that the Table 2 and Figure 2 tests share."""
    tmp_path = tmp_path_factory.mktemp("l2l_da_tiny")
    npz = write_tiny_npz(tmp_path / "tiny.npz", num_train=64, num_test=16)
    config_file = tmp_path / "tiny_config.py"
    config_file.write_text(textwrap.dedent(_TINY_CONFIG.format(npz=npz)))
    return str(config_file), tmp_path


def test_table2_generator_columns_end_to_end(tiny_workdir):
    """AdvGAN, GAP and the L2L-DA attack (from the L2L-DA (full) row's trained generator)
    trained against each row's classifier, then scored with the other columns."""
    config_file, workdir = tiny_workdir
    config = recipe.table2_config("mnist", config_file, steps=2, clean_steps=2, examples=8,
                                  advgan_steps=1, gap_steps=1, l2l_da_steps=1, samples=2)
    keep = ("Plain", "L2L-DA (full)")  # two of Figure 2's rows, trained once for both
    generators = recipe.generator_columns(advgan_steps=1, gap_steps=1, l2l_da_steps=1,
                                          samples=2)
    with config.unlocked():
        config.table.rows = [row for row in config.table.rows if row[0] in keep]
        config.table.attacks = ("fgsm", *[spec for spec in config.table.attacks
                                          if spec in generators.values()])
        config.table.score_rows = keep[1:]  # the columns' start row, not Plain's
        config.progress_bar = False
    with jax.default_prng_impl("rbg"):
        table.train_runs(config, str(workdir))
        results = table.run_table(config, str(workdir), output=config.table.output)
    assert list(results) == list(keep[1:])
    row = results["L2L-DA (full)"]
    assert list(row) == ["clean", "fgsm", "advgan", "gap", "l2l_da", "min", "num_examples"]
    assert row["min"] <= min(row[c] for c in ("fgsm", "advgan", "gap", "l2l_da"))
    with open(workdir / "l2l_da_table2.partial.json") as f:
        assert json.load(f)["L2L-DA (full)"]["results"] == row


def test_figure2_study_writes_max_and_std_per_step(tiny_workdir):
    config_file, tmp_path = tiny_workdir
    config = recipe.figure2_config("mnist", config_file, steps=2, clean_steps=2,
                                   examples=8, recursion_steps=3, samples=3)
    with config.unlocked():
        config.study.pgd_random_start, config.study.batch_size = False, 8
        config.progress_bar = False
    with jax.default_prng_impl("rbg"):  # faster to compile on CPU
        curves = studies.run(config, str(tmp_path))
    assert list(curves) == [recipe.HALF_CLEAN_ROW, "L2L-DA (full)"]
    for attacks_ in curves.values():
        assert list(attacks_) == ["PGD", "L2L", "L2L-DA"]
        for c in attacks_.values():
            assert len(c["max"]) == len(c["std"]) == 3 and np.all(np.isfinite(c["max"]))
        # PGD from x and L2L (no z) are one attack per image; L2L-DA's z draws differ.
        assert attacks_["PGD"]["samples"] == attacks_["L2L"]["samples"] == 1
        assert attacks_["PGD"]["std"] == [0.0] * 3 and attacks_["L2L"]["std"] == [0.0] * 3
        assert attacks_["L2L-DA"]["samples"] == 3 and min(attacks_["L2L-DA"]["std"]) > 0
    with open(tmp_path / "l2l_da_recursion.json") as f:
        saved = json.load(f)
    assert saved["curves"] == curves and saved["steps"] == 3
    assert os.path.getsize(tmp_path / "l2l_da_recursion.png") > 0
    assert "t=3" in (tmp_path / "l2l_da_recursion.md").read_text()
    # PGD's last step against attacks.pgd on the trained half-clean PGD10 classifier, same images.
    run = runs.load_run(os.path.join(tmp_path, saved["runs"][recipe.HALF_CLEAN_ROW]))
    x, y = protocol.eval_split(run.config, data.load_dataset(run.config.data))
    x = jnp.asarray(data.scale(x, run.config.data.value_range))
    classifier = run.classifier()
    x_adv = attacks.pgd(classifier, x, y, jax.random.key(0), eps=0.3, step_size=0.075, steps=3,
                        random_start=False)
    np.testing.assert_allclose(curves[recipe.HALF_CLEAN_ROW]["PGD"]["max"][-1],
                               cross_entropy(classifier.logits(x_adv), y).mean(), rtol=1e-4)


def test_cifar10_layout_is_resnet20_at_a_cpu_scale_with_the_papers_cifar_numbers():
    config = configlib.load_config_file(os.path.join(ROOT, "configs", "cifar10.py:"
                                                     "l2l_da_table2_cpu"))
    assert config.table.eval_num_examples == recipe.CIFAR_CPU_EXAMPLES
    configs = run_configs(config)
    equal_time = (recipe.EQUAL_TIME_ROW, recipe.HALF_CLEAN_EQUAL_TIME_ROW)
    assert list(configs) == ["Plain", "PGD10", equal_time[0], recipe.HALF_CLEAN_ROW, equal_time[1],
                             "PGD100", "C&W100", "L2L*", "L2L-DA (full)"]
    for name, c in configs.items():
        assert c.model.name == "d2" and c.eval.eps == pytest.approx(8 / 255)
        assert c.num_train_steps == (
            recipe.CIFAR_CLEAN_START_STEPS if name == "Plain" else
            recipe.CIFAR_CPU_STEPS * recipe.CIFAR_L2L_DA_OVER_PGD10_STEP_TIME
            if name in equal_time else recipe.CIFAR_CPU_STEPS)
    assert configs["L2L-DA (full)"].l2l_da.diversity_weight == 0.5
    full = dict(zip(columns(config), dict(config.table.paper)["L2L-DA (full)"], strict=False))
    assert (full["clean"], full["pgd100"], full["l2l_da"]) == (78.91, 38.39, 39.20)


def test_cifar10_claim_layout_is_table2s_runs_for_the_claim_with_the_papers_numbers():
    """The claim layout's rows are Table 2's runs (same configs, so one workdir trains them
    once), its columns Table 2's cheaper ones, the paper's numbers lined up with them."""
    cifar10 = os.path.join(ROOT, "configs", "cifar10.py")
    claim = configlib.load_config_file(f"{cifar10}:l2l_da_claim_cpu")
    full = run_configs(configlib.load_config_file(f"{cifar10}:l2l_da_table2_cpu"))
    configs = run_configs(claim)
    assert list(configs) == ["Plain", recipe.HALF_CLEAN_ROW, recipe.HALF_CLEAN_EQUAL_TIME_ROW,
                             recipe.FULL_ROW]
    for name, c in configs.items():
        assert c.to_json() == full[name].to_json(), name
    assert claim.table.eval_num_examples == recipe.CIFAR_CPU_EXAMPLES
    paper = dict(zip(columns(claim), dict(claim.table.paper)[recipe.FULL_ROW], strict=False))
    assert paper == {"clean": 78.91, "fgsm": 45.77, "pgd10": 39.69, "pgd100": 38.39,
                     "cw100": 37.75}
