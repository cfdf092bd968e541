"""Cost of Deep Defense's regularized fine-tuning step (Yan et al. 2018) on the paper's MNIST
nets (`configs/mnist.py:deep_defense,mlp` and `,lenet`: YanMLP 784-500-150-10 and YanLeNet,
both behind the fixed input layer u = 255 x - 33.33), batch 100, random [0, 1] images.

    python benchmarks/deep_defense.py [--nets mlp,lenet] [--mlp-reps 5] [--mlp-steps 5]
        [--lenet-reps 3] [--threads N] [--devices N]

For each net, in one process:
1. the jitted deep_defense train step against the plain fine-tuning step
   (deep_defense.weight = 0), run as train.py runs them (parameters replicated, the
   batch sharded over the device mesh; `--devices 1`: one device): ratio regularized /
   plain;
2. a PyTorch eager twin of the regularized step holding the same weights: the authors'
   5-step DeepFool in u-space (all 9 other classes as candidates, fooled examples masked,
   misclassified ones stepped toward their label, overshoot 0.02), Jacobian rows by
   double backprop (create_graph=True), CE + 15 * the exp regularizer, SGD momentum; and
   the same twin with our DeepFool's economy (only the chosen row built with
   create_graph). It first checks that all give the same loss and regularizer on the same
   batch (1e-4 relative), then times the steps interleaved (median): JAX / PyTorch speed
   ratios;
3. memory of jax.grad of the regularizer with and without `jax.checkpoint` on each
   DeepFool step (deep_defense.remat), from XLA's memory analysis of the compiled
   program (one device, whole batch), with the scan fully unrolled (XLA:CPU's default,
   `attacks.common.default_unroll`) and rolled (accelerators'), and the train step's time
   with remat on.
PyTorch comes from `pip install -e .[bench]`; its OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE unless set: spinning threads collapse under background load).
"""
# ruff: noqa: E402  (OMP_WAIT_POLICY must be set before torch loads)

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
import torch
import torch.nn.functional as F

from robustgan import config as configlib
from robustgan import methods, parallel
from robustgan.attacks import common
from robustgan.methods.deep_defense import DeepDefenseLoss, fine_tuning

BATCH, TINY, MIB = 100, 1e-12, 2**20


def with_settings(config, **settings):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.deep_defense.update(settings)
    return config


def jax_step(config, x, y, mesh):
    """(run(n): n jitted train steps, the initial params, metrics of the first step)."""
    method = methods.build(config, 10, {})
    state = parallel.replicate(method.init(jax.random.key(0), x[:1]), mesh)
    params = jax.tree.map(np.array, state.params)
    xs, ys = parallel.shard_batch((x, y), mesh)
    step = jax.jit(method.train_step, donate_argnums=0)
    state, first = step(state, xs, ys, jax.random.key(1))

    def run(n):
        nonlocal state
        for i in range(n):
            state, metrics = step(state, xs, ys, jax.random.key(i))
        jax.block_until_ready(metrics)

    return run, params, jax.device_get(first)


class Twin(torch.nn.Module):
    """The model's body (u -> logits) on NCHW u, with the weights of Flax `params`:
    unpadded convs each followed by 2x2 max-pooling, then Dense layers with ReLU between."""

    def __init__(self, params):
        super().__init__()
        t = lambda a: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)))
        convs = [params[k]["Conv_0"] for k in sorted(params) if k.startswith("ConvBNReLU")]
        denses = [params[k] for k in sorted(params) if k.startswith("Dense")]
        self.convs = torch.nn.ParameterList(  # HWIO -> OIHW
            [t(p["kernel"].transpose(3, 2, 0, 1)) for p in convs] + [t(p["bias"]) for p in convs])
        self.denses = torch.nn.ParameterList(  # (in, out) -> (out, in)
            [t(p["kernel"].T) for p in denses] + [t(p["bias"]) for p in denses])

    def forward(self, u):
        n_conv, n_dense = len(self.convs) // 2, len(self.denses) // 2
        for i in range(n_conv):
            u = F.max_pool2d(F.conv2d(u, self.convs[i], self.convs[n_conv + i]), 2)
        u = u.permute(0, 2, 3, 1).flatten(1)  # Flax flattens NHWC
        for i in range(n_dense):
            u = F.linear(u, self.denses[i], self.denses[n_dense + i])
            u = F.relu(u) if i < n_dense - 1 else u
        return u


def torch_loss(model, u, y, s, chosen_row=False):
    """(CE + weight * regularizer, regularizer): Deep Defense's objective, the authors' way
    (every class's Jacobian row built with create_graph), or with chosen_row as our JAX
    DeepFool does it (the rows only choose the nearest boundary; the chosen row is
    computed again with create_graph, so the double backward runs through one row)."""
    n, ar = u.shape[0], torch.arange(u.shape[0])
    logits = model(u)
    correct = logits.argmax(1) == y
    targeted = ~correct  # misclassified: DeepFool steps toward the label
    label = F.one_hot(y, logits.shape[1]).bool()
    valid = torch.where(targeted[:, None], label, ~label)
    r_total = torch.zeros_like(u)
    for _ in range(s.deepfool_steps):
        x_i = u + (1 + s.overshoot) * r_total
        if not x_i.requires_grad:
            x_i.requires_grad_()
        out = model(x_i)
        pred = out.argmax(1)
        done = torch.where(targeted, pred == y, pred != y)
        source = torch.where(targeted, pred, y)
        jac = torch.stack([torch.autograd.grad(out[:, k].sum(), x_i, retain_graph=True,
                                               create_graph=not chosen_row)[0]
                           for k in range(out.shape[1])], 1).reshape(n, out.shape[1], -1)
        f = out - out[ar, source][:, None]
        w = jac - jac[ar, source][:, None]
        with torch.no_grad():
            distance = f.abs() / (w.norm(dim=2) + TINY)
            nearest = torch.where(valid, distance, torch.inf).argmin(1)
        f_l, w_l = f[ar, nearest], w[ar, nearest]
        if chosen_row:
            row = F.one_hot(nearest, out.shape[1]) - F.one_hot(source, out.shape[1])
            w_l = torch.autograd.grad(out, x_i, row.to(out.dtype), create_graph=True)[0]
            w_l = w_l.reshape(n, -1)
        r = (f_l.abs() / (w_l.pow(2).sum(1) + TINY))[:, None] * w_l
        r_total = r_total + torch.where(done[:, None], 0.0, r).view_as(u)
    ratio = ((1 + s.overshoot) * r_total).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    reg = torch.where(correct, torch.exp(-s.c * ratio), torch.exp(s.d * ratio)).mean()
    return F.cross_entropy(logits, y) + s.weight * reg, reg


def torch_step(config, params, x, y, chosen_row=False):
    """(run(n): n regularized PyTorch steps, (loss, regularizer) before the first)."""
    k = config.model.kwargs
    u = np.float32(k.input_scale) * x - np.float32(k.input_mean)
    u, y = torch.from_numpy(u).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
    model, o, s = Twin(params), config.optimizer, config.deep_defense
    opt = torch.optim.SGD(model.parameters(), lr=o.learning_rate, momentum=o.momentum,
                          weight_decay=o.weight_decay)
    first = [float(v.detach()) for v in torch_loss(model, u, y, s, chosen_row)]

    def run(n):
        for _ in range(n):
            opt.zero_grad()
            torch_loss(model, u, y, s, chosen_row)[0].backward()
            opt.step()

    return run, first


def remat_memory(config, x, y, remat, rolled=False):
    """XLA's temp bytes (MiB) of jit(grad(15 * regularizer)), one device; rolled: with the
    DeepFool scan rolled (unroll 1) as on accelerators, not fully unrolled as on CPU."""
    config = with_settings(config, remat=remat, clean_weight=0.0)
    net, init, _ = fine_tuning(config, 10, config.deep_defense)
    state, loss = init(jax.random.key(0), x[:1]), DeepDefenseLoss(net, config.deep_defense)
    grad = jax.jit(jax.grad(lambda p: loss(p, state.batch_stats, x, y)[0]))
    default_unroll = common.default_unroll
    common.default_unroll = (lambda steps: 1) if rolled else default_unroll
    jax.clear_caches()  # the attack's jit cache holds the scan traced with the other unroll
    try:
        return grad.lower(state.params).compile().memory_analysis().temp_size_in_bytes / MIB
    finally:
        common.default_unroll = default_unroll
        jax.clear_caches()


def interleaved(runs: dict, reps: int, steps: int) -> dict:
    """Median seconds per step of each run, timed in alternation after a warm-up step."""
    for run in runs.values():
        run(1)
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="mlp,lenet")
    parser.add_argument("--mlp-reps", type=int, default=5)
    parser.add_argument("--mlp-steps", type=int, default=5, help="MLP steps per rep")
    parser.add_argument("--lenet-reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--devices", type=int, default=0, help="JAX mesh size (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mesh = parallel.make_mesh(args.devices or None)
    print(f"jax {jax.__version__}, mesh of {mesh.devices.size} x {jax.devices()[0].device_kind}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH}")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    for net in args.nets.split(","):
        config = configlib.load_config_file(f"configs/mnist.py:deep_defense,{net}")
        reg, params, first = jax_step(config, x, y, mesh)
        plain = jax_step(with_settings(config, weight=0.0), x, y, mesh)[0]
        remat = jax_step(with_settings(config, remat=True), x, y, mesh)[0]
        twin, (t_loss, t_reg) = torch_step(config, params, x, y)
        twin_row, row_first = torch_step(config, params, x, y, chosen_row=True)
        assert np.allclose(row_first, (t_loss, t_reg), rtol=1e-5), "the twins disagree"
        loss_err = abs(first["loss"] - t_loss) / abs(t_loss)
        reg_err = abs(first["regularizer"] - t_reg) / abs(t_reg)
        print(f"\n{net}: loss JAX {first['loss']:.6f} PyTorch {t_loss:.6f} (rel {loss_err:.1e});"
              f" regularizer JAX {first['regularizer']:.6f} PyTorch {t_reg:.6f} "
              f"(rel {reg_err:.1e}); accuracy {first['accuracy']:.2f}")
        assert loss_err < 1e-4 and reg_err < 1e-4, "the PyTorch twin computes something else"
        reps, steps = (args.mlp_reps, args.mlp_steps) if net == "mlp" else (args.lenet_reps, 1)
        t = interleaved({"jax": reg, "torch": twin, "torch_row": twin_row, "plain": plain,
                         "remat": remat}, reps, steps)
        mem = {(r, rolled): remat_memory(config, x, y, r, rolled)
               for rolled in (False, True) for r in (False, True)}
        print(f"  median of {reps} x {steps} steps (ms/step): regularized {t['jax'] * 1e3:.1f}, "
              f"plain {t['plain'] * 1e3:.1f}, PyTorch twin {t['torch'] * 1e3:.1f} (chosen "
              f"row {t['torch_row'] * 1e3:.1f}), remat {t['remat'] * 1e3:.1f}")
        print(f"  regularized / plain = {t['jax'] / t['plain']:.1f}; "
              f"JAX / PyTorch speed = {t['torch'] / t['jax']:.2f}x (the authors' way), "
              f"{t['torch_row'] / t['jax']:.2f}x (chosen row, as ours); "
              f"remat / no remat time = {t['remat'] / t['jax']:.2f}")
        for rolled in (False, True):
            print(f"  grad of the regularizer, XLA temp memory, scan "
                  f"{'rolled (as on accelerators)' if rolled else 'unrolled (CPU default)'}: "
                  f"{mem[False, rolled]:.1f} MiB, with remat {mem[True, rolled]:.1f} MiB")


if __name__ == "__main__":
    main()
