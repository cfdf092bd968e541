"""Small shared test fixtures: a tiny learnable dataset and a config that trains on it."""

from __future__ import annotations

import json
import os

import numpy as np

from robustgan import config as configlib


def write_tiny_npz(path, num_train=256, num_test=64, size=28, seed=0):
    """Digits-like toy data: class k lights up a distinct bright patch (learnable fast)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = divmod(int(k), 5)
            x[i, 4 + 10 * r : 10 + 10 * r, 1 + 5 * c : 5 + 5 * c] = 255
        return x, y

    (xt, yt), (xs, ys) = make(num_train), make(num_test)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return str(path)


def tiny_config(tmp_path, method="standard", steps=8, **overrides):
    """A base config training D1 for `steps` steps of batch 16 on the tiny npz data."""
    c = configlib.base_config()
    c.method = method
    c.data.source = "npz"
    c.data.name = "tiny"
    c.data.dir = write_tiny_npz(tmp_path / "tiny.npz")
    c.data.value_range = (-1.0, 1.0)
    c.batch_size = 16
    c.num_train_steps = steps
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.train_attack.steps = 2
    c.eval.batch_size = 32
    c.eval.pgd_steps = 2
    c.eval.measures = False  # tests that want them turn them on
    c.log_every = 2
    c.checkpoint_every = 4
    c.progress_bar = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    c.lock()
    return c


RECORDED = None


def recorded(name: str) -> dict:
    """What the tiny run `name` gave at commit d848632, before the platform refactor
    (tests/recorded/d848632.json): its results and a checksum of its final state."""
    global RECORDED
    if RECORDED is None:
        import json
        import os

        with open(os.path.join(os.path.dirname(__file__), "recorded", "d848632.json")) as f:
            RECORDED = json.load(f)
    return RECORDED["runs"][name]


def assert_matches_recorded(name: str, results: dict, state, *, examples: int = 2,
                            state_rtol: float | None = 1e-3) -> None:
    """The run reproduces the recorded one: the same accuracies to `examples` of the 64
    (float round-off on another CPU can flip an example near the decision boundary) and,
    unless `state_rtol` is None, the same final state: per leaf, its sum of squares to
    `state_rtol`, and its sum to `state_rtol` of the leaf's norm (a sum that cancels to near
    zero, as a weight matrix's does, carries the round-off of its terms, not of itself)."""
    import jax

    expected = recorded(name)
    for key, value in expected["results"].items():
        assert abs(results[key] - value) <= examples / 64 + 1e-9, (name, key, results[key], value)
    if state_rtol is None:
        return
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(jax.device_get(state))
              if np.issubdtype(np.asarray(leaf).dtype, np.floating)]
    want_sum, want_squares = np.asarray(expected["checksum"]).T
    np.testing.assert_allclose([(leaf ** 2).sum() for leaf in leaves], want_squares,
                               rtol=state_rtol, atol=1e-6, err_msg=f"{name}: sum of squares")
    sum_error = np.abs([leaf.sum() for leaf in leaves] - want_sum)
    bound = state_rtol * np.sqrt(want_squares) + 1e-9
    assert np.all(sum_error <= bound), (name, "sum", np.flatnonzero(sum_error > bound))


def config_file_calling(tmp_path, module: str, function: str):
    """A config file (tmp_path/cfg.py) whose get_config(arg) is `function(tmp_path, arg)`
    from the test module `module`: tiny configs for table and study runs."""
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import pathlib, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        f"from {module} import {function}\n"
        "def get_config(arg):\n"
        f"    return {function}(pathlib.Path({str(tmp_path)!r}), arg)\n")
    return config_file


def run_table_with_dirs(config, workdir):
    """(results, {row: run directory}) of `table.run_table(config, workdir)`."""
    from robustgan import table

    results = table.run_table(config, str(workdir))
    with open(workdir / "table.json") as f:
        run_dirs = {name: str(workdir / d) for name, d in json.load(f)["runs"].items()}
    return results, run_dirs
