"""deep_defense: Yan, Guo & Zhang, "Deep Defense: Training DNNs with Improved Adversarial
Robustness" (NeurIPS 2018). Fine-tunes a classifier on cross-entropy plus a regularizer
on the norm of its own DeepFool perturbations (Eqs. 3 and 6):

    L = CE + lambda / B * [ sum_{correct} exp(-c ||r_k|| / ||x_k||)
                            + sum_{misclassified} exp(d ||r_k|| / ||x_k||) ]

r_k the DeepFool perturbation (for a misclassified x_k, DeepFool's steps toward the true
label, as the authors' code). The paper hand-builds a "reverse network" per layer type to
differentiate r; here r is `attacks.deepfool_perturbation(..., differentiable=True)`,
the attack suite's DeepFool unrolled in a `lax.scan` with done-masks (5 steps, overshoot
0.02, all classes as candidates, as the authors trained), differentiated by autodiff for
any architecture.

Settings the paper's experiments use (config.deep_defense):
- `layers`: Sec. 4.2's layer-wise regularization: the regularizer's gradient reaches only
  the named parameter subtrees (the cross-entropy's reaches all);
- `clean_weight` / `fgs_weight` / `fgs_eps`: the supplement's Adv. Train II
  (Goodfellow et al.'s objective, 0.5 CE(x) + 0.5 CE(x_FGS), with weight 0) and the
  combined Deep Defense + FGS objective (CE(x) + CE(x_FGS) + the regularizer);
- `space`: ||r|| / ||x|| measured in the model's input space (after its fixed first
  layer, models/yan.py: the authors' mean-subtracted 0-255 MNIST, whitened CIFAR) or in
  the data space the attacks see.

The model runs in inference mode throughout (BatchNorm frozen: running averages used and
kept, its scale and offset not trained; no dropout), as the authors fine-tuned. It starts
from a reference run (`config.init_from.run`, a `standard` run of the same architecture).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from robustgan import attacks, nets
from robustgan.attacks import common
from robustgan.attacks.common import cross_entropy, per_example_norm
from robustgan.checks import check_at_least, check_choice, check_range
from robustgan.classifier import Classifier, ModelApply, has_input_layer, model_input_space
from robustgan.errors import ConfigError
from robustgan.methods.base import Method, MethodSpec
from robustgan.methods.supervised import supervised_net

SPACES = ("model_input", "data")
MAX_RATIO = 1.0  # ||r|| / ||x|| of a misclassified example, at most (`regularizer`)
_TINY = 1e-12


def defaults() -> ml_collections.ConfigDict:
    """config.deep_defense: the paper's MNIST / CIFAR-10 settings (Sec. 4)."""
    d = ml_collections.ConfigDict()
    d.weight = 15.0  # lambda (ImageNet: 5)
    d.c = 25.0  # scale for correctly classified examples (NIN: 70; ImageNet: 500)
    d.d = 5.0  # scale for misclassified examples
    d.deepfool_steps = 5  # the authors' unrolled DeepFool
    d.overshoot = 0.02
    d.space = "model_input"  # where ||r|| / ||x|| is measured: model_input | data
    d.layers = ()  # parameter subtrees the regularizer trains (Sec. 4.2); (): all
    d.clean_weight = 1.0  # weight of CE on clean images
    d.fgs_weight = 0.0  # weight of CE on FGS images (supplement: Adv. Train II, combined)
    d.fgs_eps = 0.1  # FGS eps in [0, 1] pixel units
    d.remat = False  # jax.checkpoint on each DeepFool step: less memory, more time
    return d


def validate(config) -> None:
    d = config.deep_defense
    for key in ("weight", "c", "d", "overshoot", "clean_weight", "fgs_weight"):
        check_at_least(f"deep_defense.{key}", d[key], 0.0, "non-negative")
    check_at_least("deep_defense.deepfool_steps", d.deepfool_steps, 1, "at least 1")
    check_choice("deep_defense.space", d.space, SPACES)
    check_range("deep_defense.fgs_eps", d.fgs_eps, 0.0, 1.0)
    if d.weight == d.clean_weight == d.fgs_weight == 0:
        raise ConfigError("config.deep_defense: weight, clean_weight and fgs_weight are all "
                          "0: nothing to train on")
    if not config.init_from.run:
        raise ConfigError(
            "deep_defense fine-tunes a trained classifier (Yan et al. Sec. 4): set "
            "config.init_from.run to a `standard` run of the same model")


def parameter_paths(params) -> list[str]:
    """'/'-joined paths of every parameter leaf."""
    return ["/".join(str(k.key) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _selected(params, prefixes) -> dict:
    """A tree of bools: whether each leaf's path starts with one of `prefixes` (one of
    them a whole path component)."""
    def chosen(path, _):
        name = "/".join(str(k.key) for k in path)
        return any(name == p or name.startswith(p + "/") for p in prefixes)
    return jax.tree_util.tree_map_with_path(chosen, params)


def check_layers(params, layers) -> None:
    """ConfigError unless every name in `layers` is a parameter subtree of the model."""
    paths = parameter_paths(params)
    unknown = [p for p in layers if not any(q == p or q.startswith(p + "/") for q in paths)]
    if unknown:
        tops = sorted({q.split("/")[0] for q in paths})
        raise ConfigError(f"config.deep_defense.layers names {unknown}, which the model "
                          f"does not have; its layers: {tops}")


def frozen_batch_norm(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` with zero updates for BatchNorm's scale and offset (after weight decay too)."""
    is_batch_norm = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: any("BatchNorm" in str(k.key) for k in path), params)
    return optax.chain(tx, optax.masked(optax.set_to_zero(), is_batch_norm))


def perturbation_ratio(classifier: Classifier, x, y, *, steps: int, overshoot: float,
                       remat: bool = False):
    """(||r_k|| / ||x_k||, whether x_k is correctly classified): r_k Deep Defense's DeepFool
    perturbation of x_k (away from y_k, or toward it where x_k is misclassified),
    differentiable with respect to the classifier's variables."""
    correct = lax.stop_gradient(classifier.logits(x).argmax(-1) == y)
    r = attacks.deepfool_perturbation(
        classifier, x, y, norm="l2", max_iter=steps, overshoot=overshoot, targeted=~correct,
        differentiable=True, remat=remat)
    # sqrt(sum r^2 + tiny): the norm's gradient at r = 0 (an example whose gradients all
    # vanish, e.g. every ReLU off) is 0, not NaN.
    norm_r = jnp.sqrt(jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1) + _TINY)
    return norm_r / per_example_norm(x, "l2").reshape(-1), correct


def regularizer(ratio, correct, *, c: float, d: float):
    """Eq. 6 with R = exp, divided by the batch size (the authors' code):
    mean_k [exp(-c ratio_k) if x_k is correct else exp(d ratio_k)].

    In the misclassified branch the ratio is capped at MAX_RATIO (1: a "step toward the
    label" as long as the image itself is a degenerate DeepFool step, from a near-zero
    gradient, not a distance to a boundary). Uncapped, one such example dominates: on the
    MNIST MLP with the combined objective the regularizer jumped from 0.13 to 48,517 at
    step ~1,000 and the model collapsed to a constant; below the cap nothing changes."""
    wrong = jnp.exp(d * jnp.minimum(ratio, MAX_RATIO))
    return jnp.where(correct, jnp.exp(-c * ratio), wrong).mean()


@dataclasses.dataclass(frozen=True, eq=False)
class DeepDefenseLoss:
    """The fine-tuning objective of one batch as a function of the parameters."""

    net: nets.SupervisedNet
    settings: ml_collections.ConfigDict

    def _classifier(self, variables) -> Classifier:
        """The model in inference mode."""
        return Classifier(ModelApply(self.net.module, "eval"), variables, self.net.bounds,
                          self.net.num_classes)

    def __call__(self, params, batch_stats, x, y):
        s, module = self.settings, self.net.module
        variables = nets.variables(params, batch_stats)
        logits = module.apply(variables, x, train=False)
        metrics = {"accuracy": (logits.argmax(-1) == y).mean()}
        loss = s.clean_weight * cross_entropy(logits, y).mean()
        if s.fgs_weight:
            x_fgs = attacks.fgsm(self._classifier(lax.stop_gradient(variables)), x, y,
                                 eps=s.fgs_eps)
            fgs_loss = cross_entropy(module.apply(variables, x_fgs, train=False), y).mean()
            loss, metrics["fgs_loss"] = loss + s.fgs_weight * fgs_loss, fgs_loss
        if s.weight:
            if s.layers:  # Sec. 4.2: the regularizer's gradient reaches these layers only
                params = jax.tree.map(lambda p, m: p if m else lax.stop_gradient(p),
                                      params, _selected(params, s.layers))
            classifier, u = self._classifier(nets.variables(params, batch_stats)), x
            if s.space == "model_input":
                classifier, u = model_input_space(classifier, x)
            # Convolutions as im2col on CPU: XLA:CPU's convolutions differentiated twice
            # are slow (benchmarks/RESULTS.md).
            classifier = classifier.replace(
                apply_fn=common.im2col_convolutions(classifier.apply_fn))
            ratio, correct = perturbation_ratio(
                classifier, u, y, steps=s.deepfool_steps, overshoot=s.overshoot,
                remat=s.remat)
            reg = regularizer(ratio, correct, c=s.c, d=s.d)
            loss = loss + s.weight * reg
            metrics |= {"regularizer": reg, "rho_2": ratio.mean()}
        return loss, metrics


def fine_tuning(config, num_classes: int, settings: ml_collections.ConfigDict):
    """(net, init, train_step) fine-tuning config.model by config.optimizer on
    `DeepDefenseLoss` with `settings`: what deep_defense and the paper's baselines share."""
    net = supervised_net(config, num_classes)
    net = dataclasses.replace(net, tx=frozen_batch_norm(net.tx))
    loss_fn = DeepDefenseLoss(net, settings)

    def init(rng, sample_x):
        state = net.init(rng, sample_x)
        check_layers(state.params, settings.layers)
        if settings.weight and settings.space == "model_input" and not has_input_layer(
                net.classifier(state)):
            raise ConfigError(
                f"config.deep_defense.space='model_input': model {config.model.name!r} has "
                "no fixed first layer (models/yan.py); use space='data'")
        return state

    def train_step(state, x, y, rng):
        del rng  # deterministic: inference-mode model, DeepFool and FGS take no randomness
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y)
        return nets.apply_gradients(state, net.tx, grads), {"loss": loss, **metrics}

    return net, init, train_step


def plain_fine_tuning(config, num_classes: int):
    """`fine_tuning` on cross-entropy alone (no regularizer, no FGS term)."""
    settings = defaults()
    settings.weight = 0.0
    return fine_tuning(config, num_classes, settings)


def deep_defense(config, num_classes: int, runs=None) -> Method:
    """The deep_defense Method: config.model fine-tuned on `DeepDefenseLoss`."""
    net, init, train_step = fine_tuning(config, num_classes, config.deep_defense)
    return Method(init=init, train_step=train_step, classifier=net.classifier)


DEEP_DEFENSE = MethodSpec("deep_defense", build=deep_defense, defaults=defaults,
                          validate=validate)
