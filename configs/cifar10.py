"""CIFAR-10 (Wang & Yu section 4.3): D2, [-1, 1], eps 8/256, pad-crop 4 + flip;
SGD lr 0.1 momentum 0.9, / 10 after 100k of 200k steps, batch 64; weight decay 1e-4
for standard training, 1e-5 for PGD training. --config.model.kwargs.width=10 is the
wide variant of their appendix."""

from robustgan import recipes


def get_config(arg=None):
    return recipes.get_config("cifar10", arg, __file__)
