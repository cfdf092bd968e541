"""Cost of advnet's gradient regularizers (Wang & Yu Eqs. 8-9): wall time of one D step
(game.d_gradient + D's optimizer update) for gradreg none / exact / finite_difference,
MNIST advnet as the paper sets it (D1 with BatchNorm + G0, k=64), batch 64, both
players' BatchNorm in training mode, the batch sharded over the device mesh as in
training.

    python benchmarks/gradreg.py [--steps 5] [--rounds 5] [--config configs/mnist.py:advnet]

The modes run interleaved, round by round, in one process so that load on the machine
hits them alike (studies.gradreg.d_step_cost); prints each mode's median time per step and
the ratios. The paper chose the finite difference because double back-propagation was
slower in TensorFlow; `exact` here is forward-over-reverse (`jax.linearize` of the
gradients in phi, applied to v = grad_phi F).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from robustgan import config as configlib
from robustgan.studies import gradreg as gradreg_study


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="D steps per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", default="configs/mnist.py:advnet",
                        help="an advnet config on 28x28x1 images (MNIST, Fashion-MNIST)")
    args = parser.parse_args()

    config = configlib.load_config_file(args.config)
    r = np.random.default_rng(0)
    low, high = config.data.value_range
    x = r.uniform(low, high, (config.batch_size, 28, 28, 1)).astype(np.float32)
    y = r.integers(0, config.data.num_classes, config.batch_size).astype(np.int32)
    cost = gradreg_study.d_step_cost(config, x, y, steps=args.steps, rounds=args.rounds)
    print(f"{args.config}: {config.model.name} + {config.advnet.generator}, batch "
          f"{config.batch_size}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
          f"{args.rounds} rounds x {args.steps} D steps per mode")
    for mode, c in cost.items():
        rounds = " ".join(f"{t * 1e3:.0f}" for t in c["rounds"])
        print(f"  {mode:18s} {c['seconds'] * 1e3:8.1f} ms/step  (rounds: {rounds} ms; "
              f"compile {c['compile_seconds']:.1f} s)")
    seconds = {mode: c["seconds"] for mode, c in cost.items()}
    print(f"  exact / finite_difference = {seconds['exact'] / seconds['finite_difference']:.2f}")
    print(f"  exact / none              = {seconds['exact'] / seconds['none']:.2f}")
    print(f"  finite_difference / none  = {seconds['finite_difference'] / seconds['none']:.2f}")


if __name__ == "__main__":
    main()
