"""advnet end to end (train loop, checkpoints, evaluation) and its configs."""

import glob
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_matches_recorded, tiny_config
from jax.flatten_util import ravel_pytree

from robustgan import config as configlib
from robustgan import main, nets, runs, train
from robustgan.errors import ConfigError
from robustgan.methods import advnet

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
# Small enough for CPU tests: width-2 generators, 2 ascent steps, D every 2nd iteration.
TINY = {"advnet.generator_width": 2, "advnet.g_steps": 2, "advnet.d_every": 2}


@pytest.fixture(autouse=True)
def fast_keys():
    """'rbg' keys only make initialization faster to compile on CPU than threefry."""
    with jax.default_prng_impl("rbg"):
        yield


def advnet_config(tmp_path, steps=4, **overrides):
    return tiny_config(tmp_path, "advnet", steps=steps, **{**TINY, **overrides})


def logged(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_train_then_evaluate_with_the_paper_defaults(tmp_path):
    """finite_difference + G0, unclipped, as the MNIST config; eval mode restores the same
    state."""
    config = advnet_config(tmp_path)
    workdir = str(tmp_path / "run")
    results = main.run(config, workdir, "train")
    # As before the platform refactor, which did not change the unclipped game.
    assert_matches_recorded("advnet_unclipped", results, runs.load_run(workdir).state)
    rows = logged(workdir)
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss", "clean_loss", "adv_loss", "accuracy", "adv_accuracy", "g_gain"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert main.run(config, workdir, "eval") == results


def train_and_check(tmp_path, gradreg, generator):
    """A 4-iteration run; G1-G3 adapt to 28x28 images (an (H/4, W/4) latent grid), so the
    tiny MNIST-like data serve. D is LeNet-5 only to compile faster (D1 runs above)."""
    config = advnet_config(tmp_path, **{"advnet.gradreg": gradreg, "advnet.g_steps": 1,
                                        "advnet.generator": generator, "model.name": "lenet5"})
    _, _, state = train.train(config, str(tmp_path / "run"))
    # G updated in every iteration (1 ascent step), D in iterations 0 and 2.
    assert (int(state.step), int(state.d.step), int(state.g.step)) == (4, 2, 4)
    leaves = jax.tree.leaves((state.d.params, state.g.params))
    assert all(np.isfinite(leaf).all() for leaf in leaves)


def test_exact_regularizer_with_the_noise_generator_trains(tmp_path):
    train_and_check(tmp_path, "exact", "g2")  # the other modes: test_advnet_modes.py


def test_eps_ramp_scales_the_perturbation_the_game_uses(tmp_path):
    """At iteration 0 of a 10^6-step ramp G's eps is 3e-7: the adversarial images are the
    clean ones, so F's two losses agree; without a ramp they do not."""
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1), minval=-1.0, maxval=1.0)
    y = jnp.arange(8) % 10
    for ramp, eps in ((10**6, 0.3e-6), (0, 0.3)):
        config = advnet_config(tmp_path, **{"advnet.eps_ramp_steps": ramp,
                                            "advnet.g_steps": 1, "model.name": "lenet5"})
        method = advnet.advnet(config, 10)
        state = method.init(jax.random.key(0), x)
        _, metrics = jax.jit(method.train_step)(state, x, y, jax.random.key(2))
        np.testing.assert_allclose(metrics["eps"], eps, rtol=1e-5)
        gap = abs(float(metrics["adv_loss"] - metrics["clean_loss"]))
        assert gap < 1e-4 if ramp else gap > 1e-3, (ramp, gap)


def test_train_step_gives_d_the_regularized_gradient_after_g_ascends(tmp_path):
    """One iteration by hand: G's ascent on this minibatch (which must raise the adversarial
    loss), then one plain SGD step of D along game.d_gradient at the new phi."""
    from robustgan import game, optim

    lr, gamma = 0.1, 1.0
    config = advnet_config(tmp_path, **{
        "advnet.gradreg": "exact", "advnet.gamma": gamma, "advnet.d_every": 1,
        "optimizer.name": "sgd", "optimizer.learning_rate": lr, "optimizer.momentum": 0.0,
        "optimizer.weight_decay": 0.0, "optimizer.schedule": "constant",
        "model.kwargs": {"use_bn": False}})
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1), minval=-1.0, maxval=1.0)
    y = jnp.arange(8) % 10
    method = advnet.advnet(config, 10)
    state = method.init(jax.random.key(0), x)
    rng = jax.random.key(2)
    new, metrics = jax.jit(method.train_step)(state, x, y, rng)

    players, _, _ = advnet.players(config, 10)
    g_tx = optim.make_optimizer(config.advnet.g_optimizer,
                                config.num_train_steps * config.advnet.g_steps)
    stats = ({}, state.g.batch_stats)
    phi, _, _, _ = game.ascend_generator(players, g_tx, state.d.params, state.g.params,
                                         state.g.opt_state, stats, x, y, rng,
                                         steps=config.advnet.g_steps)
    np.testing.assert_allclose(ravel_pytree(new.g.params)[0],
                               ravel_pytree(phi)[0], rtol=1e-5, atol=1e-6)
    adv_loss = lambda p: game.objective(players, state.d.params, p, stats, x, y,
                                        rng)[1].metrics["adv_loss"]
    assert float(adv_loss(phi)) > float(adv_loss(state.g.params)) + 1e-3
    np.testing.assert_allclose(metrics["g_gain"], adv_loss(phi) - adv_loss(state.g.params),
                               rtol=1e-4)

    def d_step(gradreg):
        grads, _ = game.d_gradient(players, state.d.params, phi, stats, x, y, rng,
                                   gradreg=gradreg, gamma=gamma, fd_step=1e-3)
        return jax.tree.map(lambda p, g: p - lr * g, state.d.params, grads)

    flat = lambda tree: ravel_pytree(tree)[0]
    np.testing.assert_allclose(flat(new.d.params), flat(d_step("exact")), rtol=1e-4, atol=1e-6)
    # The regularizer matters at this gamma: the plain step lands elsewhere.
    assert float(jnp.abs(flat(d_step("none")) - flat(d_step("exact"))).max()) > 1e-4


def test_authors_code_takes_h_from_d_learning_rate():
    """CODE_NOTES: the code's h is D's learning rate / 10; Eq. 9's is G's / 10."""
    for gradreg, h in (("finite_difference", 0.002 / 10), ("authors_code", 0.1 / 10)):
        config = load_config("cifar10.py", "advnet").copy_and_resolve_references()
        config.advnet.gradreg = gradreg
        assert advnet.fd_step(config) == pytest.approx(h)
    config.advnet.fd_step = 0.5
    assert advnet.fd_step(config) == 0.5


def load_config(name, arg):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(CONFIGS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))),
                         ids=os.path.basename)
def test_every_config_offers_advnet(path):
    config = load_config(os.path.basename(path), "advnet")
    configlib.validate(config)
    assert config.advnet.eps == config.eval.eps


def test_paper_settings_for_advnet():
    for name in ("mnist.py", "svhn.py", "cifar10.py", "cifar100.py"):
        paper = load_config(name, "advnet")  # Eq. 4 and the authors' code, their BN policy
        assert (paper.advnet.clip, paper.eval.batch_norm) == (False, "batch_stats"), name
    mnist = load_config("mnist.py", "advnet")
    assert (mnist.advnet.generator, mnist.advnet.d_every, mnist.advnet.g_steps) == ("g0", 5, 5)
    assert mnist.optimizer.weight_decay == mnist.advnet.g_optimizer.weight_decay == 1e-5
    assert mnist.optimizer.learning_rate == mnist.advnet.g_optimizer.learning_rate == 0.01
    assert (mnist.advnet.gradreg, mnist.advnet.gamma, mnist.advnet.adv_weight) == (
        "finite_difference", 0.01, 1.0)
    svhn = load_config("svhn.py", "advnet")
    assert (svhn.advnet.generator, svhn.advnet.d_every, svhn.advnet.eps) == ("g1", 1, 0.05)
    assert svhn.optimizer.weight_decay == svhn.advnet.g_optimizer.weight_decay == 1e-4
    cifar = load_config("cifar10.py", "advnet")
    g = cifar.advnet.g_optimizer
    assert (g.name, g.learning_rate, g.b1, g.weight_decay) == ("adam", 0.002, 0.5, 1e-5)
    assert cifar.optimizer.learning_rate == 0.1 and cifar.advnet.eps == pytest.approx(8 / 256)
    # The CPU recipe keeps G0, eps and the regularizer; D on Adam 2e-3, G on Adam with 20
    # steps, D every step, lambda 2, unclipped, eps ramped over the first eighth of an epoch.
    cpu = load_config("mnist.py", "advnet,cpu")
    g = cpu.advnet.g_optimizer
    assert (g.name, g.learning_rate, g.b1) == ("adam", 0.002, 0.5)
    assert (cpu.advnet.g_steps, cpu.advnet.d_every, cpu.advnet.generator) == (20, 1, "g0")
    assert (cpu.advnet.gradreg, cpu.advnet.eps) == ("finite_difference", 0.3)
    assert (cpu.advnet.adv_weight, cpu.advnet.clip) == (2.0, False)
    assert cpu.eval.batch_norm == "eval" and not cpu.model.kwargs.use_bn
    assert cpu.advnet.eps_ramp_steps == 60_000 // 64 // 8
    assert (cpu.optimizer.name, cpu.optimizer.learning_rate) == ("adam", 2e-3)


@pytest.mark.parametrize("key,value,match", [
    ("advnet.gradreg", "double_backprop", "advnet.gradreg='double_backprop' is not valid"),
    ("advnet.generator", "g7", "advnet.generator='g7' is not valid"),
    ("advnet.eps", 1.5, "advnet.eps=1.5 is out of range"),
    ("advnet.gamma", -0.01, "advnet.gamma=-0.01 must be >= 0"),
    ("advnet.fd_step", -1.0, "advnet.fd_step=-1.0 must be >= 0"),
    ("advnet.generator_width", -2, "advnet.generator_width=-2 must be >= 0"),
    ("advnet.eps_ramp_steps", -1, "advnet.eps_ramp_steps=-1 must be >= 0"),
    ("advnet.g_steps", 0, "advnet.g_steps=0 must be at least 1"),
    ("advnet.d_every", 0, "advnet.d_every=0 must be at least 1"),
    ("advnet.g_optimizer.name", "rmsprop", "advnet.g_optimizer.name='rmsprop' is not valid"),
    ("advnet.g_optimizer.learning_rate", 0.0, "advnet.g_optimizer.learning_rate must be"),
])
def test_bad_advnet_values_stop_with_the_key_named(key, value, match):
    c = configlib.base_config()
    c.method = "advnet"
    parent, _, leaf = key.rpartition(".")
    node = c
    for part in parent.split("."):
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        configlib.validate(c)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_d_update_is_skipped_exactly_when_the_predicate_is_false(monkeypatch, backend):
    """`when` takes lax.cond off CPU, and on CPU updates always and selects."""
    monkeypatch.setattr(nets.jax, "default_backend", lambda: backend)
    update = lambda s: ({"w": s["w"] - 1.0, "n": s["n"] + 1}, {"loss": s["w"] * 2})
    evaluate = lambda s: {"loss": s["w"] * 2}
    state = {"w": jnp.float32(3.0), "n": jnp.int32(0)}
    step = jax.jit(lambda p, s: nets.when(p, update, evaluate, s))
    for pred, expected in ((True, (2.0, 1)), (False, (3.0, 0))):
        new, metrics = step(pred, state)
        assert (float(new["w"]), int(new["n"])) == expected and float(metrics["loss"]) == 6.0
