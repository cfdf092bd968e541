"""Adaptive attacks on defenses (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a
false sense of security"): BPDA and EOT as wrappers that return a new Classifier, so every
attack runs on them unchanged (EOT's loss averaging lives in `common.attack_objective`).

A defended classifier whose front-end BPDA should bypass is built with `with_front_end`:
its apply is `model(front_end(x))`, and its variables are {'front_end': ..., 'model': ...}.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from robustgan.classifier import ApplyFn, Classifier

# (variables, x, rng) -> x': a defense's input transformation (Defense-GAN's projection
# onto the generator's range, ATGAN's generator).
FrontEndFn = Callable[[object, jax.Array, jax.Array | None], jax.Array]


def _split(rng):
    return (None, None) if rng is None else tuple(jax.random.split(rng))


@dataclasses.dataclass(frozen=True)
class FrontEndApply:
    """apply_fn of `model(front_end(x))`; each gets its own half of the rng."""

    front_end: FrontEndFn
    model: ApplyFn

    def __call__(self, variables, x, rng=None):
        front_rng, model_rng = _split(rng)
        x_clean = self.front_end(variables["front_end"], x, front_rng)
        return self.model(variables["model"], x_clean, model_rng)


def with_front_end(front_end: FrontEndFn, front_end_variables, classifier: Classifier):
    """The classifier behind an input front-end: logits = classifier(front_end(x)).

    front_end must be hashable (a module-level function or a frozen dataclass).
    """
    return Classifier(
        apply_fn=FrontEndApply(front_end, classifier.apply_fn),
        variables={"front_end": front_end_variables, "model": classifier.variables},
        bounds=classifier.bounds,
        num_classes=classifier.num_classes,
    )


def identity(variables, x, rng=None):
    """BPDA's default surrogate: the front-end's backward pass is the identity (g(x) = x)."""
    return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _straight_through(front_end, surrogate, variables, x, rng):
    return front_end(variables, x, rng)


def _straight_through_fwd(front_end, surrogate, variables, x, rng):
    return front_end(variables, x, rng), (variables, x, rng)


def _straight_through_bwd(front_end, surrogate, residuals, cotangent):
    variables, x, rng = residuals
    _, vjp = jax.vjp(lambda v, x_: surrogate(v, x_, rng), variables, x)
    return (*vjp(cotangent), None)


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


@dataclasses.dataclass(frozen=True)
class BPDAFrontEnd:
    """A front-end whose forward pass is `front_end` and whose backward pass is `surrogate`'s
    (given the same variables, input and rng: the same draw of any randomness)."""

    front_end: FrontEndFn
    surrogate: FrontEndFn = identity

    def __call__(self, variables, x, rng=None):
        return _straight_through(self.front_end, self.surrogate, variables, x, rng)


def has_front_end(classifier: Classifier) -> bool:
    """Whether `classifier` was built with `with_front_end`."""
    return isinstance(classifier.apply_fn, FrontEndApply)


def bpda(classifier: Classifier, surrogate_apply: FrontEndFn | None = None) -> Classifier:
    """Backward Pass Differentiable Approximation (Athalye et al. 2018, Sec. 4.1).

    Returns the same classifier (same forward pass, front-end included) whose gradients
    treat the front-end as `surrogate_apply` (variables, x, rng) -> x': the identity by
    default, or any differentiable approximation of the front-end. The classifier must
    come from `with_front_end`.
    """
    if not has_front_end(classifier):
        raise ValueError(
            "bpda needs a classifier built with attacks.with_front_end(front_end, variables, "
            f"classifier), so it knows which part to approximate; got {classifier.apply_fn!r}"
        )
    front_end = BPDAFrontEnd(classifier.apply_fn.front_end, surrogate_apply or identity)
    return dataclasses.replace(
        classifier, apply_fn=FrontEndApply(front_end, classifier.apply_fn.model)
    )


@dataclasses.dataclass(frozen=True)
class EOTApply:
    """apply_fn of a random classifier under EOT: one draw of `apply_fn` per rng, and the
    number of `draws` that attacks average their loss over (`common.attack_objective`)."""

    apply_fn: ApplyFn
    draws: int

    def __call__(self, variables, x, rng=None):
        if rng is None:
            raise ValueError("an eot classifier needs an rng: pass one to the attack")
        return self.apply_fn(variables, x, rng)


def eot(classifier: Classifier, samples: int) -> Classifier:
    """Expectation over Transformation (Athalye et al. 2018, Sec. 4.3): the same random
    classifier, whose attack loss (`common.attack_objective`) every loss-based attack
    (FGSM, PGD, APGD, C&W, random search) averages over `samples` independent draws of
    its randomness, so the input gradient is the mean of the per-draw gradients.

    Its logits are one draw of the classifier (the key decides which): success, the
    best iterate and restarts are judged on the randomized model itself, never on
    averaged logits. DeepFool, which follows logits rather than a loss, sees one draw
    per step.
    """
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    return dataclasses.replace(classifier, apply_fn=EOTApply(classifier.apply_fn, samples))
