"""The generator attacks of Jang et al.'s Table 2: AdvGAN, GAP and the L2L-DA attack, on a
tiny fixed linear classifier of 8x8x1 images (kept tiny: the file runs in seconds)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustgan.attacks.advgan import adversarial_loss, hinge_loss, train_advgan
from robustgan.attacks.common import cross_entropy, fooled
from robustgan.attacks.gap import train_gap
from robustgan.attacks.l2l_da_attack import L2LDAAttack, finetune_l2l_da
from robustgan.classifier import Classifier, ModelApply
from robustgan.models.unet import UNetGenerator

SHAPE, CLASSES, N = (8, 8, 1), 3, 32
BOUNDS = (-1.0, 1.0)
EPS = 0.1  # pixel units: 0.2 in the data range [-1, 1]
L2L = dict(steps=4, samples=3, unroll=1)  # one compiled attack for every L2L-DA test


def key(seed):
    """An RBG key: XLA:CPU compiles its random draws ~7x faster than threefry's (each
    initializer shape is a compile), and the attacks take any key."""
    return jax.random.key(seed, impl="rbg")


class Linear(nn.Module):
    """A fixed linear classifier (models/ calling convention)."""

    @nn.compact
    def __call__(self, x, train=False, batch_stats=None):
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


class TinyGenerator(nn.Module):
    """conv-ReLU-conv-tanh, no BatchNorm (so training and attack time agree); gain > 1
    saturates the tanh, so the perturbation reaches the eps-ball's boundary."""

    num_classes: int = CLASSES
    gain: float = 1.0

    @nn.compact
    def __call__(self, x, y, train=False, batch_stats=None):
        h = nn.relu(nn.Conv(4, (3, 3))(x))
        return jnp.tanh(self.gain * nn.Conv(x.shape[-1], (3, 3))(h))


@pytest.fixture(scope="module")
def setup():
    model = Linear()
    x = jax.random.uniform(key(0), (N, *SHAPE), minval=-0.5, maxval=0.5)
    variables = model.init(key(1), x)
    variables = jax.tree.map(lambda v: 10.0 * v, variables)  # confident on clean images
    classifier = Classifier(ModelApply(model), variables, BOUNDS, CLASSES)
    y = classifier.logits(x).argmax(-1)  # clean accuracy 1
    return classifier, x, y


@pytest.fixture(scope="module")
def unet(setup):
    """A width-2 L2L-DA U-Net and its initial variables."""
    _, x, y = setup
    module = UNetGenerator(num_classes=CLASSES, width=2, z_dim=2)
    variables = jax.jit(module.init)(key(2), x, y, jnp.zeros((x.shape[0], 2)),
                                     jnp.zeros_like(x), jnp.zeros_like(x))
    return module, variables


def saturated(variables, gain=100.0):
    """The U-Net's variables with its final conv3x3 (before the tanh) scaled by gain."""
    params = dict(variables["params"])
    params["Conv_3"] = jax.tree.map(lambda v: gain * v, params["Conv_3"])
    return {**variables, "params": params}


def with_bound_pixels(x):
    """x with its first image row at the data range's top and its last at its bottom."""
    return x.at[:, 0].set(BOUNDS[1]).at[:, -1].set(BOUNDS[0])


def ce(classifier, x, y):
    return float(cross_entropy(classifier.logits(x), y).mean())


@pytest.mark.parametrize("name", ["advgan", "gap", "l2l_da"])
def test_each_attack_stays_in_the_eps_ball_and_the_data_range_and_reaches_both(setup, unet,
                                                                              name):
    classifier, x, y = setup
    if name == "advgan":  # a saturated tanh: eps G(x) reaches +-eps
        attack = train_advgan(classifier, x, y, key(3), eps=EPS, num_steps=0,
                              generator=TinyGenerator(gain=100.0))
    elif name == "gap":  # no saturation: GAP's normalization alone puts it on the boundary
        attack = train_gap(classifier, x, y, key(3), eps=EPS, num_steps=0,
                           generator=TinyGenerator())
    else:  # 4 steps of eps/4 with a saturated direction reach eps
        module, variables = unet
        attack = L2LDAAttack(module, saturated(variables), EPS, **L2L)
    xb = with_bound_pixels(x)
    x_adv = attack(classifier, xb, y, key(4))
    delta = np.abs(np.asarray(x_adv - xb))
    eps = EPS * (BOUNDS[1] - BOUNDS[0])
    assert delta.max() <= eps + 1e-6
    assert delta[:, 1:-1].max() >= eps * (1 - 1e-3)  # the ball's bound is reached
    # The range's clip is active: a bound pixel pushed outwards stays on the bound.
    assert float(x_adv.min()) == BOUNDS[0] or float(x_adv.max()) == BOUNDS[1]
    if name == "gap":  # every example's perturbation has L-inf norm eps exactly
        per_example = np.abs(np.asarray(attack(classifier, x, y, None) - x)).max(axis=(1, 2, 3))
        np.testing.assert_allclose(per_example, eps, rtol=1e-5)


def test_advgan_losses_by_hand():
    delta = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 1)), jnp.float32)
    delta = delta.at[2].multiply(0.05)  # inside the bound: no hinge
    norms = np.sqrt((np.asarray(delta) ** 2).reshape(3, -1).sum(1))
    assert norms[2] < 0.5 < norms[:2].min()
    np.testing.assert_allclose(hinge_loss(delta, 0.5), [norms[0] - 0.5, norms[1] - 0.5, 0.0],
                               rtol=1e-5)
    logits, labels = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]), jnp.array([0, 0])
    # max(Z_y - max_{i != y} Z_i, -kappa): 2 - 1; 0 - 3 floored at -kappa
    np.testing.assert_allclose(adversarial_loss(logits, labels), [1.0, 0.0])
    np.testing.assert_allclose(adversarial_loss(logits, labels, confidence=1.0), [1.0, -1.0])


@pytest.mark.parametrize("name", ["advgan", "gap"])
def test_a_few_training_steps_raise_the_classifiers_loss(setup, name):
    classifier, x, y = setup

    def train(num_steps):
        rng = key(5)
        if name == "advgan":  # c = 10: the hinge (tested by hand) stays inactive
            return train_advgan(classifier, x, y, rng, eps=EPS, num_steps=num_steps,
                                generator=TinyGenerator(), bound=10.0, batch_size=16,
                                optimizer=optax.adam(3e-2))
        return train_gap(classifier, x, y, rng, eps=EPS, num_steps=num_steps,
                         generator=TinyGenerator(), batch_size=16, optimizer=optax.adam(3e-2))

    before = ce(classifier, train(0)(classifier, x, y, None), y)
    after = ce(classifier, train(4)(classifier, x, y, None), y)
    assert after > 1.1 * before, (before, after)  # a sign error would lower it


# One z's trajectory in inference mode, as the attack runs it: compiled once for the file.
TRAJECTORIES = jax.jit(L2LDAAttack.trajectories)


def test_l2l_da_keeps_per_example_the_worst_of_all_samples_and_steps(setup, unet):
    classifier, x, y = setup
    module, variables = unet
    attack = L2LDAAttack(module, variables, EPS, **L2L)
    rng = key(6)
    x_adv = attack(classifier, x, y, rng)
    # Every candidate: each z draw of the attack's key, each of the T steps.
    cands, losses = map(jnp.stack, zip(*[TRAJECTORIES(attack, classifier, x, y, z)
                                         for z in attack.draws(rng, x)], strict=True))
    assert cands.shape == (3, 4, *x.shape)
    cand_fooled = fooled(jax.vmap(jax.vmap(classifier.logits))(cands), y, False)
    loss = cross_entropy(classifier.logits(x_adv), y)
    is_fooled = fooled(classifier.logits(x_adv), y, False)
    assert bool((is_fooled >= cand_fooled).all())  # fools whenever any candidate does
    # ...and among candidates as fooled as it, none has a higher loss
    same = is_fooled == cand_fooled
    assert bool(jnp.where(same, loss >= losses - 1e-5, True).all())
    assert bool((loss > losses.min(axis=(0, 1)) + 1e-4).any())  # the choice matters
    # x_adv is one of the candidates, example by example
    gap = jnp.abs(cands - x_adv).reshape(12, N, -1).max(-1).min(0)
    assert float(gap.max()) < 1e-6


def test_l2l_da_finetuning_raises_l_cls(setup, unet):
    classifier, x, y = setup
    module, variables = unet
    untrained = L2LDAAttack(module, variables, EPS, **L2L)
    attack = finetune_l2l_da(classifier, module, variables, x, y, key(7), eps=EPS,
                             num_steps=4, batch_size=16, optimizer=optax.adam(1e-2), **L2L)
    assert (attack.steps, attack.samples, attack.eps) == (4, 3, EPS)
    z = jax.random.normal(key(8), (N, 2))
    # Eq. 6 (the mean CE over the T steps) of the generator as the attack runs it
    before, after = (float(TRAJECTORIES(a, classifier, x, y, z)[1].mean())
                     for a in (untrained, attack))
    assert after > before + 0.05, (before, after)
