"""Yan et al.'s recipe (robustgan/recipes/yan.py) and the Deep Defense studies: the
paper's settings, configs that stop with a clear message, and tiny end-to-end runs of the
Table 1 study (Reference -> Par. Train, Adv. Train I, Ours) and the Figure 3/4 sweep
through the real recipe on generated data."""

import json
import os
import textwrap

import pytest
from helpers import write_tiny_npz

from robustgan import config as configlib
from robustgan import studies
from robustgan.errors import ConfigError
from robustgan.recipes import yan

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _config(spec):
    return configlib.load_config_file(os.path.join(ROOT, spec))


def test_fine_tuning_settings_are_the_papers():
    c = _config("configs/mnist.py:deep_defense,lenet")
    d = c.deep_defense
    assert (d.weight, d.c, d.d, d.deepfool_steps, d.overshoot) == (15.0, 25.0, 5.0, 5, 0.02)
    o = c.optimizer
    # The paper's 5e-4, scaled for LeNet as our reference's rate (recipes/yan.py).
    assert (o.name, o.learning_rate, o.momentum, o.weight_decay) == ("sgd", 1.5e-4, 0.9, 5e-4)
    assert _config("configs/mnist.py:deep_defense,mlp").optimizer.learning_rate == 5e-4
    # 5 epochs of batch 100, the learning rate halved after four.
    assert (c.batch_size, c.num_train_steps) == (100, 3000)
    assert (o.decay_at, o.decay_factor) == ((0.8,), 0.5)
    assert c.model.name == "yan_lenet" and c.model.kwargs.input_scale == 255.0
    assert c.model.kwargs.input_mean == pytest.approx(255 * 0.1307)
    nin = _config("configs/cifar10.py:deep_defense,nin")
    assert nin.deep_defense.c == 70.0 and nin.num_train_steps == 50 * 500
    assert nin.optimizer.decay_at == (0.8,)  # the last 10 of 50 epochs
    imagenet = _config("configs/imagenet.py:deep_defense,alexnet")
    assert (imagenet.deep_defense.weight, imagenet.deep_defense.c) == (5.0, 500.0)
    assert (imagenet.optimizer.learning_rate, imagenet.batch_size) == (1e-4, 256)
    assert _config("configs/mnist.py:parseval,mlp").parseval.beta == 1e-4
    assert _config("configs/cifar10.py:parseval,convnet").parseval.beta == 3e-4
    adv2 = _config("configs/mnist.py:deep_defense,mlp,adv_train_ii").deep_defense
    assert (adv2.weight, adv2.clean_weight, adv2.fgs_weight) == (0.0, 0.5, 0.5)
    combined = _config("configs/mnist.py:deep_defense,mlp,combined").deep_defense
    assert (combined.weight, combined.clean_weight, combined.fgs_weight) == (15.0, 1.0, 1.0)


def test_bad_recipe_arguments_name_what_is_offered():
    with pytest.raises(ConfigError, match="unknown config option"):
        _config("configs/mnist.py:deep_defense,nin")  # a CIFAR architecture
    with pytest.raises(ConfigError, match="several architectures"):
        _config("configs/mnist.py:deep_defense,mlp,lenet")
    with pytest.raises(ConfigError, match="are deep_defense's"):
        _config("configs/mnist.py:parseval,combined")


_TINY_CONFIG = """
    from robustgan.recipes import yan

    def get_config(arg):
        c = yan.config({dataset!r}, arg)
        with c.unlocked():
            c.data.source, c.data.name, c.data.dir = "npz", "tiny", {npz!r}
            c.batch_size = 16
            c.num_train_steps = 6 if c.method == "standard" else 2
            c.eval.batch_size, c.eval.attacks, c.eval.pgd_steps = 32, ("fgsm",), 2
            c.eval.measure_examples, c.eval.deepfool_steps = 16, 5
            c.deepfool_at.steps = 3
            c.checkpoint_every, c.log_every, c.progress_bar = 2, 2, False
        return c
"""


def _tiny_config_file(tmp_path, dataset="mnist", size=28):
    npz = write_tiny_npz(tmp_path / "tiny.npz", num_train=64, num_test=32, size=size)
    path = tmp_path / "tiny_config.py"
    path.write_text(textwrap.dedent(_TINY_CONFIG.format(dataset=dataset, npz=npz)))
    return str(path)


def test_table1_study_runs_end_to_end_with_the_papers_columns(tmp_path):
    config = yan.table1_config("mnist", "mlp", _tiny_config_file(tmp_path), cw_examples=4)
    with config.unlocked():
        config.table.attacks, config.progress_bar = (), False
    results = studies.run(config, str(tmp_path))
    rows = results["rows"]
    assert list(rows) == ["Reference", "Clean fine-tune", "Par. Train", "Adv. Train I", "Ours"]
    for row in rows.values():
        assert row["rho_2_paper"] > 0 and row["rho_2_converged"] >= row["rho_2_paper"] - 1e-6
    # eps_ref is where FGS misclassifies half of the set: Ours is at most 50% there.
    assert rows["Ours"]["acc@1.0"] <= 0.5
    assert results["paper"]["Ours"]["rho_2_paper"] == 0.225  # the paper's MLP row
    assert set(results["checks"]) >= {"Ours has the highest rho_2",
                                      "Ours rho_2 >= 1.3 x Reference"}
    with open(tmp_path / "deep_defense_table1.json") as f:
        assert json.load(f)["rows"]["Ours"]["eps_ref"] == rows["Ours"]["eps_ref"]


def test_sweep_study_draws_one_curve_per_group(tmp_path):
    config = yan.sweep_config(
        "sweep", _tiny_config_file(tmp_path), architecture="mlp", c_values=(5, 25),
        steps=2, groups=[("fc1", {"deep_defense.layers": ("Dense_0",)})])
    with config.unlocked():
        config.progress_bar = False
    results = studies.run(config, str(tmp_path))
    assert len(results["points"]) == 1 + 2
    assert results["groups"]["fc1"] == ["fc1, c=5", "fc1, c=25"]
    assert os.path.getsize(tmp_path / "deep_defense_sweep.png") > 0
    # Different c, different fine-tuning: the two fc1 runs end apart.
    points = results["points"]
    assert points["fc1, c=5"]["rho_2_paper"] != points["fc1, c=25"]["rho_2_paper"]


def test_cifar_architectures_train_end_to_end(tmp_path):
    """The CIFAR-10 recipe on generated 32x32 images: NIN's reference run, and ConvNet's
    reference and a deep_defense fine-tune of it (NIN's regularized step is minutes on
    this CPU; its double backward is the ConvNet's, larger)."""
    from robustgan import main

    config_file = _tiny_config_file(tmp_path, "cifar10", size=32)

    def load(arg, **overrides):
        config = configlib.load_config_file(f"{config_file}:{arg}")
        with config.unlocked():
            config.eval.measures, config.batch_size = False, 4
            for key, value in overrides.items():
                parent, _, leaf = key.rpartition(".")
                configlib.get(config, parent)[leaf] = value
        return config

    assert main.run(load("standard,yan,nin"), str(tmp_path / "nin"), "train")["clean"] >= 0
    main.run(load("standard,yan,convnet"), str(tmp_path / "ref"), "train")
    config = load("deep_defense,convnet", **{"init_from.run": str(tmp_path / "ref"),
                                             "deep_defense.deepfool_steps": 2})
    results = main.run(config, str(tmp_path / "dd"), "train")
    assert set(results) >= {"clean", "fgsm"}
