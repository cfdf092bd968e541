"""The exact-vs-finite-difference study (robustgan/studies/gradreg.py): oscillation measure,
and the whole study end to end on tiny advnet runs."""

import json
import os
import textwrap
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_game

from robustgan import main, runs
from robustgan.methods import advnet
from robustgan.recipes import wang_yu
from robustgan.studies import gradreg as gradreg_study


def test_oscillation_measures_the_second_half_of_the_logged_adversarial_loss(tmp_path):
    path = tmp_path / "metrics.jsonl"
    values = [5.0, 4.0, 1.0, 2.0, 1.0, 2.0]  # second half: 2, 1, 2
    path.write_text("".join(json.dumps({"step": i, "adv_loss": v}) + "\n"
                            for i, v in enumerate(values)))
    swing = gradreg_study.oscillation(str(path))
    assert swing["points"] == 3
    assert swing["mean_abs_change"] == pytest.approx(1.0)
    assert swing["std"] == pytest.approx(np.std([2.0, 1.0, 2.0]))


def test_agreement_rows_show_the_finite_difference_converging_to_the_exact_term():
    state = SimpleNamespace(d=SimpleNamespace(params=None, batch_stats={}),
                            g=SimpleNamespace(params=None, batch_stats={}))
    with jax.enable_x64(True):
        players, state.d.params, state.g.params, x, y = test_game.setup(jnp.float64)
        rows = gradreg_study.regularizer_agreement(players, state, x, y, jax.random.key(0),
                                                   (1e-1, 1e-2, 1e-3, 1e-4))
    errors = [r["relative_error"] for r in rows]
    assert all(b < a / 5 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert rows[-1]["cosine"] > 1 - 1e-6 and rows[0]["cosine"] < rows[-1]["cosine"]


def test_study_writes_agreement_cost_and_outcome(tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(textwrap.dedent(f"""
        import pathlib, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_advnet import advnet_config
        def get_config(arg):
            method, _, gradreg = arg.partition(",")
            if method != "advnet":
                from helpers import tiny_config
                return tiny_config(pathlib.Path({str(tmp_path)!r}), method, steps=4)
            # options name the run directory, as the real configs' arguments do
            return advnet_config(pathlib.Path({str(tmp_path)!r}), steps=8, **{{
                "advnet.gradreg": gradreg, "advnet.g_steps": 1, "model.name": "lenet5",
                "options": gradreg}})
    """))
    config = wang_yu.gradreg_study_config(
        "tiny study", str(config_file),
        rows=[("finite_difference", "advnet,finite_difference", 0),
              ("exact", "advnet,exact", 0)],
        surrogates=[("A'", "standard", 1)], agreement_row="finite_difference")
    with config.unlocked():
        config.progress_bar = False
        config.study.fd_steps = (1e-1, 1e-2, 1e-3)
        config.study.cost_steps = config.study.cost_rounds = 1
    workdir = str(tmp_path / "study")
    results = main.run(config, workdir, "study")
    for name in ("gradreg_study.md", "gradreg_study.json", "gradreg_agreement.png",
                 "gradreg_outcome.md", "gradreg_outcome.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    # Initialization and the two checkpoints (steps 4 and 8) of the finite_difference run.
    assert sorted(results["agreement"], key=int) == ["0", "4", "8"]
    for rows in results["agreement"].values():
        assert [r["h"] for r in rows] == [1e-1, 1e-2, 1e-3]
    # The rows at step 4 are the agreement of that checkpoint's terms on the first minibatch.
    run_dir = os.path.join(workdir, json.load(open(os.path.join(
        workdir, "gradreg_outcome.json")))["runs"]["finite_difference"])
    run = runs.load_run(run_dir, step=4)
    probe_config, _, x, y = gradreg_study.first_minibatch(run_dir)
    players, _, _ = advnet.players(probe_config, 10)
    again = gradreg_study.regularizer_agreement(
        players, run.state, x, y, jax.random.key(probe_config.seed), (1e-1, 1e-2, 1e-3))
    for key in ("h", "cosine", "relative_error"):
        np.testing.assert_allclose([r[key] for r in again],
                                   [r[key] for r in results["agreement"]["4"]], rtol=1e-4)
    assert set(results["cost"]) == {"none", "exact", "finite_difference"}
    assert all(c["seconds"] > 0 for c in results["cost"].values())
    assert set(results["outcome"]) == set(results["oscillation"]) == {"finite_difference",
                                                                      "exact"}
    assert "pgd(A')" in results["outcome"]["exact"]
    text = open(os.path.join(workdir, "gradreg_study.md")).read()
    assert "exact / finite_difference" in text and "| gradreg |" in text
