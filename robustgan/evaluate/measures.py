"""Robustness measures beyond accuracy at one eps, and sanity checks on an evaluation.

- `robustness_curve`: accuracy against eps (report.plot_curves draws them).
- `rho`: Deep Defense's rho_2 (Yan et al. 2018, Eq. 7) and rho_inf (supplement, Eq. 2):
  mean ||r||_p / ||x||_p over the test set, r the DeepFool perturbation (the paper's, or
  with every iterate clipped to the data range: the distance to a valid image).
- `eps_ref`: the smallest FGS eps that misclassifies 50% of a fixed set (Deep Defense
  Sec. 4.1), by a grid walk and bisection, and the accuracies at 0.2 / 0.5 / 1.0 eps_ref.
- `sanity_checks`: checks that an evaluation is not fooled by gradient masking (Carlini
  et al. 2019, "On evaluating adversarial robustness"; Athalye et al. 2018): unbounded
  PGD, more PGD steps and random search, zero gradients, white box against transfer.

Data follow `batching.map_batches`: x holds raw uint8 pixels and `value_range` says how to scale
them (`data.scale`), batch by batch. With `value_range=None`, x is a float array already
in the classifier's data range. Epsilons are in [0, 1] pixel units, as for the attacks.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from robustgan import attacks
from robustgan.attacks import common
from robustgan.classifier import Classifier, model_input_space
from robustgan.evaluate.batching import AttackFn, map_batches

AttackForEps = Callable[[jax.Array], AttackFn]  # eps (traced) -> attack

DEEP_DEFENSE_FRACTIONS = (0.2, 0.5, 1.0)


# --- accuracy against eps ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttackAtEps:
    """eps -> `attacks.make_attack(name, eps=eps, **settings)`, hashable and compared by
    value, so jitted evaluations keyed on it compile once for every eps (eps is traced).

    step_fraction: if set, step_size = step_fraction * eps (e.g. PGD's eps / 4).
    Build with `attack_at_eps`.
    """

    name: str
    settings: tuple[tuple[str, Any], ...] = ()
    step_fraction: float | None = None

    def __call__(self, eps) -> AttackFn:
        step = {} if self.step_fraction is None else {"step_size": self.step_fraction * eps}
        return attacks.make_attack(self.name, eps=eps, **dict(self.settings), **step)


def attack_at_eps(name: str, *, step_fraction: float | None = None, **settings) -> AttackAtEps:
    """An `AttackAtEps` for the registry attack `name` with its other settings bound.

    Only attacks bounded by an eps qualify: minimal-perturbation attacks (cw_l2,
    deepfool) take none, so there is no accuracy at an eps to measure with them.
    """
    common.check_choice("attack", name, tuple(attacks.ATTACKS))
    if "eps" not in attacks.settings(name):
        raise ValueError(
            f"attack {name!r} takes no eps (it looks for a minimal perturbation), so it has "
            "no accuracy at an eps; choose an eps-bounded attack: "
            f"{sorted(n for n in attacks.ATTACKS if 'eps' in attacks.settings(n))}"
        )
    return AttackAtEps(name, tuple(sorted(settings.items())), step_fraction)


# FGS (Goodfellow et al.) on the true label: what Deep Defense's eps_ref and Acc.@eps use.
fgs = attack_at_eps("fgsm")


@functools.partial(jax.jit, static_argnames="attack_for_eps")
def _correct_at_eps(tree, xb, yb, key, attack_for_eps):
    classifier, eps = tree
    attack_key, model_key = jax.random.split(key)
    x_adv = attack_for_eps(eps)(classifier, xb, yb, attack_key)
    return classifier.logits(x_adv, model_key).argmax(-1) == yb


def correct_at_eps(
    classifier: Classifier, x, y, attack_for_eps: AttackForEps, eps, *, batch_size: int,
    rng, value_range=None, mesh=None,
) -> np.ndarray:
    """Per-example correctness under `attack_for_eps(eps)`.

    eps is traced, so one compiled function serves every eps as long as the same
    (hashable) `attack_for_eps` is passed, e.g. an `attack_at_eps(...)` or `fgs`.
    """
    return map_batches(
        functools.partial(_correct_at_eps, attack_for_eps=attack_for_eps),
        (classifier, jnp.float32(eps)), x, y,
        batch_size=batch_size, rng=rng, value_range=value_range, mesh=mesh,
    )


def accuracy_at_eps(classifier, x, y, attack_for_eps, eps, **kwargs) -> float:
    """Accuracy under `attack_for_eps(eps)` (keyword arguments as `correct_at_eps`)."""
    return float(np.mean(correct_at_eps(classifier, x, y, attack_for_eps, eps, **kwargs)))


def robustness_curve(
    classifier: Classifier, x, y, attack_fn_for_eps: AttackForEps, eps_list: Sequence[float],
    *, batch_size: int, rng, value_range=None, mesh=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(eps, accuracy) arrays: accuracy under `attack_fn_for_eps(eps)` at each eps.

    Every eps sees the same examples and the same keys (common random numbers), so
    differences between points are not sampling noise of the attack's random start.
    """
    eps = np.asarray(eps_list, np.float32)
    acc = np.asarray([
        accuracy_at_eps(classifier, x, y, attack_fn_for_eps, e, batch_size=batch_size,
                        rng=rng, value_range=value_range, mesh=mesh)
        for e in eps
    ])
    return eps, acc


# --- rho (Deep Defense Eq. 7) -----------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=("norm", "label", "space", "max_iter", "overshoot", "candidates", "clip"),
)
def _rho_batch(classifier, xb, yb, key, norm, label, space, max_iter, overshoot, candidates,
               clip):
    if space == "model_input":
        classifier, xb = model_input_space(classifier, xb)
    predicted = classifier.logits(xb, key).argmax(-1)
    if label == "predicted":  # DeepFool's k(x): leave the predicted class
        target, targeted = predicted, False
    else:  # Deep Defense's code: leave y, or reach y where the example is misclassified
        target, targeted = yb, predicted != yb
    r = attacks.deepfool_perturbation(
        classifier, xb, target, key, norm=norm, max_iter=max_iter, overshoot=overshoot,
        candidates=candidates, targeted=targeted, clip=clip, early_stop=True,
    )
    after = classifier.logits(xb + r, key).argmax(-1)
    fooled = jnp.where(targeted, after == target, after != target)
    if space == "pixels":  # r and x in [0, 1] pixel units: the same rho for any value_range
        scale = common.data_scale(classifier)
        r, origin = r / scale, classifier.bounds[0]
        xb = (xb - origin) / scale
    ratio = common.per_example_norm(r, norm) / jnp.maximum(common.per_example_norm(xb, norm),
                                                           1e-12)
    return {"ratio": ratio.reshape(-1), "fooled": fooled}


def rho(
    classifier: Classifier, x, y=None, norm: str = "l2", *, batch_size: int, rng=None,
    value_range=None, mesh=None, label: str = "predicted", space: str = "pixels",
    max_iter: int = 50, overshoot: float = 0.02, candidates: int | None = None,
    clip: bool = False,
) -> dict:
    """rho_p = 1/|D| sum_k ||r_k||_p / ||x_k||_p (Deep Defense Eq. 7 for p=2; supplement
    Eq. 2 for p=inf), r_k the DeepFool perturbation (Moosavi-Dezfooli et al. 2016,
    Algorithm 2 with overshoot; the L-inf variant of their Sec. 3.3 for norm='linf').

    As in the paper (after DeepFool's rho_adv), the mean runs over every example of D:
    label='predicted' moves each x away from its predicted class, so y is not needed.
    label='true' is Deep Defense's code: away from y, or, for misclassified examples,
    towards y. 'rho' averages over all examples; 'rho_fooled' over those DeepFool
    fooled within max_iter ('fooled' is their fraction: below 1, rho is a lower bound).
    space='pixels' measures r and x in [0, 1] pixel units (x - low) / (high - low), so rho
    does not depend on the data's value_range; 'data' uses the classifier's data range
    as is; 'model_input' runs DeepFool in the input space of a model with a fixed first
    layer (`classifier.model_input_space`: Deep Defense's mean-subtracted or whitened
    spaces, where its paper measured; unclipped only). clip=False is the
    paper's DeepFool, whose x + r may leave the data range; clip=True clips every
    iterate to it, so x + r is a valid image and rho the valid-image distance
    (`attacks.deepfool_perturbation`). DeepFool stops once every example of a batch is
    done (early_stop).
    """
    common.check_choice("norm", norm, common.NORMS)
    common.check_choice("label", label, ("predicted", "true"))
    common.check_choice("space", space, ("pixels", "data", "model_input"))
    if space == "model_input" and clip:
        raise ValueError("rho(space='model_input') runs the unclipped DeepFool: the data "
                         "range has no fixed shape in the model's input space")
    if label == "true" and y is None:
        raise ValueError("rho(label='true') needs the labels y")
    out = map_batches(
        functools.partial(_rho_batch, norm=norm, label=label, space=space, max_iter=max_iter,
                          overshoot=float(overshoot), candidates=candidates, clip=clip),
        classifier, x, y, batch_size=batch_size,
        rng=jax.random.key(0) if rng is None else rng, value_range=value_range, mesh=mesh,
    )
    ratio, fooled = out["ratio"], out["fooled"]
    return {
        "rho": float(ratio.mean()),
        "rho_fooled": float(ratio[fooled].mean()) if fooled.any() else math.nan,
        "fooled": float(fooled.mean()),
        "num_examples": len(ratio),
        "per_example": ratio,
    }


# --- eps_ref (Deep Defense Sec. 4.1) ----------------------------------------------------


def eps_ref(
    classifier: Classifier, x, y, *, batch_size: int, rng, value_range=None, mesh=None,
    attack_fn_for_eps: AttackForEps = fgs, level: float = 0.5, eps_max: float = 1.0,
    grid: int = 20, tol: float = 1e-3, fractions: Sequence[float] = DEEP_DEFENSE_FRACTIONS,
) -> dict:
    """Deep Defense's eps_ref: the smallest eps at which FGS misclassifies a `level` (50%)
    fraction of the fixed set (x, y); then the accuracies at `fractions` (0.2, 0.5, 1.0)
    of eps_ref.

    FGS is one step, so its error need not grow with eps: on a robust model it can
    cross 50% at a moderate eps and fall below it again toward eps_max (each pixel
    pushed to 0 or 1). So the search walks a grid of `grid` steps up to eps_max to the
    first eps that reaches `level`, then bisects between it and the grid point before,
    to within `tol`. The paper finds eps_ref on its regularized model and reports other
    models at that eps: pass the result's 'eps_ref' to `accuracy_at_eps_ref` for them.
    Misclassified clean examples count as misclassified. eps_ref is 0 if the clean error
    already reaches `level`, NaN if no grid eps does.
    """
    evaluate = functools.partial(
        accuracy_at_eps, classifier, x, y, attack_fn_for_eps, batch_size=batch_size,
        rng=rng, value_range=value_range, mesh=mesh,
    )
    reached = lambda acc: 1.0 - acc >= level
    clean = evaluate(0.0)
    evaluations = 1
    found, low, high = math.nan, 0.0, None
    if reached(clean):
        found = 0.0
    else:
        for k in range(1, grid + 1):
            evaluations += 1
            eps = eps_max * k / grid
            if reached(evaluate(eps)):
                high = eps
                break
            low = eps
        if high is None:
            logging.warning("eps_ref: FGS up to eps_max=%g misclassifies less than %g",
                            eps_max, level)
    if high is not None:
        while high - low > tol:
            mid = (low + high) / 2
            low, high = (low, mid) if reached(evaluate(mid)) else (mid, high)
            evaluations += 1
        found = high
    result = {"eps_ref": found, "clean_accuracy": clean, "evaluations": evaluations}
    if not math.isnan(found):
        result["accuracy"] = accuracy_at_eps_ref(
            classifier, x, y, found, fractions=fractions, attack_fn_for_eps=attack_fn_for_eps,
            batch_size=batch_size, rng=rng, value_range=value_range, mesh=mesh,
        )
    return result


def accuracy_at_eps_ref(
    classifier: Classifier, x, y, eps_ref_value: float, *,
    fractions: Sequence[float] = DEEP_DEFENSE_FRACTIONS, attack_fn_for_eps: AttackForEps = fgs,
    **kwargs,
) -> dict[float, float]:
    """Deep Defense Table 1's Acc.@{0.2, 0.5, 1.0} eps_ref: accuracy under FGS at each
    fraction of eps_ref (keyword arguments as `correct_at_eps`)."""
    return {
        f: accuracy_at_eps(classifier, x, y, attack_fn_for_eps, f * eps_ref_value, **kwargs)
        for f in fractions
    }


# --- sanity checks ----------------------------------------------------------------------


def _standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p over n examples, at least 1/n."""
    return max(math.sqrt(max(p * (1 - p), 0.0) / n), 1.0 / n)


@functools.partial(jax.jit, static_argnames="loss")
def _input_grad_norms(classifier, xb, yb, key, loss):
    _, grad, _ = common.loss_and_input_grad(classifier, common.attack_loss(loss), xb, yb, key)
    return common.per_example_norm(grad, "l2").reshape(-1)


def gradient_check(
    classifier: Classifier, x, y, *, batch_size: int, rng, value_range=None, mesh=None,
    loss: str = "margin", max_zero_fraction: float = 0.0,
) -> dict:
    """Passes if at most `max_zero_fraction` of the examples have an all-zero input gradient.

    loss='margin' (best other logit minus the label's) tests the network itself: the
    cross-entropy gradient also underflows to exactly 0 where softmax saturates in
    float32 (a logit margin above ~17), which is not a defect of the model.
    """
    norms = map_batches(
        functools.partial(_input_grad_norms, loss=loss), classifier, x, y,
        batch_size=batch_size, rng=rng, value_range=value_range, mesh=mesh,
    )
    zero = float(np.mean(norms == 0))
    return {"passed": zero <= max_zero_fraction, "zero_fraction": zero,
            "median_norm": float(np.median(norms)), "min_norm": float(norms.min())}


def unbounded_attack_check(
    classifier: Classifier, x, y, *, batch_size: int, rng, value_range=None, mesh=None,
    steps: int = 20, step_size: float = 0.1, max_accuracy: float = 0.01,
    unroll: int | None = None,
) -> dict:
    """Passes if L-inf PGD at eps=1 (the whole data range) brings accuracy to at most
    `max_accuracy`: an unbounded attack must always succeed (Carlini et al. 2019).

    PGD ascends the margin loss: the cross-entropy's gradient underflows to 0 in float32
    once softmax saturates (logit margins above ~100; under jit sometimes round-off noise
    instead), which would stop PGD on a confident model that is not masking anything.
    No random start, so a model whose gradients vanish keeps its clean accuracy here
    instead of being judged on random images.
    """
    acc = accuracy_at_eps(
        classifier, x, y,
        attack_at_eps("pgd", step_size=step_size, steps=steps, random_start=False,
                      loss="margin", unroll=unroll), 1.0,
        batch_size=batch_size, rng=rng, value_range=value_range, mesh=mesh,
    )
    return {"passed": acc <= max_accuracy, "accuracy": acc, "eps": 1.0, "steps": steps,
            "loss": "margin"}


def more_steps_check(
    classifier: Classifier, x, y, *, eps: float, batch_size: int, rng, value_range=None,
    mesh=None, steps: tuple[int, int] = (10, 20), step_size: float | None = None,
    tolerance: float | None = None, unroll: int | None = None,
) -> dict:
    """Passes if PGD is not weaker with more steps, nor than random search with as many
    model evaluations (two signs of gradient masking, Athalye et al. 2018):
    acc(PGD-steps[1]) <= acc(PGD-steps[0]) + tolerance and
    acc(PGD-steps[0]) <= acc(random search, steps[0] samples) + tolerance.

    The three attacks get independent keys, so PGD-steps[1] has its own random start
    (not PGD-steps[0]'s trajectory continued) and a model without useful gradients,
    whose PGD stays where its random start put it, loses to the best of steps[0] random
    points in the eps-ball (`attacks.random_search`). PGD steps step_size (default
    eps/4); tolerance (default: two binomial standard errors of the PGD-steps[0]
    accuracy) absorbs the random starts' sampling noise.
    """
    step_size = eps / 4 if step_size is None else step_size
    few_rng, many_rng, random_rng = jax.random.split(rng, 3)
    common_args = dict(batch_size=batch_size, value_range=value_range, mesh=mesh)
    few, many = (
        accuracy_at_eps(
            classifier, x, y, attack_at_eps("pgd", step_size=step_size, steps=s, unroll=unroll),
            eps, rng=key, **common_args,
        )
        for s, key in zip(steps, (few_rng, many_rng), strict=True)
    )
    searched = accuracy_at_eps(
        classifier, x, y, attack_at_eps("random_search", samples=steps[0], unroll=unroll), eps,
        rng=random_rng, **common_args,
    )
    n = len(np.asarray(x))
    tolerance = 2 * _standard_error(few, n) if tolerance is None else tolerance
    return {"passed": many <= few + tolerance and few <= searched + tolerance,
            "accuracy_few": few, "accuracy_many": many, "accuracy_random_search": searched,
            "steps": tuple(steps), "random_samples": steps[0], "tolerance": tolerance}


def white_box_vs_transfer_check(
    white_box_accuracy: float, transfer_accuracy: float, *, num_examples: int | None = None,
    tolerance: float | None = None,
) -> dict:
    """Passes if the white-box attack is not weaker than a transfer (black-box) attack:
    white_box <= transfer + tolerance. A violation points to gradient masking (Athalye et
    al. 2018). tolerance defaults to two standard errors when num_examples is given, else 0.
    """
    if tolerance is None:
        tolerance = 0.0 if num_examples is None else 2 * _standard_error(
            transfer_accuracy, num_examples)
    return {"passed": white_box_accuracy <= transfer_accuracy + tolerance,
            "white_box_accuracy": white_box_accuracy, "transfer_accuracy": transfer_accuracy,
            "tolerance": tolerance}


def sanity_checks(
    classifier: Classifier, x, y, *, eps: float, batch_size: int, rng, value_range=None,
    mesh=None, white_box_accuracy: float | None = None,
    transfer_accuracy: float | None = None, transfer_examples: int | None = None,
    pgd_steps: tuple[int, int] = (10, 20),
    unbounded_steps: int = 20, max_unbounded_accuracy: float = 0.01,
    max_zero_gradient_fraction: float = 0.0, unroll: int | None = None,
) -> dict[str, dict]:
    """Runs the checks; {name: {'passed': bool, <the numbers behind it>}}.

    'unbounded_attack' (`unbounded_attack_check`), 'more_steps' (`more_steps_check`),
    'gradients' (`gradient_check`), and 'white_box_vs_transfer' when both accuracies are
    given (measured over `transfer_examples` images, by default len(x)). unroll: the PGD
    scans' unrolling (None: the attacks' default). Failures are logged as warnings and
    stay in the result; `failed(result)` lists them.
    """
    keys = jax.random.split(rng, 3)
    common_args = dict(batch_size=batch_size, value_range=value_range, mesh=mesh)
    result = {
        "unbounded_attack": unbounded_attack_check(
            classifier, x, y, rng=keys[0], steps=unbounded_steps,
            max_accuracy=max_unbounded_accuracy, unroll=unroll, **common_args),
        "more_steps": more_steps_check(
            classifier, x, y, eps=eps, rng=keys[1], steps=pgd_steps, unroll=unroll,
            **common_args),
        "gradients": gradient_check(
            classifier, x, y, rng=keys[2], max_zero_fraction=max_zero_gradient_fraction,
            **common_args),
    }
    if white_box_accuracy is not None and transfer_accuracy is not None:
        result["white_box_vs_transfer"] = white_box_vs_transfer_check(
            white_box_accuracy, transfer_accuracy,
            num_examples=transfer_examples or len(np.asarray(x)))
    for name in failed(result):
        logging.warning("sanity check %r failed: %s", name, result[name])
    return result


def failed(checks: dict[str, dict]) -> list[str]:
    """Names of the checks that did not pass."""
    return [name for name, check in checks.items() if not check["passed"]]
