"""Cost of one generator update of L2L-DA (Jang et al., ICCV 2019: Algorithm 1's step of
g_phi) in the paper's MNIST setting (`configs/mnist.py:l2l_da`: LeNet-5 classifier, U-Net
generator of base width 64, eps 0.3, T = 10 steps of eps/4, lambda 0.02, batch 100
duplicated for two z samples), on random [0, 1] images and labels and randomly
initialized networks.

    python benchmarks/l2l_da.py [--reps 3] [--steps 10] [--threads N] [--devices N]

In one process:
1. the generator half of methods/l2l_da.py's `train_step`, jitted: phi's gradient of
   -(L_cls + lambda z_dim / x_dim L_div) (Eqs. 6-8, `generator_objective`) through the
   recursion of Eq. 5 (one `lax.scan`, `attacks.recursive.trajectory`) on [x; x] with
   [z1; z2], the generator's BatchNorm on batch statistics (training mode) and the
   classifier in inference mode, then SGD momentum 0.9 with weight decay 1e-5 on the
   kernels; run as train.py runs a step (parameters replicated, the batch and z sharded
   over the device mesh; `--devices 1`: one device), with z given instead of drawn;
2. a PyTorch eager twin holding the same weights: the U-Net (F.conv2d,
   F.conv_transpose2d, conditional BatchNorm on batch statistics), LeNet-5, the
   recursion (grad_x CE at the detached iterate, normalized per example; delta <-
   clip(delta + eps/4 g, -eps, eps), x_adv <- clip(x + delta, 0, 1)), the same objective
   and optimizer. It first checks on the same batch, z and weights that both give the
   same objective (1e-4 relative) and the same first parameter update (5e-3 relative:
   float32 gradients summed through T recursive steps; 2e-5 at T = 2 and width 8), then
   times the updates interleaved (one warm-up round, then the median of --reps rounds of
   one update each): updates/s, images/s (real images, 100 per update) and the JAX /
   PyTorch speed ratio;
3. the same JAX update with `l2l_da.remat` (`jax.checkpoint` on each recursion step),
   timed in the same rounds, and XLA's temporary memory of the compiled update with and
   without remat (`memory_analysis().temp_size_in_bytes`, one device, whole batch: with
   `--devices 1` the timed programs), with the scan fully unrolled (XLA:CPU's default,
   `attacks.common.default_unroll`) and rolled (`l2l_da.unroll=1`, accelerators').
PyTorch comes from `pip install -e .[bench]`; its OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE unless set: spinning threads collapse under background load).
On the 2-core CPU at load average 1.8, `--reps 2` took 4.5 minutes (a JAX update 21 s).
"""
# ruff: noqa: E402  (OMP_WAIT_POLICY must be set before torch loads)

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
import torch
import torch.nn.functional as F

from robustgan import config as configlib
from robustgan import methods, nets, optim, parallel
from robustgan.attacks.common import default_unroll
from robustgan.attacks.recursive import GeneratorApply, Recursion
from robustgan.methods import l2l_da
from robustgan.methods.supervised import supervised_net

try:  # `python benchmarks/l2l_da.py` puts benchmarks/ on the path
    from deep_defense import interleaved
except ImportError:  # python -m benchmarks.l2l_da
    from benchmarks.deep_defense import interleaved

BATCH, CLASSES, MIB = 100, 10, 2**20
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # models/layers.py's BatchNorm in PyTorch's convention


def with_settings(config, **settings):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.l2l_da.update(settings)
    return config


def generator_update(config):
    """(g, d, x, y, z) -> (g after one update, metrics): the generator half of l2l_da's
    train_step (methods/l2l_da.py) built from the same pieces, with z passed in."""
    a = config.l2l_da
    net = supervised_net(config, CLASSES)
    scale = net.bounds[1] - net.bounds[0]
    rec = Recursion(GeneratorApply(l2l_da.generator_module(a, CLASSES)), eps=a.eps * scale,
                    eps_step=a.step_fraction * a.eps * scale, steps=a.steps, remat=a.remat,
                    unroll=a.unroll or default_unroll(a.steps))
    g_tx = optim.make_optimizer(a.g_optimizer, config.num_train_steps)  # grad_clip is 0

    def update(g: nets.NetState, d: nets.NetState, x, y, z):
        def loss(phi):
            value, aux = l2l_da.generator_objective(
                rec, phi, g.batch_stats, net.classifier(d, "eval"), x, y, z,
                diversity_weight=a.diversity_weight, sum_steps=a.sum_steps)
            return -value, aux

        grads, aux = jax.grad(loss, has_aux=True)(g.params)
        return nets.apply_gradients(g, g_tx, grads, batch_stats=aux.g_stats), aux.metrics

    return update


def jax_update(config, state, x, y, z, mesh, check=False):
    """(run(n): n jitted generator updates, the compiled update, and with check=True the
    metrics and generator params after a first update)."""
    g, d = parallel.replicate((state.g, state.d), mesh)
    batch = parallel.shard_batch((x, y, z), mesh)
    compiled = jax.jit(generator_update(config), donate_argnums=0).lower(g, d, *batch).compile()
    first = None
    if check:
        g, metrics = compiled(g, d, *batch)
        first = jax.device_get(metrics), jax.tree.map(np.array, g.params)

    def run(n):
        nonlocal g
        for _ in range(n):
            g, metrics = compiled(g, d, *batch)
        jax.block_until_ready(metrics)

    return run, compiled, first


def temp_mib(compiled) -> float:
    return compiled.memory_analysis().temp_size_in_bytes / MIB


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def conv_weight(kernel) -> torch.Tensor:
    """A Flax HWIO kernel as PyTorch's OIHW."""
    return _t(kernel).permute(3, 2, 0, 1)


def conv_transpose_weight(kernel) -> torch.Tensor:
    """A (kh, kw, in, out) transposed-convolution kernel, which lax.conv_transpose
    applies unflipped to the dilated input, as F.conv_transpose2d's (in, out, kh, kw),
    which it applies flipped."""
    return _t(kernel).flip(0, 1).permute(2, 3, 0, 1)


def unet_tensors(params) -> dict[str, torch.Tensor]:
    """The U-Net's Flax parameters in PyTorch layouts, by Flax path ('Conv_0.kernel'); the
    rank of each stays > 1 exactly where Flax's is (weight decay's mask, optim.py)."""
    layout = {"Conv": conv_weight, "ConvTranspose": conv_transpose_weight,
              "Dense": lambda k: _t(k).T}
    return {f"{layer}.{name}": (layout[layer.rsplit("_", 1)[0]](v) if name == "kernel"
                                else _t(v))
            for layer, leaves in params.items() for name, v in leaves.items()}


class LeNet5Twin(torch.nn.Module):
    """models.convnets.LeNet5 on NCHW input with the Flax weights, gradients off."""

    def __init__(self, params):
        super().__init__()
        convs = [params[f"ConvBNReLU_{i}"]["Conv_0"] for i in range(3)]
        self.convs = [(conv_weight(p["kernel"]), _t(p["bias"])) for p in convs]
        self.denses = [(_t(params[f"Dense_{i}"]["kernel"]).T, _t(params[f"Dense_{i}"]["bias"]))
                       for i in range(2)]

    def forward(self, x):
        (w0, b0), (w1, b1), (w2, b2) = self.convs
        x = F.max_pool2d(F.relu(F.conv2d(x, w0, b0, padding=2)), 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, w1, b1)), 2)
        x = F.relu(F.conv2d(x, w2, b2)).flatten(1)  # 1x1x120: NCHW and NHWC agree
        (w3, b3), (w4, b4) = self.denses
        return F.linear(F.relu(F.linear(x, w3, b3)), w4, b4)


class UNetTwin(torch.nn.Module):
    """models.unet.UNetGenerator (use_z, use_y, use_delta, grad_norm='example') on NCHW
    input with the Flax weights; conditional BatchNorm on batch statistics, updating the
    running averages (models/unet.py in training mode)."""

    def __init__(self, params, batch_stats):
        super().__init__()
        tensors = unet_tensors(params)
        self.p = torch.nn.ParameterDict(
            {k.replace(".", "/"): torch.nn.Parameter(v.contiguous()) for k, v in tensors.items()})
        self.stats = [(_t(s["BatchNorm_0"]["mean"]), _t(s["BatchNorm_0"]["var"]))
                      for _, s in sorted(batch_stats.items())]

    def _cbn(self, i, h, y):
        p = lambda name: self.p[f"ConditionalBatchNorm_{i}/{name}"]
        mean, var = self.stats[i]
        h = F.batch_norm(h, mean, var, training=True, momentum=BN_MOMENTUM, eps=BN_EPS)
        scale = 1.0 + p("scale") + p("class_scale")[y]
        offset = p("offset") + p("class_offset")[y]
        return h * scale[:, :, None, None] + offset[:, :, None, None]

    def forward(self, x, y, z, delta, grad):
        p = lambda name: self.p[name]
        # Flax names the outer Dense of nn.Dense(8)(relu(nn.Dense(8)(z))) first: Dense_1
        # is applied to z
        code = F.linear(F.relu(F.linear(z, p("Dense_1/kernel"), p("Dense_1/bias"))),
                        p("Dense_0/kernel"), p("Dense_0/bias"))

        def tile(h):
            return torch.cat([h, code[:, :, None, None].expand(-1, -1, *h.shape[2:])], 1)

        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        h = torch.cat([x, grad, delta], 1)
        d0 = F.leaky_relu(F.conv2d(tile(h), p("Conv_0/kernel"), p("Conv_0/bias"), padding=1),
                          0.2)
        d1 = F.conv2d(tile(d0), p("Conv_1/kernel"), stride=2, padding=1)
        d1 = F.leaky_relu(self._cbn(0, d1, y), 0.2)
        d2 = F.leaky_relu(F.conv2d(tile(d1), p("Conv_2/kernel"), p("Conv_2/bias"), stride=2,
                                   padding=1), 0.2)
        u2 = F.conv_transpose2d(d2, p("ConvTranspose_0/kernel"), stride=2, padding=1)
        u2 = F.relu(self._cbn(1, u2, y))
        u1 = F.conv_transpose2d(torch.cat([u2, d1], 1), p("ConvTranspose_1/kernel"), stride=2,
                                padding=1)
        u1 = F.relu(self._cbn(2, u1, y))
        out = F.conv2d(torch.cat([u1, d0], 1), p("Conv_3/kernel"), p("Conv_3/bias"), padding=1)
        return torch.tanh(out)


def torch_objective(generator, classifier, a, x, y, z):
    """Eq. 8 of the twin, as methods/l2l_da.generator_objective: the recursion (Eq. 5) on
    [x; x] with [z1; z2]; L_cls the mean CE over the T steps and 2N rows (Eq. 6), L_div
    Eq. 7 with weight lambda z_dim / x_dim."""
    n, eps = x.shape[0], a.eps  # [0, 1] data: pixel units are data units
    x, y = torch.cat([x, x]), torch.cat([y, y])
    delta, x_adv, trajectory, losses = torch.zeros_like(x), x, [], []
    for _ in range(a.steps):
        probe = x_adv.detach().requires_grad_()
        grad, = torch.autograd.grad(F.cross_entropy(classifier(probe), y, reduction="sum"),
                                    probe)
        direction = generator(x, y, z, delta, grad)
        delta = torch.clamp(delta + a.step_fraction * eps * direction, -eps, eps)
        x_adv = torch.clamp(x + delta, 0.0, 1.0)
        trajectory.append(x_adv)
        losses.append(F.cross_entropy(classifier(x_adv), y, reduction="none"))
    cls = torch.stack(losses).mean()
    moved = torch.stack([(t[:n] - t[n:]).abs().flatten(1).sum(1) for t in trajectory]).mean(0)
    div = (moved / ((z[:n] - z[n:]).abs().sum(1) + 1e-8)).mean()
    return cls + a.diversity_weight * z.shape[1] / x[0].numel() * div


def torch_update(config, state, x, y, z):
    """(run(n): n twin generator updates, the objective before the first, the parameter
    change of the first in PyTorch layouts by Flax path)."""
    a, o = config.l2l_da, config.l2l_da.g_optimizer
    if not (a.use_z and a.use_y and a.use_delta and a.grad_norm == "example"
            and a.diversity_weight and not (a.sum_steps or a.grad_clip)):
        raise ValueError("the twin covers the paper's full method (use_z, use_y, use_delta, "
                         "grad_norm 'example', lambda > 0, no sum_steps, no grad_clip)")
    generator = UNetTwin(state.g.params, state.g.batch_stats)
    classifier = LeNet5Twin(state.d.params)
    x, y, z = (torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous(),
               torch.from_numpy(np.asarray(y)).long(), torch.from_numpy(np.asarray(z)))
    decayed = [p for p in generator.parameters() if p.ndim > 1]
    rest = [p for p in generator.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decayed, "weight_decay": o.weight_decay},
                           {"params": rest, "weight_decay": 0.0}],
                          lr=o.learning_rate, momentum=o.momentum)

    def step():
        opt.zero_grad()
        value = torch_objective(generator, classifier, a, x, y, z)
        (-value).backward()
        opt.step()
        return float(value.detach())

    before = {k: v.detach().clone() for k, v in generator.p.items()}
    first = step()
    change = {k.replace("/", "."): v.detach() - before[k] for k, v in generator.p.items()}

    def run(n):
        for _ in range(n):
            step()

    return run, first, change


def relative_change_error(jax_before, jax_after, torch_change) -> float:
    """||dphi_JAX - dphi_PyTorch|| / ||dphi_JAX|| over all generator parameters."""
    before, after = unet_tensors(jax_before), unet_tensors(jax_after)
    diff = sum(float(((after[k] - before[k] - torch_change[k]) ** 2).sum()) for k in before)
    norm = sum(float(((after[k] - before[k]) ** 2).sum()) for k in before)
    return (diff / norm) ** 0.5


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed rounds, one update each")
    parser.add_argument("--steps", type=int, default=10, help="T, the recursion's steps")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--devices", type=int, default=0, help="JAX mesh size (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mesh = parallel.make_mesh(args.devices or None)
    config = with_settings(configlib.load_config_file("configs/mnist.py:l2l_da"),
                           steps=args.steps)
    a = config.l2l_da
    print(f"jax {jax.__version__}, mesh of {mesh.devices.size} x {jax.devices()[0].device_kind}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH} "
          f"(x2 for z1, z2), T {a.steps}, eps {a.eps}, lambda {a.diversity_weight}, "
          f"U-Net width {a.generator_width}")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    z = rng.standard_normal((2 * BATCH, a.z_dim)).astype(np.float32)
    # on the host, so that donating the replicated copies leaves these intact
    state = jax.device_get(methods.build(config, CLASSES, {}).init(jax.random.key(0), x[:1]))

    start = time.perf_counter()
    jax_run, jax_compiled, (first, after) = jax_update(config, state, x, y, z, mesh, check=True)
    first_s = time.perf_counter() - start
    remat_run, remat_compiled, _ = jax_update(with_settings(config, remat=True), state, x, y,
                                              z, mesh)
    torch_run, t_value, t_change = torch_update(config, state, x, y, z)
    value = float(first["g_objective"])
    value_err = abs(value - t_value) / abs(t_value)
    change_err = relative_change_error(state.g.params, after, t_change)
    print(f"\nobjective (Eq. 8) JAX {value:.6f} PyTorch {t_value:.6f} (rel {value_err:.1e}); "
          f"L_cls {float(first['cls_loss']):.4f}, L_div {float(first['div_loss']):.4f}; "
          f"first parameter update, rel difference {change_err:.1e}; JAX compilation and "
          f"first update {first_s:.0f} s")
    assert value_err < 1e-4, "the PyTorch twin computes another objective"
    assert change_err < 5e-3, "the PyTorch twin computes another gradient"

    t = interleaved({"jax": jax_run, "torch": torch_run, "remat": remat_run}, args.reps, 1)
    print(f"  median of {args.reps} rounds, s per update: JAX {t['jax']:.2f}, "
          f"PyTorch twin {t['torch']:.2f}, JAX with remat {t['remat']:.2f}")
    for name in ("jax", "torch", "remat"):
        print(f"  {name}: {1 / t[name]:.4f} updates/s, {BATCH / t[name]:.2f} images/s")
    print(f"  JAX / PyTorch speed = {t['torch'] / t['jax']:.2f}x; "
          f"remat / no remat time = {t['remat'] / t['jax']:.2f}")

    def whole_batch(remat, unroll, timed):
        """Temp MiB on one device; the timed program where it is that one."""
        if mesh.devices.size == 1 and not unroll:
            return temp_mib(timed)
        step = jax.jit(generator_update(with_settings(config, remat=remat, unroll=unroll)))
        return temp_mib(step.lower(state.g, state.d, x, y, z).compile())

    for unroll in (0, 1):
        kind = "rolled (unroll 1, as on accelerators)" if unroll else "unrolled (CPU default)"
        print(f"  generator update, XLA temp memory, scan {kind}: "
              f"{whole_batch(False, unroll, jax_compiled):.0f} MiB, with remat "
              f"{whole_batch(True, unroll, remat_compiled):.0f} MiB")


if __name__ == "__main__":
    main()
