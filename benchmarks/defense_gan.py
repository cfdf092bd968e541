"""Speed of Defense-GAN's projection (Samangouei et al., ICLR 2018, Eq. 8; appendix G,
Table 13): `robustgan.attacks.projection.project` through the Table 6 MNIST generator of
`configs/mnist.py:defense_gan` (latent 128, randomly initialized, biases made nonzero),
on random [0, 1] images, with the config's step size (10) and momentum (0.7) and the
test-time gradient policy 'none'.

    python benchmarks/defense_gan.py [--images 2] [--steps-timed 200] [--restarts-timed 10]
        [--reps 3] [--threads N] [--table13 [--steps 25,50] [--restarts 1,5]
        [--images13 2] [--reps13 1]] [--devices 1]

In one process:
1. a PyTorch eager twin of the generator holding the same weights must give the same
   images on the same z (IMAGE_ATOL, absolute);
2. a PyTorch eager twin of the projection (the R starts of the N images as one batch of
   N x R; L steps of TensorFlow momentum GD on z: v <- momentum v + grad,
   z <- z - lr v; the per-image mean squared error; each image's best start kept),
   started from the very z that project() draws (fold_in(rng, r) for start r), must
   end with the same per-image errors (ERROR_RTOL, relative: float32 over L steps);
3. the jitted projection and the twin at L=--steps-timed, R=--restarts-timed are timed
   interleaved (median of --reps; the check above compiled and warmed both): images/s
   of each and the ratio;
4. with --table13, JAX's seconds per image for each L in --steps and R in --restarts
   (Table 13's layout; the paper's L are 25 to 400 and R 1, 2, 5, 10, 20: the whole
   grid takes hours on a CPU), printed as a Markdown table beside the paper's TITAN X
   numbers.
JAX runs on --devices devices (default 1, whose convolutions XLA:CPU runs on one thread;
`--devices 2` with ROBUSTGAN_CPU_DEVICES=2 splits the images over the 2 cores as the
library's evaluation does); PyTorch on --threads threads, its OpenMP threads waiting passively
(OMP_WAIT_POLICY=PASSIVE unless set: spinning threads collapse under background load).
"""
# ruff: noqa: E402  (OMP_WAIT_POLICY must be set before torch loads)

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
import torch
import torch.nn.functional as F

from robustgan import config as configlib
from robustgan import parallel
from robustgan.attacks import projection
from robustgan.methods import defense_gan

# Table 13 (appendix G): mean and std of the seconds to reconstruct one MNIST/F-MNIST
# image on an NVIDIA GeForce GTX TITAN X, {R: {L: (mean, std)}}, as printed in
# /work/shared/papers/defense_gan_samangouei_et_al.md. The extraction kept only the
# header "L = 50"; the columns are L = 25, 50, 100, 200, 400, and the R = 2 row's last
# cell repeats R = 1's 0.543 before its own 0.510.
PAPER_TABLE13 = {
    1: {25: (0.043, 0.027), 50: (0.070, 0.003), 100: (0.137, 0.004), 200: (0.273, 0.006),
        400: (0.543, 0.017)},
    2: {25: (0.042, 0.026), 50: (0.067, 0.002), 100: (0.131, 0.003), 200: (0.261, 0.006),
        400: (0.510, 0.006)},
    5: {25: (0.043, 0.029), 50: (0.070, 0.002), 100: (0.136, 0.004), 200: (0.270, 0.004),
        400: (0.535, 0.008)},
    10: {25: (0.051, 0.032), 50: (0.086, 0.001), 100: (0.170, 0.002), 200: (0.338, 0.008),
         400: (0.675, 0.016)},
    20: {25: (0.060, 0.035), 50: (0.105, 0.003), 100: (0.209, 0.006), 200: (0.414, 0.012),
         400: (0.825, 0.022)},
}
IMAGE_ATOL, ERROR_RTOL = 2e-6, 1e-3


def generator_and_front_end(seed: int = 0):
    """(Flax generator variables, the config's ProjectionFrontEnd with gradient 'none')."""
    config = configlib.load_config_file("configs/mnist.py:defense_gan")
    assert tuple(config.data.value_range) == (0.0, 1.0), "the twins assume [0, 1] data"
    front_end = dataclasses.replace(defense_gan.front_end(config), gradient="none")
    init_key, bias_key = jax.random.split(jax.random.key(seed))
    params = front_end.generate.module.init(
        init_key, jnp.zeros((1, front_end.latent_dim)))["params"]
    # Flax initializes biases to 0; nonzero ones make the twin's check cover them.
    params = {name: {**layer, "bias": layer["bias"] + 0.1 * jax.random.normal(
                  jax.random.fold_in(bias_key, i), layer["bias"].shape)}
              for i, (name, layer) in enumerate(sorted(params.items()))}
    return {"params": params}, front_end


def jax_projector(front_end, variables, x, rng, *, steps: int, restarts: int, mesh):
    """() -> project()'s Projection of x at L=steps, R=restarts (the front end's other
    settings), jitted, waited for; the images split over the mesh's devices."""
    settings = front_end.settings() | {"steps": steps, "restarts": restarts}
    if len(x) % mesh.devices.size:
        raise SystemExit(f"{len(x)} images do not split over {mesh.devices.size} devices")
    x = jax.device_put(jnp.asarray(x), parallel.batch_sharded(mesh))
    variables = parallel.replicate(variables, mesh)
    return lambda: jax.block_until_ready(
        projection.project(front_end.generate, variables, x, rng, **settings))


def initial_z(front_end, rng, n: int, restarts: int) -> np.ndarray:
    """(R, n, latent) starts as project() draws them: start r from fold_in(rng, r)."""
    assert front_end.z_init == "prior"
    return np.stack([jax.random.normal(jax.random.fold_in(rng, r), (n, front_end.latent_dim))
                     for r in range(restarts)])


class TorchGenerator:
    """models.wgan.WGANGenerator on z, giving NCHW images, with the Flax `params`.

    Flax's ConvTranspose ('SAME', stride 2, kernel 5, unflipped HWIO kernel) correlates the
    2x-dilated input padded (3, 2) with the kernel; PyTorch's conv_transpose2d (padding 1)
    correlates it padded (3, 3) with the flipped (in, out, kh, kw) kernel, so its output
    loses its last row and column. The Dense layer's outputs are permuted from (h, w, c)
    to (c, h, w) order, so that they reshape to NCHW. No BatchNorm (Table 6's GAN has
    none)."""

    def __init__(self, params):
        t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
        dense = params["Dense_0"]
        latent, units = dense["kernel"].shape
        self.grid = units // 16
        to_chw = lambda a: np.asarray(a).reshape(-1, 4, 4, self.grid).transpose(0, 3, 1, 2)
        self.dense = (t(to_chw(dense["kernel"]).reshape(latent, units).T),
                      t(to_chw(dense["bias"]).reshape(units)))
        self.deconvs = [(t(np.asarray(p["kernel"])[::-1, ::-1].transpose(2, 3, 0, 1)),
                         t(p["bias"]))
                        for p in (params[f"ConvTranspose_{i}"] for i in range(3))]

    def __call__(self, z):
        x = F.relu(F.linear(z, *self.dense)).view(-1, self.grid, 4, 4)
        for i, (kernel, bias) in enumerate(self.deconvs):
            size = 2 * x.shape[-1]
            x = F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)[..., :size, :size]
            if i == 0:
                x = x[..., :7, :7]  # 8x8 -> 7x7, as the Flax generator crops
            x = F.relu(x) if i < 2 else torch.sigmoid(x)
        return x


def torch_project(generator, x, z0, *, steps: int, step_size: float, momentum: float):
    """(per-image error of the best start, its z): project()'s loop in PyTorch eager,
    the R starts of z0 (R, N, latent) batched with the N images x (N, C, H, W)."""
    restarts, n = z0.shape[:2]
    target = x.repeat(restarts, 1, 1, 1)
    z, velocity = z0.reshape(restarts * n, -1).clone(), torch.zeros(restarts * n, z0.shape[2])
    for _ in range(steps):
        z.requires_grad_(True)
        error = ((generator(z) - target) ** 2).mean((1, 2, 3)).sum()
        (grad,) = torch.autograd.grad(error, z)
        velocity = momentum * velocity + grad
        z = z.detach() - step_size * velocity
    with torch.no_grad():
        errors = ((generator(z) - target) ** 2).mean((1, 2, 3)).view(restarts, n)
    best = errors.argmin(0)
    return errors[best, torch.arange(n)], z.view(restarts, n, -1)[best, torch.arange(n)]


def check_generators(variables, front_end, twin, z) -> float:
    """Largest |Flax G(z) - twin G(z)|; stops if above IMAGE_ATOL."""
    flax_images = np.asarray(front_end.generate(variables, jnp.asarray(z)))  # NHWC
    with torch.no_grad():
        twin_images = twin(torch.from_numpy(z)).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(flax_images - twin_images).max())
    assert diff < IMAGE_ATOL, f"the generators differ by {diff:.1e}"
    return diff


def interleaved_median(runs: dict, reps: int) -> dict:
    """Median seconds of each run over `reps` rounds, the runs alternating within each
    round (no warm-up: the caller ran each once)."""
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def table13(front_end, variables, args, mesh):
    """Prints JAX's seconds per image at each (L, R) beside the paper's Table 13."""
    steps_list = [int(s) for s in args.steps.split(",")]
    restarts_list = [int(r) for r in args.restarts.split(",")]
    x = np.random.default_rng(1).uniform(0, 1, (args.images13, 28, 28, 1)).astype(np.float32)
    print(f"\nTable 13 layout: seconds per image, JAX on this CPU ({args.images13} images "
          f"per projection, median of {args.reps13} after a compiling run) / the paper's "
          "TITAN X mean")
    print("| R | " + " | ".join(f"L = {s}" for s in steps_list) + " |")
    print("|---:|" + "---:|" * len(steps_list))
    for restarts in restarts_list:
        cells = []
        for steps in steps_list:
            run = jax_projector(front_end, variables, x, jax.random.key(2), steps=steps,
                                restarts=restarts, mesh=mesh)
            run()
            seconds = interleaved_median({"jax": run}, args.reps13)["jax"] / args.images13
            paper = PAPER_TABLE13.get(restarts, {}).get(steps)
            cells.append(f"{seconds:.3f} / " + (f"{paper[0]:.3f}" if paper else "-"))
        print(f"| {restarts} | " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="images per timed projection")
    parser.add_argument("--steps-timed", type=int, default=200, help="L of the timing")
    parser.add_argument("--restarts-timed", type=int, default=10, help="R of the timing")
    parser.add_argument("--reps", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--table13", action="store_true", help="time Table 13's layout")
    parser.add_argument("--steps", default="25,50,100,200,400", help="Table 13's L values")
    parser.add_argument("--restarts", default="1,5,10,20", help="Table 13's R values")
    parser.add_argument("--images13", type=int, default=2, help="images per Table 13 run")
    parser.add_argument("--reps13", type=int, default=1, help="Table 13 repeats (median)")
    parser.add_argument("--devices", type=int, default=1,
                        help="JAX devices the images are split over (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mesh = parallel.make_mesh(args.devices or None)
    print(f"jax {jax.__version__} on {mesh.devices.size} x {jax.devices()[0].device_kind}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    variables, front_end = generator_and_front_end()
    twin = TorchGenerator(variables["params"])
    rng = np.random.default_rng(0)
    z = rng.standard_normal((16, front_end.latent_dim)).astype(np.float32)
    print(f"generators: max |Flax - PyTorch| over 16 images = "
          f"{check_generators(variables, front_end, twin, z):.1e} (tolerance {IMAGE_ATOL})")

    n, steps, restarts = args.images, args.steps_timed, args.restarts_timed
    x = rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
    key = jax.random.key(1)
    jax_run = jax_projector(front_end, variables, x, key, steps=steps, restarts=restarts,
                            mesh=mesh)
    x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    z0 = torch.from_numpy(initial_z(front_end, key, n, restarts))

    def torch_run():
        return torch_project(twin, x_t, z0, steps=steps, step_size=front_end.step_size,
                             momentum=front_end.momentum)

    start = time.perf_counter()
    jax_out = jax_run()
    first_jax = time.perf_counter() - start
    torch_error, torch_z = torch_run()
    jax_error = np.asarray(jax_out.error)
    error_rel = np.abs(jax_error - torch_error.numpy()) / torch_error.numpy()
    print(f"projection L={steps}, R={restarts}, {n} images, the same starts: final errors "
          f"JAX {np.array2string(jax_error, precision=6)}, PyTorch "
          f"{np.array2string(torch_error.numpy(), precision=6)}"
          f" (max rel diff {error_rel.max():.1e}, tolerance {ERROR_RTOL}); max |z* JAX - "
          f"z* PyTorch| {np.abs(np.asarray(jax_out.z) - torch_z.numpy()).max():.1e}; JAX's "
          f"first run (compiling) {first_jax:.1f} s")
    assert error_rel.max() < ERROR_RTOL, "the PyTorch twin's projection computes something else"

    seconds = interleaved_median({"jax": jax_run, "torch": torch_run}, args.reps)
    print(f"median of {args.reps} (s per projection of {n} images): JAX {seconds['jax']:.2f}, "
          f"PyTorch {seconds['torch']:.2f}")
    print(f"throughput (images/s): JAX {n / seconds['jax']:.3f}, PyTorch "
          f"{n / seconds['torch']:.3f}; JAX / PyTorch speed = "
          f"{seconds['torch'] / seconds['jax']:.2f}x (target 1.5x)", flush=True)
    if args.table13:
        table13(front_end, variables, args, mesh)


if __name__ == "__main__":
    main()
