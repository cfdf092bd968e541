"""CIFAR-100 (Wang & Yu appendix): CIFAR-10's setting with 100 classes, lr 0.1 then
0.01, weight decay 1e-5. CIFAR-100 is read through TFDS; where it is not prepared, the
run stops with a message naming the alternatives."""

from robustgan import recipes


def get_config(arg=None):
    return recipes.get_config("cifar100", arg, __file__)
