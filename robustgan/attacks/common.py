"""Pieces every attack shares: losses, input gradients, projections, best-so-far tracking,
argument checks and step-count knobs.

Conventions (docs/ARCHITECTURE.md): epsilons and step sizes are given in [0, 1] pixel units,
as the papers state them; attacks multiply them by the width of the classifier's data
range, so the same eps means the same perturbation whether data lie in [0, 1] or [-1, 1].
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jax_core
from jax.extend.core import primitives

from robustgan.classifier import Classifier

LOSSES = ("ce", "margin", "dlr")
NORMS = ("linf", "l2")
# Keyword arguments that must be >= 0 and integer settings that must be >= 1, wherever
# an attack takes them (checked by `jit_attack`).
NONNEGATIVE = (
    "eps",
    "step_size",
    "alpha",
    "overshoot",
    "learning_rate",
    "initial_const",
    "confidence",
)
POSITIVE_COUNTS = ("steps", "restarts", "binary_steps", "max_iter", "samples")


def data_scale(classifier: Classifier) -> float:
    """Width of the data range: pixel-unit epsilons times this are data-unit epsilons."""
    low, high = classifier.bounds
    return high - low


def clip_to_bounds(classifier: Classifier, x: jax.Array) -> jax.Array:
    return jnp.clip(x, *classifier.bounds)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example C&W margin: best other logit minus the label's logit (> 0: fooled)."""
    num_classes = logits.shape[-1]
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf, logits)
    return others.max(axis=1) - label_logit


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Difference of logits ratio (Croce & Hein 2020, Sec. 4): the margin over z_pi1 - z_pi3.

    Invariant to shifting and scaling the logits; needs at least 3 classes.
    """
    if logits.shape[-1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[-1]}")
    top3 = lax.top_k(logits, 3)[0]
    return margin(logits, labels) / (top3[:, 0] - top3[:, 2] + 1e-12)


def attack_loss(name: str):
    """Per-example loss the attacker ascends (untargeted) by name."""
    check_choice("loss", name, LOSSES)
    return {"ce": cross_entropy, "margin": margin, "dlr": dlr}[name]


def fooled(logits: jax.Array, labels: jax.Array, targeted) -> jax.Array:
    """Whether each example reached its goal: the target class, or any class but the label."""
    predicted = logits.argmax(-1)
    return jnp.where(targeted, predicted == labels, predicted != labels)


def _conv_with_hwio_input_grad(params: dict):
    """conv_general_dilated(lhs, rhs, **params) whose derivative with respect to lhs is a
    convolution with an HWIO-ordered kernel (see `conv_friendly`)."""
    dims = params["dimension_numbers"]
    out_axis, in_axis = dims.rhs_spec[0], dims.rhs_spec[1]
    swap = list(range(len(dims.rhs_spec)))
    swap[out_axis], swap[in_axis] = in_axis, out_axis
    # The same convolution, stated for the kernel with its feature axes swapped.
    swapped = dict(params, dimension_numbers=dims._replace(
        rhs_spec=(in_axis, out_axis, *dims.rhs_spec[2:])))
    conv = functools.partial(primitives.conv_general_dilated_p.bind, **params)

    @jax.custom_jvp
    def conv_fn(lhs, rhs):
        return conv(lhs, rhs)

    def conv_jvp(primal, tangent):
        (lhs, rhs), (lhs_dot, rhs_dot) = primal, tangent
        out = conv(lhs, rhs)
        terms = []
        if not isinstance(lhs_dot, SymbolicZero):
            # Transposing this term (the input gradient) swaps the feature axes back:
            # the gradient convolution's kernel is HWIO.
            kernel = jnp.transpose(rhs, swap)
            terms.append(primitives.conv_general_dilated_p.bind(lhs_dot, kernel, **swapped))
        if not isinstance(rhs_dot, SymbolicZero):
            terms.append(conv(lhs, rhs_dot))
        return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)

    conv_fn.defjvp(conv_jvp, symbolic_zeros=True)
    return conv_fn


def _has_conv(jaxpr) -> bool:
    return any(
        eqn.primitive is primitives.conv_general_dilated_p
        or (eqn.primitive is primitives.jit_p and _has_conv(eqn.params["jaxpr"].jaxpr))
        for eqn in jaxpr.eqns
    )


def _eval_with_convs(replace, jaxpr, consts, *args):
    """`jax.core.eval_jaxpr` with each single-group convolution (also inside nested jits)
    computed by `replace(params)(lhs, rhs)` instead."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jax_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        params = eqn.params
        if (eqn.primitive is primitives.conv_general_dilated_p
                and params["feature_group_count"] == 1 and params["batch_group_count"] == 1):
            outputs = [replace(params)(*inputs)]
        elif eqn.primitive is primitives.jit_p and _has_conv(params["jaxpr"].jaxpr):
            inner = params["jaxpr"]
            outputs = _eval_with_convs(replace, inner.jaxpr, inner.consts, *inputs)
        else:
            with eqn.ctx.manager:
                outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(params))
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        env.update(zip(eqn.outvars, outputs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _with_convs(replace, fn):
    """`fn` with its convolutions computed by `replace(params)` (identity off CPU)."""
    if jax.default_backend() != "cpu":
        return fn

    @functools.wraps(fn)
    def wrapped(*args):
        flat, tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *leaves: fn(*jax.tree.unflatten(tree, leaves)), return_shape=True
        )(*flat)
        outputs = _eval_with_convs(replace, closed.jaxpr, closed.consts, *flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return wrapped


def conv_friendly(fn):
    """`fn` with the same values and derivatives, whose input gradients XLA:CPU computes
    fast inside an attack's loop (identity on other backends).

    JAX differentiates a convolution with respect to its input by a convolution whose
    kernel has its input and output feature axes swapped ('01oi'). XLA:CPU runs a
    convolution with its fast kernels (YNNPACK, Eigen) only for NHWC inputs and HWIO
    kernels; it rewrites other convolutions into that form, but only in the entry
    computation (xla/service/cpu/conv_canonicalization.cc), so inside a `lax.scan` the
    gradient convolutions fall back to a naive loop nest, 10-25x slower (the cause of
    jax-ml/jax#12868, and why unrolling paid). Here every convolution of fn gets a custom
    JVP that feeds the input tangent an explicitly transposed kernel, so the convolution
    that reverse mode derives from it is HWIO. Only kernels are transposed (small);
    values and gradients are bit-identical. Convolutions inside control flow or custom
    derivatives of fn are left as they are.
    """
    return _with_convs(_conv_with_hwio_input_grad, fn)


_NHWC_HWIO = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def im2col_conv(lhs, rhs, *, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None, **_):
    """`lax.conv_general_dilated` (NHWC input, HWIO kernel, no dilation, one group) as
    im2col: the kernel's windows sliced out of the padded input, concatenated along the
    features, and one matrix product with the flattened kernel. Every derivative of this
    form, to any order, is slices, pads and matrix products."""
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if (dims != _NHWC_HWIO or feature_group_count != 1
            or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))):
        raise ValueError("im2col_conv: NHWC inputs, HWIO kernels, no dilation and one "
                         f"group only; got {dims}, groups {feature_group_count}, "
                         f"dilations {lhs_dilation}, {rhs_dilation}")
    kh, kw, c, f = rhs.shape
    sh, sw = window_strides
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    windows = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
               for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(windows, axis=-1)
    return jnp.matmul(patches, rhs.reshape(kh * kw * c, f), precision=precision)


def _im2col_where_it_applies(params: dict):
    """`im2col_conv` with these convolution parameters, or the convolution itself where
    im2col does not apply (dilated, or not NHWC/HWIO)."""
    dilations = (*params["lhs_dilation"], *params["rhs_dilation"])
    if params["dimension_numbers"] == _NHWC_HWIO and all(d == 1 for d in dilations):
        return functools.partial(im2col_conv, **params)
    return functools.partial(primitives.conv_general_dilated_p.bind, **params)


def im2col_convolutions(fn):
    """`fn` with each NHWC/HWIO convolution computed as `im2col_conv` on CPU (identity on
    other backends): the same values and derivatives, up to float rounding.

    For programs that differentiate a network's input gradients again (Deep Defense's
    regularizer: Jacobian rows of 9 classes at once, differentiated), whose kernel-gradient
    convolutions XLA:CPU runs 3-4x slower than PyTorch (benchmarks/RESULTS.md): as im2col
    LeNet's regularized step was 3.1x faster. Not for long unrolled attack loops: their
    many sliced windows made XLA compile a LeNet evaluation for over 15 minutes.
    """
    return _with_convs(_im2col_where_it_applies, fn)


def model_logits(classifier: Classifier, x: jax.Array, rng=None) -> jax.Array:
    """`classifier.logits(x, rng)`, differentiating fast on CPU (`conv_friendly`)."""
    return conv_friendly(classifier.apply_fn)(classifier.variables, x, rng)


def attack_objective(classifier, loss_fn, x, labels, rng):
    """Per-example `loss_fn(logits, labels)` and the logits an attack judges success on.

    For an EOT classifier (`attacks.eot`: its apply_fn has a `draws` count and gives one
    draw of a random classifier per key) the loss is the mean of the per-draw losses
    over `draws` keys split from rng, so its gradient is the mean of the per-draw
    gradients (Athalye et al. 2018, Sec. 4.3), and the logits are one draw (the first): the
    randomized model itself decides what fools it. Otherwise one evaluation at rng.
    """
    draws = getattr(classifier.apply_fn, "draws", None)
    if draws is None:
        logits = model_logits(classifier, x, rng)
        return loss_fn(logits, labels), logits
    if rng is None:
        raise ValueError("an eot classifier needs an rng: pass one to the attack")

    def one_draw(key):
        logits = model_logits(classifier, x, key)
        return loss_fn(logits, labels), logits

    losses, logits = jax.vmap(one_draw)(jax.random.split(rng, draws))
    return losses.mean(axis=0), logits[0]


def loss_and_input_grad(classifier, loss_fn, x, labels, rng, sign=1.0):
    """Per-example `sign * loss`, its gradient with respect to the input, and the logits
    (`attack_objective`'s: averaged over draws for an EOT classifier).

    Each example's loss depends only on its own input (eval-mode models), so the
    gradient of the sum is the stack of per-example gradients.
    """

    def total(x_):
        loss, logits = attack_objective(classifier, loss_fn, x_, labels, rng)
        per_example = sign * loss
        return per_example.sum(), (per_example, logits)

    (_, (per_example, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
    return per_example, grad, logits


def step_key(rng, step):
    """The classifier's key for one step of an attack, `fold_in(rng, step)`: a random
    classifier gets a fresh draw each step. None (a deterministic classifier) stays None."""
    return None if rng is None else jax.random.fold_in(rng, step)


def per_example_norm(v: jax.Array, norm: str) -> jax.Array:
    """L-inf or L2 norm of each example, shaped to broadcast against v."""
    flat = v.reshape(v.shape[0], -1)
    n = jnp.abs(flat).max(axis=1) if norm == "linf" else jnp.linalg.norm(flat, axis=1)
    return n.reshape((-1,) + (1,) * (v.ndim - 1))


def per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes one value per example to broadcast against the batch `like`."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def select(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example `where`: a's example where mask, else b's."""
    return jnp.where(per_example(mask, a), a, b)


def project(delta: jax.Array, eps, norm: str) -> jax.Array:
    """Projects perturbations onto the eps-ball of the norm."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    n = per_example_norm(delta, "l2")
    return delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))


def project_to_threat(classifier, x_adv, x, eps, norm: str) -> jax.Array:
    """Onto the eps-ball around x intersected with the data range (the feasible set S)."""
    return clip_to_bounds(classifier, x + project(x_adv - x, eps, norm))


def steepest_step(grad: jax.Array, norm: str) -> jax.Array:
    """Unit-norm direction of steepest ascent: sign for L-inf, normalized gradient for L2."""
    if norm == "linf":
        return jnp.sign(grad)
    return grad / jnp.maximum(per_example_norm(grad, "l2"), 1e-12)


def random_in_ball(rng, shape, eps, norm: str) -> jax.Array:
    """Uniform sample from the L-inf ball, or uniform from the L2 ball."""
    if norm == "linf":
        return jax.random.uniform(rng, shape, minval=-1.0, maxval=1.0) * eps
    dir_rng, radius_rng = jax.random.split(rng)
    direction = jax.random.normal(dir_rng, shape)
    direction = direction / per_example_norm(direction, "l2")
    dim = int(np.prod(shape[1:]))
    radius = jax.random.uniform(radius_rng, (shape[0],) + (1,) * (len(shape) - 1)) ** (1.0 / dim)
    return direction * radius * eps


class Best(NamedTuple):
    """Each example's best candidate so far: one that fools first, then the highest loss."""

    x: jax.Array
    fooled: jax.Array
    value: jax.Array


def no_best(x: jax.Array) -> Best:
    """A tracker any candidate beats (x itself stands in until one arrives)."""
    n = x.shape[0]
    return Best(x, jnp.zeros(n, bool), jnp.full(n, -jnp.inf))


def update_best(best: Best, x: jax.Array, fooled_: jax.Array, value: jax.Array) -> Best:
    """Keeps, per example, the candidate that fools; among equals, the higher loss."""
    better = (fooled_ & ~best.fooled) | ((fooled_ == best.fooled) & (value > best.value))
    return Best(
        select(better, x, best.x), best.fooled | fooled_, jnp.where(better, value, best.value)
    )


def best_of_restarts(run, rng, restarts: int, x: jax.Array) -> jax.Array:
    """Runs `run(rng) -> Best` `restarts` times with fresh keys; each example's best x."""
    if restarts == 1:
        return run(rng).x

    def body(best, run_rng):
        candidate = run(run_rng)
        return update_best(best, candidate.x, candidate.fooled, candidate.value), None

    best, _ = lax.scan(body, no_best(x), jax.random.split(rng, restarts))
    return best.x


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_argument(name: str, value: Any) -> None:
    if isinstance(value, jax.core.Tracer):
        return  # traced under an outer jit: only concrete values can be checked
    if name in NONNEGATIVE and value is not None and np.any(np.asarray(value) < 0):
        raise ValueError(f"{name} must be >= 0 (in [0, 1] pixel units), got {value}")
    if name in POSITIVE_COUNTS and not (isinstance(value, int | np.integer) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def jit_attack(*static_argnames: str, validate=None):
    """`jax.jit` for attacks, checking arguments first (a clear ValueError, not a NaN).

    Checks every argument named in NONNEGATIVE or POSITIVE_COUNTS, then calls
    `validate(arguments)` if given. Values traced by an outer jit are not checked.
    """

    def wrap(fn):
        jitted = jax.jit(fn, static_argnames=static_argnames)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for name, value in bound.arguments.items():
                _check_argument(name, value)
            if validate is not None:
                validate(bound.arguments)
            return jitted(*args, **kwargs)

        return checked

    return wrap


def default_unroll(steps: int) -> int:
    """How many loop iterations to unroll in an attack's `lax.scan`.

    XLA:CPU runs convolutions inside a rolled loop several times slower than unrolled
    (jax-ml/jax#12868), so on CPU short loops unroll fully and long ones by 10; on
    accelerators a rolled loop is as fast and compiles quicker.
    """
    if jax.default_backend() != "cpu":
        return 1
    return steps if steps <= 20 else 10
