"""Cost of advnet's gradient regularizers (Wang & Yu Eqs. 8-9): wall time of one D step
(game.d_gradient + the SGD-momentum update) for gradreg none / exact / finite_difference,
D1 + G0 (k=64) on MNIST shapes, batch 64, both players' BatchNorm in training mode.

    python benchmarks/gradreg.py [--steps 10] [--rounds 3] [--batch 64]

The modes run interleaved, round by round, in one process so that load on the machine
hits them alike; prints each mode's median seconds per step over rounds and the ratios.
The paper chose the finite difference because double back-propagation was slower in
TensorFlow; `exact` here is forward-over-reverse (jax.jvp of the gradient).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustgan import config as configlib
from robustgan import game, optim
from robustgan.models import get_model
from robustgan.models.generators import get_generator

MODES = ("none", "exact", "finite_difference")


def d_steps(batch: int):
    """{mode: (compiled D step, its arguments)} and the compile times."""
    c = configlib.base_config()
    d, g = get_model("d1", 10), get_generator("g0", 10)
    r = np.random.default_rng(0)
    x = jnp.asarray(r.uniform(-1, 1, (batch, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(r.integers(0, 10, batch), jnp.int32)
    d_vars = d.init(jax.random.key(0), x[:1])
    g_vars = g.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, x[:1], y[:1])
    players = game.Game(game.TrainMode(d), game.TrainMode(g), eps=0.6, bounds=(-1.0, 1.0))
    tx = optim.make_optimizer(c.optimizer, 1000)
    stats = (d_vars["batch_stats"], g_vars["batch_stats"])
    fd_step = c.advnet.g_optimizer.learning_rate / 10

    def step(mode, theta, opt_state, phi, key):
        grads, aux = game.d_gradient(players, theta, phi, stats, x, y, key, gradreg=mode,
                                     gamma=c.advnet.gamma, fd_step=fd_step)
        updates, opt_state = tx.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, aux.metrics["loss"]

    theta = d_vars["params"]
    args = (theta, tx.init(theta), g_vars["params"], jax.random.key(3))
    compiled, compile_seconds = {}, {}
    for mode in MODES:
        start = time.perf_counter()
        compiled[mode] = jax.jit(step, static_argnums=0).lower(mode, *args).compile()
        compile_seconds[mode] = time.perf_counter() - start
    return compiled, args, compile_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="D steps per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    compiled, inputs, compile_seconds = d_steps(args.batch)
    for fn in compiled.values():  # warm up
        jax.block_until_ready(fn(*inputs))
    per_step = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            theta, opt_state, phi, key = inputs
            start = time.perf_counter()
            for i in range(args.steps):
                theta, opt_state, loss = compiled[mode](theta, opt_state, phi,
                                                        jax.random.fold_in(key, i))
            jax.block_until_ready((theta, loss))
            per_step[mode].append((time.perf_counter() - start) / args.steps)

    device = jax.devices()[0]
    print(f"D1 + G0 (k=64), batch {args.batch}, {device.platform} ({device.device_kind}), "
          f"{args.rounds} rounds x {args.steps} D steps per mode")
    median = {mode: statistics.median(times) for mode, times in per_step.items()}
    for mode in MODES:
        rounds = " ".join(f"{t * 1e3:.0f}" for t in per_step[mode])
        print(f"  {mode:18s} {median[mode] * 1e3:8.1f} ms/step  (rounds: {rounds} ms; "
              f"compile {compile_seconds[mode]:.1f} s)")
    print(f"  exact / finite_difference = {median['exact'] / median['finite_difference']:.2f}")
    print(f"  exact / none              = {median['exact'] / median['none']:.2f}")
    print(f"  finite_difference / none  = {median['finite_difference'] / median['none']:.2f}")


if __name__ == "__main__":
    main()
