"""Data parallelism on 8 simulated CPU devices (a subprocess: the flag must precede JAX)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import pathlib
    import jax
    import numpy as np
    from helpers import tiny_config
    from robustgan import data, methods, parallel, train
    from robustgan.errors import ConfigError

    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(pathlib.Path({tmp!r}), "pgd_at", batch_size=32)
    dataset = data.load_dataset(config.data)
    method = methods.build(config, 10)

    def run(num_devices):
        mesh = parallel.make_mesh(num_devices)
        state = method.init(jax.random.key(0), data.scale(dataset.x_train[:1], (-1, 1)))
        state = parallel.replicate(state, mesh)
        step = jax.jit(method.train_step)
        batches = data.train_batches(dataset, 32, seed=0)
        for i in range(3):
            x, y = next(batches)
            x, y = parallel.shard_batch((data.scale(x, (-1, 1)), y), mesh)
            state, metrics = step(state, x, y, jax.random.key(i))
        return state, x

    state8, x8 = run(8)
    assert len(x8.sharding.device_set) == 8 and x8.addressable_shards[0].data.shape[0] == 4
    state1, _ = run(1)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    try:
        parallel.check_batch_size(12, parallel.make_mesh())
        raise SystemExit("no error for a batch of 12 on 8 devices")
    except ConfigError as e:
        assert "not divisible by the 8 devices" in str(e), e
    # A run trained on the 8 devices, for the parent process to load on its one.
    train.train(tiny_config(pathlib.Path({tmp!r}), "standard", steps=2), {workdir!r})
    print("OK")
""")


def test_eight_devices_match_one_device_and_their_runs_load_on_one(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    workdir = str(tmp_path / "run8")
    script = _SCRIPT.format(tests=os.path.dirname(__file__), tmp=str(tmp_path), workdir=workdir)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    # Checkpoints saved on 8 devices restore here, on this process's device.
    from robustgan import runs, train

    run = runs.load_run(workdir)
    _, _, state = train.restore_trained(run.config, workdir)
    assert run.step == 2 and jax.device_count() < 8
    for a, b in zip(jax.tree.leaves(run.state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def _device_count(**env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "ROBUSTGAN_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", **env_overrides)
    script = "import robustgan, jax; print(jax.device_count())"
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cpu_is_split_into_one_device_per_core_unless_the_user_chose():
    cores = min(len(os.sched_getaffinity(0)), 8)
    expected = 1 << (cores.bit_length() - 1)
    assert _device_count().stdout.split()[-1] == str(expected)
    assert _device_count(ROBUSTGAN_CPU_DEVICES="1").stdout.split()[-1] == "1"
    assert _device_count(ROBUSTGAN_CPU_DEVICES="4").stdout.split()[-1] == "4"
    flags = "--xla_force_host_platform_device_count=3"
    assert _device_count(XLA_FLAGS=flags).stdout.split()[-1] == "3"
    bad = _device_count(ROBUSTGAN_CPU_DEVICES="two")
    assert bad.returncode != 0 and "ROBUSTGAN_CPU_DEVICES='two'" in bad.stderr
