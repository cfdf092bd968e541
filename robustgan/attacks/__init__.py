"""Attacks: pure, jitted functions `attack(classifier, x, y, rng, *, eps, ...) -> x_adv`,
and the BPDA/EOT wrappers that adapt a Classifier for them.

`ATTACKS` names every attack for configs; `make_attack(name, **settings)` binds settings.
`GENERATOR_ATTACKS` names the attacks that are generators trained against the classifier
they attack before they run: `train(classifier, x, y, rng, *, eps, num_steps, ...)` on
training images returns the attack.
"""

import functools
import inspect

from robustgan.attacks.adaptive import bpda, eot, has_front_end, with_front_end
from robustgan.attacks.advgan import train_advgan
from robustgan.attacks.autopgd import apgd
from robustgan.attacks.gap import train_gap
from robustgan.attacks.gradient import fgsm, fgsm_predicted, ll_fgs, pgd, rand_fgsm
from robustgan.attacks.l2l_da_attack import finetune_l2l_da
from robustgan.attacks.minimal import cw_l2, deepfool, deepfool_perturbation
from robustgan.attacks.sampling import random_search

ATTACKS = {
    "fgsm": fgsm,
    "fgsm_predicted": fgsm_predicted,
    "rand_fgsm": rand_fgsm,
    "ll_fgs": ll_fgs,
    "pgd": pgd,
    "cw_l2": cw_l2,
    "deepfool": deepfool,
    "apgd_ce": functools.partial(apgd, loss="ce"),
    "apgd_dlr": functools.partial(apgd, loss="dlr"),
    "random_search": random_search,
}

# AdvGAN, GAP and the L2L-DA attack (a trained L2L-DA generator fine-tuned: its `module` and
# `variables` come from the run it starts from), Jang et al. Table 2.
GENERATOR_ATTACKS = {
    "advgan": train_advgan,
    "gap": train_gap,
    "l2l_da_attack": finetune_l2l_da,
}


def settings(name: str) -> dict[str, inspect.Parameter]:
    """The keyword settings of `ATTACKS[name]` (what follows classifier, x, y, rng), those
    a registry partial binds left out."""
    fn = ATTACKS[name]
    bound = fn.keywords if isinstance(fn, functools.partial) else {}
    target = fn.func if isinstance(fn, functools.partial) else fn
    return {k: p for k, p in inspect.signature(target).parameters.items()
            if k not in ("classifier", "x", "y", "rng", *bound)}


def make_attack(name: str, **settings):
    """`ATTACKS[name]` with its keyword settings bound: (classifier, x, y, rng) -> x_adv."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return functools.partial(ATTACKS[name], **settings)


__all__ = [
    "ATTACKS",
    "GENERATOR_ATTACKS",
    "apgd",
    "bpda",
    "cw_l2",
    "deepfool",
    "deepfool_perturbation",
    "eot",
    "fgsm",
    "fgsm_predicted",
    "finetune_l2l_da",
    "has_front_end",
    "ll_fgs",
    "make_attack",
    "pgd",
    "rand_fgsm",
    "random_search",
    "settings",
    "train_advgan",
    "train_gap",
    "with_front_end",
]
