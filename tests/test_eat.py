"""eat (Wang & Yu Sec. 4.4, after Tramer et al.): batches built from static examples of
pre-trained models; loading the sources; table wiring; bad input."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_matches_recorded, tiny_config

from robustgan import attacks, main, runs, table
from robustgan import config as configlib
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.methods import eat


def _linear(variables, x, rng=None):
    return x.reshape(x.shape[0], -1) @ variables["w"]


def _linear_classifier(seed=0):
    w = jax.random.normal(jax.random.key(seed), (2 * 2 * 1, 3))
    return Classifier(_linear, {"w": w}, (-1.0, 1.0), 3)


def test_ensemble_batch_interleaves_clean_fgs_pgd_and_least_likely_rows():
    source = _linear_classifier()
    x = jax.random.uniform(jax.random.key(1), (8, 2, 2, 1), minval=-0.5, maxval=0.5)
    y = jnp.arange(8) % 3
    out = eat.ensemble_batch(source, x, y, jax.random.key(2), eps=0.1, step_size=0.05, steps=3)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[0::4], x[0::4])
    np.testing.assert_allclose(out[1::4], attacks.fgsm_predicted(source, x[1::4], y[1::4], eps=0.1))
    np.testing.assert_allclose(out[3::4], attacks.ll_fgs(source, x[3::4], y[3::4], eps=0.1))
    # PGD rows: inside the eps ball (0.1 pixel units = 0.2 in [-1, 1] data) and moved.
    pgd_rows = out[2::4] - x[2::4]
    assert float(jnp.abs(pgd_rows).max()) <= 0.2 + 1e-6
    assert float(jnp.abs(pgd_rows).min()) > 0.0
    for k in (1, 3):  # the FGS kinds step by exactly eps on every pixel (none clipped here)
        np.testing.assert_allclose(np.abs(out[k::4] - x[k::4]), 0.2, rtol=1e-5)


def test_stack_sources_rotates_over_same_architecture_models():
    a, b = _linear_classifier(0), _linear_classifier(1)
    stacked = eat.stack_sources([a, b])
    assert stacked.variables["w"].shape == (2, 4, 3)
    other_bounds = a.replace(bounds=(0.0, 1.0))
    with pytest.raises(ConfigError, match="share one architecture"):
        eat.stack_sources([a, other_bounds])


def test_eat_trains_on_a_pretrained_source_end_to_end(tmp_path):
    source_dir = str(tmp_path / "source")
    source = main.run(tiny_config(tmp_path, "standard", steps=4), source_dir, "train")
    assert_matches_recorded("eat_source", source, runs.load_run(source_dir).state)
    config = tiny_config(tmp_path, "eat", steps=4, **{"eat.sources": (source_dir, source_dir)})
    results = main.run(config, str(tmp_path / "eat"), "train")
    # The sources load through runs.load_run now; the run is the one recorded before.
    assert_matches_recorded("eat", results, runs.load_run(str(tmp_path / "eat")).state)


def _eat_config(batch_size=16, sources=()):
    c = configlib.base_config()
    c.method, c.batch_size, c.eat.sources = "eat", batch_size, sources
    return c


def test_eat_bad_input_is_named():
    with pytest.raises(ConfigError, match="eat.sources is empty"):
        configlib.validate(_eat_config())
    with pytest.raises(ConfigError, match="multiple of 4"):
        configlib.validate(_eat_config(batch_size=18, sources=("x",)))
    with pytest.raises(ConfigError, match="holds no trained run"):
        runs.linked_runs(_eat_config(sources=("/nonexistent/run",)))


def test_table_points_an_eat_row_at_earlier_runs(tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(textwrap.dedent("""
        from robustgan import config as configlib
        def get_config(arg):
            c = configlib.base_config()
            c.method = arg
            return c
    """))
    t = configlib.table_config(
        "t", str(config_file), surrogates=[],
        rows=[("A", "standard", 0), ("E", "eat", 0, {"eat.sources": ("A",)})]).table
    config = table.table_run_config(t, t.rows[1], False, {"A": "/runs/a"})
    assert config.eat.sources == ("/runs/a",)
    with pytest.raises(ConfigError, match=r"names \['A'\]; list those runs before it"):
        table.table_run_config(t, t.rows[1], False, {})
