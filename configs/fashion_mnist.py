"""Fashion-MNIST with Wang & Yu's MNIST setting (D1, [-1, 1]) at eps 0.1, the usual
Fashion-MNIST radius (no paper here reports it; these runs are our baseline).

Arg: 'standard', 'pgd_at', 'advnet' or 'eat', optionally ',cpu' and an advnet gradreg
mode, as in configs/mnist.py (here pgd_at's ',cpu' recipe is 2 epochs).
Arg 'table1' (with --mode table): Wang & Yu's Table 1 layout on the ',cpu' recipes (rows
standard (A), PGD-AT (B), advnet (C), EAT; surrogates A', B', C', seed 1).
"""

from robustgan import recipes


def get_config(arg=None):
    return recipes.get_config("fashion_mnist", arg, __file__)
