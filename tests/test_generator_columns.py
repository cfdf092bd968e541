"""Generator columns (evaluate/columns.py, protocol.train_generator_columns): AdvGAN, GAP
and the L2L-DA attack named in specs, trained against the classifier they attack (or a
surrogate's) on the training split before they run."""

import types

import jax
import numpy as np
import pytest
from test_attacks_l2l_generators import BOUNDS, EPS, SHAPE, N, key, setup  # noqa: F401

from robustgan import attacks, data, methods
from robustgan import config as configlib
from robustgan.errors import ConfigError
from robustgan.evaluate import columns, protocol
from robustgan.evaluate.columns import GeneratorColumn
from robustgan.methods.supervised import supervised_net


def eval_config(**overrides):
    e = configlib.base_config().eval
    for k, v in overrides.items():
        e[k] = v
    return e


def dataset(classifier, x):
    """The tiny images as a dataset's uint8 training split (labels: the classifier's)."""
    x_train = np.asarray(np.round((np.asarray(x) - BOUNDS[0]) / (BOUNDS[1] - BOUNDS[0]) * 255),
                         np.uint8)
    x_scaled = data.scale(x_train, BOUNDS)
    return types.SimpleNamespace(x_train=x_train,
                                 y_train=np.asarray(classifier.logits(x_scaled).argmax(-1)))


def test_specs_give_generator_columns_with_the_evaluation_eps():
    e = eval_config(eps=0.3)
    cols = columns.white_box(e, ("advgan(num_steps=5, bound=0.2)", "g=gap(num_steps=2)",
                                 "l2l=l2l_da_attack(start='run', num_steps=3, samples=4)"))
    assert cols == {
        "advgan(num_steps=5, bound=0.2)": GeneratorColumn(
            "advgan", (("bound", 0.2), ("eps", 0.3), ("num_steps", 5))),
        "g": GeneratorColumn("gap", (("eps", 0.3), ("num_steps", 2))),
        "l2l": GeneratorColumn("l2l_da_attack", (("eps", 0.3), ("num_steps", 3),
                                                 ("samples", 4), ("start", "run")))}
    # The L2L-DA attack's module and variables come from `start`, never from a spec.
    assert {"module", "variables"}.isdisjoint(columns.generator_settings("l2l_da_attack"))


@pytest.mark.parametrize("spec,match", [
    ("advgan", r"needs the setting\(s\) \['num_steps'\]"),
    ("l2l_da_attack(num_steps=2)", r"needs the setting\(s\) \['start'\]"),
    ("gap(num_steps=2, generator=1)", r"gap has no setting\(s\) \['generator'\]"),
    ("l2l_da_attack(start='r', num_steps=2, module=1)", r"no setting\(s\) \['module'\]"),
    ("bpda(gap(num_steps=2))", "bpda wraps a gradient attack"),
    ("eot(advgan(num_steps=2), 3)", "eot wraps a gradient attack"),
])
def test_bad_generator_specs_are_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        columns.white_box(eval_config(), (spec,))


def test_a_trained_column_is_the_trainer_run_with_the_column_s_key(setup):  # noqa: F811
    classifier, x, _ = setup
    ds = dataset(classifier, x)
    e = eval_config(eps=EPS)
    cols = protocol.white_box_columns(e, ("fgsm", "advgan(num_steps=2, batch_size=8)"))
    with pytest.raises(ValueError, match="not trained"):
        protocol.accuracy_under_attacks(classifier, ds.x_train, ds.y_train, cols,
                                        batch_size=N, value_range=BOUNDS, mesh=None,
                                        rng=key(0), progress=False)
    rng = key(1)
    trained = protocol.train_generator_columns(cols, classifier, ds, value_range=BOUNDS,
                                               rng=rng, progress=False)
    assert trained["fgsm"] is cols["fgsm"] and trained["clean"] is cols["clean"]
    x_train = data.scale(ds.x_train, BOUNDS)
    direct = attacks.train_advgan(classifier, x_train, ds.y_train, jax.random.fold_in(rng, 2),
                                  eps=EPS, num_steps=2, batch_size=8)
    column = trained["advgan(num_steps=2, batch_size=8)"].attack
    np.testing.assert_array_equal(column(classifier, x_train, ds.y_train),
                                  direct(classifier, x_train, ds.y_train))
    result = protocol.accuracy_under_attacks(
        classifier, ds.x_train, ds.y_train, trained, batch_size=N, value_range=BOUNDS,
        mesh=None, rng=key(0), progress=False)
    assert result["clean"] == 1.0 and result["min"] <= min(
        result["fgsm"], result["advgan(num_steps=2, batch_size=8)"])


def test_transfer_columns_train_on_the_surrogate_once_and_start_runs_resolve(setup,  # noqa: F811
                                                                           monkeypatch):
    classifier, x, _ = setup
    ds = dataset(classifier, x)
    surrogate = classifier.replace(variables=jax.tree.map(lambda v: -v, classifier.variables))
    calls = []

    def trainer(classifier, x, y, rng, *, module, variables=None, eps, num_steps, steps=10,
                mesh=None, progress=False):  # finetune_l2l_da's signature, recording calls
        calls.append((classifier, num_steps, {"module": module, "steps": steps}))
        return lambda classifier, x, y, rng=None: x

    monkeypatch.setitem(attacks.GENERATOR_ATTACKS, "l2l_da_attack", trainer)
    monkeypatch.setattr(protocol, "generator_start",
                        lambda path: {"module": f"module of {path}", "steps": 7})
    spec = ("l2l=l2l_da_attack(start='L2L-DA', num_steps=3)",)
    cols = (protocol.white_box_columns(eval_config(), spec)
            | protocol.transfer_columns(eval_config(), spec, ["A"]))
    cache = {}
    for _ in range(2):  # two rows of a table
        protocol.train_generator_columns(
            cols, classifier, ds, value_range=BOUNDS, rng=key(0), sources={"A": surrogate},
            run_dirs={"L2L-DA": "runs/l2l_da_seed0"}, trained=cache, progress=False)
    # White box trained per row against the row's classifier; the transfer column once,
    # against its surrogate; both from the start run's generator, named by its row.
    assert [(c is surrogate, n, f) for c, n, f in calls] == [
        (False, 3, {"module": "module of runs/l2l_da_seed0", "steps": 7}),
        (True, 3, {"module": "module of runs/l2l_da_seed0", "steps": 7}),
        (False, 3, {"module": "module of runs/l2l_da_seed0", "steps": 7})]
    assert len(cache) == 1


def test_a_start_run_must_offer_a_generator(tmp_path):
    from helpers import tiny_config

    from robustgan import main

    config = tiny_config(tmp_path, "standard", steps=2, **{"eval.attacks": ("fgsm",)})
    main.run(config, str(tmp_path / "plain"), "train")
    with pytest.raises(ConfigError, match="offers no generator to start from; name a run "
                                          r"of \['l2l', 'l2l_da'\]"):
        protocol.generator_start(str(tmp_path / "plain"))


def test_pgd_at_trains_on_the_loss_train_attack_names(tmp_path):
    """The C&W100 defense of Jang et al. Table 2: PGD on the C&W margin loss."""
    from helpers import tiny_config

    config = tiny_config(tmp_path, "pgd_at", **{"train_attack.loss": "margin"})
    method = methods.build(config, 10)
    x = jax.random.uniform(key(0), (16, 28, 28, 1), minval=-1.0, maxval=1.0)
    y = jax.numpy.arange(16) % 10
    state = method.init(key(1), x[:1])
    rng = key(2)
    trained, _ = jax.jit(method.train_step)(state, x, y, rng)
    net = supervised_net(config, 10)
    attack_rng, step_rng = jax.random.split(rng)
    a = config.train_attack
    by_loss = {}
    for loss in ("margin", "ce"):
        x_adv = attacks.pgd(net.classifier(state, a.batch_norm), x, y, attack_rng, eps=a.eps,
                            step_size=a.step_size, steps=a.steps, loss=loss)
        by_loss[loss] = net.sgd_step(state, x_adv, y, step_rng)[0]

    def distance_in_steps(loss):
        """Per leaf, how far the trained parameters are from the `loss` step, in units of
        that step's size (round-off in the jitted step is far below one)."""
        leaves = [jax.tree.leaves(p) for p in (trained.params, by_loss[loss].params,
                                                 state.params)]
        return np.array([np.linalg.norm(np.subtract(got, want, dtype=np.float64))
                         / max(np.linalg.norm(np.subtract(want, start, dtype=np.float64)), 1e-12)
                         for got, want, start in zip(*leaves, strict=True)])

    assert distance_in_steps("margin").max() < 0.05
    assert distance_in_steps("ce").max() > 0.3
