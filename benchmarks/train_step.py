"""Throughput of the jitted standard and PGD-10 training steps (D1, MNIST shape, batch 64)
against the same steps in PyTorch eager, in one process on the same CPU.

    python benchmarks/train_step.py [--steps 30] [--threads N]

Prints images/second for each, the JAX/PyTorch ratio, and the FLOP/s JAX reached
(FLOPs from XLA's cost analysis of the compiled step). PyTorch is optional
(`pip install -e .[bench]`; torch==2.13.0 is the CPU build that installs here).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from robustgan import config as configlib
from robustgan import methods, parallel

BATCH = 64


def jax_steps(method_name: str):
    c = configlib.base_config()
    c.method = method_name
    c.data.value_range = (-1.0, 1.0)
    c.model.kwargs = ml_collections.ConfigDict()
    c.batch_size = BATCH
    c.train_attack.eps, c.train_attack.step_size, c.train_attack.steps = 0.3, 0.075, 10
    method = methods.build(c, 10)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, BATCH), jnp.int32)
    # As train.py runs it: parameters replicated and the batch sharded over the mesh (on
    # this CPU, one device per core: parallel.use_cpu_cores).
    mesh = parallel.make_mesh()
    state = parallel.replicate(method.init(jax.random.key(0), x[:1]), mesh)
    x, y = parallel.shard_batch((x, y), mesh)
    step = jax.jit(method.train_step, donate_argnums=0)
    compiled = step.lower(state, x, y, jax.random.key(1)).compile()
    # XLA's cost analysis counts one device's shard of the step.
    flops = mesh.devices.size * (compiled.cost_analysis() or {}).get("flops", float("nan"))

    def run(n):
        nonlocal state
        for i in range(n):
            state, metrics = compiled(state, x, y, jax.random.key(i))
        jax.block_until_ready(metrics)

    return run, flops


def torch_steps(method_name: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(BATCH, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (BATCH,))
    loss_fn = nn.CrossEntropyLoss()
    eps, alpha = 0.6, 0.15  # 0.3 and 0.075 in [0, 1] pixel units, data in [-1, 1]

    def pgd(x, y):
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(-1, 1)
        for _ in range(10):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(loss_fn(model(x_adv), y), x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(-1, 1)
        return x_adv.detach()

    def run(n):
        model.train()
        for _ in range(n):
            inputs = pgd(x, y) if method_name == "pgd_at" else x
            opt.zero_grad()
            loss_fn(model(inputs), y).backward()
            opt.step()

    return run


def interleaved_images_per_second(runs: dict, steps: int, repeats: int = 5) -> dict:
    """Best-of-`repeats` images/second of each run, timed in alternation so that a
    background load on this machine affects every contender alike."""
    for run in runs.values():
        run(2)  # warm-up (and compilation)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(steps)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: steps * BATCH / seconds for name, seconds in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    print(f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}; "
          f"torch {torch_version or 'not installed'}; D1, batch {BATCH}")
    print("| step | JAX img/s | PyTorch img/s | JAX / PyTorch | JAX GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name in ("standard", "pgd_at"):
        steps = args.steps if name == "standard" else max(args.steps // 3, 5)
        run, flops = jax_steps(name)
        runs = {"jax": run} | ({"torch": torch_steps(name)} if torch_version else {})
        ips = interleaved_images_per_second(runs, steps)
        gflops = flops * ips["jax"] / BATCH / 1e9
        torch_cell = f"{ips['torch']:.0f}" if torch_version else "-"
        ratio = f"{ips['jax'] / ips['torch']:.2f}" if torch_version else "-"
        print(f"| {name} | {ips['jax']:.0f} | {torch_cell} | {ratio} | {gflops:.2f} |", flush=True)


if __name__ == "__main__":
    main()
