"""Generator attacks (Wang & Yu Sec. 4.5): a generator trained against a fixed classifier."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustgan import data, parallel
from robustgan.attacks.generator import GeneratorAttack, train_generator_attack
from robustgan.classifier import Classifier, ModelApply
from robustgan.evaluate import protocol
from robustgan.models.generators import get_generator

SIZE, EPS = 8, 0.1
VALUE_RANGE = (-1.0, 1.0)


class MeanSign(nn.Module):
    """Class 1 iff the image's mean pixel is positive: a fixed, parameter-free model."""

    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train=False, batch_stats=None):
        s = 10.0 * x.mean(axis=(1, 2, 3))
        return jnp.stack([-s, s], axis=-1)


def toy_data(n, seed):
    """uint8 images with their MeanSign labels (so clean accuracy is 1)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.uint8)
    y = (data.scale(x, VALUE_RANGE).mean(axis=(1, 2, 3)) > 0).astype(np.int32)
    return x, y


def test_trained_generator_lowers_a_fixed_models_accuracy_within_eps():
    classifier = Classifier(ModelApply(MeanSign()), {}, VALUE_RANGE, 2)
    x, y = toy_data(256, seed=0)
    attack = train_generator_attack(
        classifier, get_generator("g0", 2, width=4), jnp.asarray(data.scale(x, VALUE_RANGE)),
        jnp.asarray(y), jax.random.key(0), eps=EPS, num_steps=40, batch_size=32,
        optimizer=optax.adam(1e-2),
    )
    assert isinstance(attack, GeneratorAttack)
    x_test, y_test = toy_data(128, seed=1)
    x_scaled = jnp.asarray(data.scale(x_test, VALUE_RANGE))
    x_adv = attack(classifier, x_scaled, jnp.asarray(y_test), jax.random.key(1))
    assert float(jnp.abs(x_adv - x_scaled).max()) <= EPS * 2 + 1e-6  # eps times range width
    assert float(x_adv.min()) >= -1.0 and float(x_adv.max()) <= 1.0
    # Usable as an evaluation column like any other attack.
    results = protocol.accuracy_under_attacks(
        classifier, x_test, y_test, {"clean": protocol.Column(),
                                     "generator": protocol.Column(attack)},
        batch_size=64, value_range=VALUE_RANGE, mesh=parallel.make_mesh(),
        rng=jax.random.key(2), progress=False,
    )
    assert results["clean"] == 1.0
    assert results["generator"] < 0.75, results  # about 0.5 from a class-blind push


def test_generator_table_trains_attacks_on_the_target_and_transfers_them(tmp_path):
    import json
    import os
    import textwrap

    import pytest

    from robustgan import main, runs
    from robustgan.errors import ConfigError
    from robustgan.recipes import wang_yu

    config_file = tmp_path / "tiny_cfg.py"
    config_file.write_text(textwrap.dedent(f"""
        import pathlib, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from helpers import tiny_config
        def get_config(arg):
            return tiny_config(pathlib.Path({str(tmp_path)!r}), arg, steps=8)
    """))
    config = wang_yu.generator_attack_config(
        "tiny table 5", str(config_file), target=("A", "standard", 0),
        others=[("A'", "standard", 1)],
        generators=[("label", "g3", 2)], steps=3)
    with config.unlocked():
        config.progress_bar = False
    workdir = str(tmp_path / "t5")
    results = main.run(config, workdir, "study")
    assert list(results) == ["original accuracy", "label"]
    saved = json.load(open(os.path.join(workdir, "generator_attacks.json")))
    tiny = np.load(tmp_path / "tiny.npz")
    x, y = data.scale(tiny["x_test"], VALUE_RANGE), tiny["y_test"]
    for name in ("A", "A'"):  # the clean row is each model's own test accuracy
        model = runs.load_run(os.path.join(workdir, saved["runs"][name])).classifier()
        clean = float(np.mean(np.asarray(model.logits(x).argmax(-1)) == y))
        assert results["original accuracy"][name] == pytest.approx(clean)
    assert set(results["label"]) == {"A", "A'"}
    assert saved["results"] == results and saved["columns"] == ["A", "A'"]
    text = open(os.path.join(workdir, "generator_attacks.md")).read()
    assert "| generator | A | A' |" in text and "| label |" in text
    assert os.path.exists(os.path.join(workdir, "generator_attacks.png"))

    with config.unlocked():
        config.study.generators = (("bad", "g9", 0),)
    with pytest.raises(ConfigError, match="unknown generator 'g9'"):
        main.run(config, workdir, "table")
