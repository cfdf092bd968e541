"""SVHN (Wang & Yu section 4.2): D2 (ResNet-20 layout), [-1, 1], eps 0.05; train set
plus 80k images of 'extra'; SGD 0.01 momentum 0.9, wd 1e-4, batch 64, 200k steps.
SVHN is read through TFDS (`svhn_cropped`); where it is not prepared, the run stops with
a message naming the alternatives."""

from robustgan import recipes


def get_config(arg=None):
    return recipes.get_config("svhn", arg, __file__)
