"""Defense-GAN's attack detection (Samangouei et al., ICLR 2018, Sec. 4.1.3, Eq. 9): the
reconstruction error as a score on a generator with a closed-form projection, the ROC/AUC
against hand counts, bad layouts, and a tiny end-to-end study with its reconstruction
grid (robustgan/studies/defense_gan_detection.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import config_file_calling
from test_defense_gan import _linear, _linear_classifier
from test_defense_gan_runs import EXAMPLES, PROJECTION, _project

from robustgan import config as configlib
from robustgan import data, recipes, runs, studies, table
from robustgan.attacks import fgsm
from robustgan.attacks.projection import ProjectionFrontEnd
from robustgan.classifier import Classifier
from robustgan.errors import ConfigError
from robustgan.studies import defense_gan_detection as detection


def _invertible_setup():
    """G(z) = Q z on 4x4 images in [-1, 1] (Q: orthonormal columns), clean images in its
    range, a linear classifier to attack. With data_scale 2 the error's gradient is
    (z - Q^T x) / 32, so one step of size 32 lands on the least-squares z* = Q^T x."""
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (16, 3)))
    x = _linear({"w": q}, 0.5 * jax.random.normal(jax.random.key(1), (6, 3)))
    y = jnp.arange(6) % 3
    classifier = Classifier(_linear_classifier, jax.random.normal(jax.random.key(2), (16, 3)),
                            (-1.0, 1.0), 3)
    front = ProjectionFrontEnd(generate=_linear, latent_dim=3, steps=2, restarts=2,
                               step_size=32.0, data_scale=2.0)
    return q, x, y, classifier, front


def test_clean_images_in_the_range_score_zero_and_fgsm_ones_their_distance_to_it():
    q, x, y, classifier, front = _invertible_setup()
    assert float(jnp.abs(x).max()) < 0.9  # FGSM at eps 0.1 (0.2 in data units) never clips
    errors = detection.detection_errors(front, {"w": q}, classifier, x, y,
                                        eps_values=(0.0, 0.1), batch_size=4,
                                        rng=jax.random.key(3))
    assert float(errors["clean"].max()) < 1e-10
    # The adversarial score is the squared distance from x_adv to G's range, in [0, 1]
    # pixel units: ||(I - Q Q^T)(x_adv - x)||^2 / (16 pixels * 2^2).
    r = np.asarray(fgsm(classifier, x, y, eps=0.1) - x).reshape(6, 16)
    off_range = r - r @ np.asarray(q) @ np.asarray(q).T
    np.testing.assert_allclose(errors[0.1], (off_range**2).sum(1) / 64, rtol=1e-4)
    assert float(errors[0.1].min()) > 1e-4
    # Eq. 9 separates them at every threshold between: adversarial images are the
    # positives (swapped labels would give AUC 0; accuracies as scores would not be these
    # errors).
    separated = detection.roc(errors["clean"], errors[0.1])
    assert separated["auc"] == 1.0
    assert any(f == 0.0 and t == 1.0 for f, t in zip(separated["fpr"], separated["tpr"],
                                                     strict=True))
    # Adversarial images equal to the clean ones (eps 0) score the same: chance.
    np.testing.assert_allclose(errors[0.0], errors["clean"], atol=1e-12)
    assert detection.roc(errors[0.1], errors[0.1].copy())["auc"] == 0.5


def test_the_auc_is_the_fraction_of_pairs_the_score_orders():
    clean, adversarial = np.array([0.1, 0.4, 0.3]), np.array([0.2, 0.5])
    # Pairs (adversarial > clean): 0.2 beats 0.1; 0.5 beats all three: 4 of 6.
    out = detection.roc(clean, adversarial)
    assert out["auc"] == pytest.approx(4 / 6)
    assert np.trapezoid(out["tpr"], out["fpr"]) == pytest.approx(4 / 6)
    assert detection.roc(adversarial, clean)["auc"] == pytest.approx(2 / 6)


def _study(tmp_path, rows, **settings):
    config_file = config_file_calling(tmp_path, "test_defense_gan_runs", "_tiny")
    config = configlib.study_config(
        "defense_gan_detection", "tiny detection", str(config_file), rows=rows, surrogates=(),
        settings={"steps": (1, 2), "restarts": (2,), "eps": (0.1, 0.3),
                  "grid_images": GRID, **settings})
    with config.unlocked():
        config.progress_bar = False
    return config


GRID = 4
DEFENDED = [("GAN", "gan", 0), ("Defense-GAN-Orig", "clf", 0,
                                {"front_end.run": "GAN", **PROJECTION})]


@pytest.mark.parametrize("rows,settings,message", [
    ([("GAN", "gan", 0), ("No defense", "clf", 0)], {}, "have 0 such rows"),
    ([("Defense-GAN-Orig", "clf", 0, {"front_end.run": "/elsewhere"})], {}, "no row of"),
    (DEFENDED, {"steps": (), "restarts": (), "eps": ()}, "nothing to sweep"),
    (DEFENDED, {"restarts": (0,)}, "study.restarts=0 must be at least 1"),
    (DEFENDED, {"eps": (1.5,)}, r"in \(0, 1\]"),
])
def test_bad_layouts_stop_before_training(tmp_path, rows, settings, message):
    with pytest.raises(ConfigError, match=message):
        studies.run(_study(tmp_path, rows, **settings), str(tmp_path / "study"))
    assert not (tmp_path / "study").exists()


def test_the_cpu_layout_scores_classifier_a_behind_the_gan_run():
    config = recipes.get_config("mnist", "defense_gan_detection_cpu", "configs/mnist.py")
    assert config.study.name in studies.STUDIES
    assert detection.check_study(config) == ("Defense-GAN-Orig", "GAN")
    t = config.table
    row = table.table_run_config(t, t.rows[1], False, {"GAN": "/runs/gan"})
    # The same classifier run as the Table 4 and Figure 3 layouts, at L=10, R=2.
    assert table.run_name(row, t.rows[1][3]) == "standard_a_cpu_seed0"
    p = row.defense_gan.projection
    assert (row.front_end.run, p.steps, p.restarts, row.eval.eps) == ("/runs/gan", 10, 2, 0.3)
    points = detection.sweep_points(config.study, steps=p.steps, restarts=p.restarts,
                                    eps=row.eval.eps)
    assert points["L"] == [(5, 2, 0.3), (10, 2, 0.3), (20, 2, 0.3)]
    assert points["R"] == [(10, 1, 0.3), (10, 2, 0.3), (10, 4, 0.3)]
    assert [e for *_, e in points["eps"]] == [0.1, 0.15, 0.2, 0.25, 0.3]


def test_tiny_study_writes_rocs_and_the_reconstruction_grid(tmp_path):
    workdir = tmp_path / "study"
    record = studies.run(_study(tmp_path, DEFENDED), str(workdir))
    for name in ("defense_gan_detection.md", "defense_gan_detection.json",
                 "defense_gan_detection.png", "defense_gan_detection_reconstructions.png"):
        assert (workdir / name).stat().st_size > 0, name
    saved = json.loads((workdir / "defense_gan_detection.json").read_text())
    assert saved == json.loads(json.dumps(record))
    sweeps = saved["sweeps"]
    settings = {name: [(q["steps"], q["restarts"], q["eps"]) for q in points]
                for name, points in sweeps.items()}
    assert settings == {"L": [(1, 2, 0.3), (2, 2, 0.3)], "R": [(2, 2, 0.3)],
                        "eps": [(2, 2, 0.1), (2, 2, 0.3)]}
    for q in (q for points in sweeps.values() for q in points):
        assert (q["fpr"][0], q["tpr"][0], q["fpr"][-1], q["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
        assert q["auc"] == pytest.approx(np.trapezoid(q["tpr"], q["fpr"]))
    # One point of three sweeps, scored once.
    assert sweeps["L"][1] == sweeps["R"][0] == sweeps["eps"][1]
    # The grid: the first 4 evaluation images projected through the GAN at the row's L=2,
    # R=2 with the starts of the detection pass (batch 0 of the 16 images, key(seed + 2)),
    # recomputed here directly; each image's projection is its own.
    gan = runs.load_run(str(workdir / saved["runs"]["GAN"]))
    x = data.scale(data.load_dataset(gan.config.data).x_test[:EXAMPLES], (-1.0, 1.0))
    rec = _project(gan, x, jax.random.fold_in(jax.random.key(2), 0))
    expected = np.mean(((np.asarray(rec) - x) / 2.0) ** 2, axis=(1, 2, 3))[:GRID]
    grid = saved["reconstructions"]
    np.testing.assert_allclose(grid["mse"], expected, rtol=1e-4)
    assert (grid["steps"], grid["restarts"], grid["mean_mse"]) == (
        2, 2, pytest.approx(expected.mean(), rel=1e-4))
    markdown = (workdir / "defense_gan_detection.md").read_text()
    assert markdown.count("\n| eps | 2 | 2 |") == 2 and f"{sweeps['L'][0]['auc']:.4f}" in markdown
