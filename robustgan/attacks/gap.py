"""GAP, generative adversarial perturbations (Poursaeed et al., CVPR 2018), image-dependent
and L-inf bounded, trained against a fixed classifier: one of the generator attacks of
Jang et al. (ICCV 2019, Table 2).

x_adv = clip(x + eps G(x) / ||G(x)||_inf, data range): the generator's output is scaled
onto the eps-ball's boundary (models/attack_generators.LinfNormalized), and G is trained
non-targeted, to maximize the classifier's cross-entropy of the true label on x_adv. That
is Wang & Yu's generator training against a fixed classifier (attacks/generator.py: the
ascent of F in phi, whose only term that depends on phi is that cross-entropy), so GAP is
`train_generator_attack` with this generator and GAP's optimizer.
"""

from __future__ import annotations

import flax.linen as nn
import optax

from robustgan.attacks.generator import GeneratorAttack, train_generator_attack
from robustgan.classifier import Classifier
from robustgan.models.attack_generators import LinfNormalized
from robustgan.models.generators import get_generator


def train_gap(
    classifier: Classifier,
    x,
    y,
    rng,
    *,
    eps: float,
    num_steps: int,
    generator: nn.Module | None = None,
    batch_size: int = 64,
    optimizer: optax.GradientTransformation | None = None,
    unroll: int = 0,
    mesh=None,
    progress: bool = False,
) -> GeneratorAttack:
    """Trains GAP's generator against the fixed `classifier` for `num_steps` minibatches of
    (x, y) (x scaled to classifier.bounds) and returns it as an attack.

    eps: in [0, 1] pixel units. generator: a models/generators.py module whose output is
    L-inf normalized here (default G1 at k = 64: an encoder, six residual blocks and a
    decoder, the ResNet-generator layout GAP builds on). optimizer: default Adam 2e-4,
    beta1 0.5 (this module's choice, the usual image-to-image GAN setting). unroll, mesh,
    progress: as `train_generator_attack`.
    """
    generator = LinfNormalized(generator or get_generator("g1", classifier.num_classes, 64))
    return train_generator_attack(
        classifier, generator, x, y, rng, eps=eps, num_steps=num_steps,
        batch_size=batch_size, optimizer=optimizer or optax.adam(2e-4, b1=0.5),
        unroll=unroll, mesh=mesh, progress=progress)
