"""MNIST. Wang & Yu's setting (robustgan/recipes/wang_yu.py): D1, inputs in [-1, 1],
eps 0.3.

Arg: 'standard', 'pgd_at', 'advnet' or 'eat', optionally ',cpu'; advnet also takes the
gradreg mode as an option (',none', ',exact', ',authors_code'; default finite_difference,
Eq. 9). The default is the paper's schedule (SGD 0.01 momentum 0.9, wd 1e-4, batch 64,
200k steps, lr / 10 at 100k; advnet: 5 G updates per D update, wd 1e-5: GPU work).
',cpu' is the recipe that fits a CPU budget: Adam 1e-3, cosine decay, D1 without BN;
standard and eat 2 epochs, pgd_at 3 epochs with eps ramped over the first, advnet 1.1
epochs (D on Adam 2e-3) with a D update every iteration and the adversarial image not
clipped (the authors' code; wang_yu.apply_advnet_cpu_recipe).
eat needs --config.eat.sources (run directories of trained standard models).

Tables and studies (--mode table / --mode study):
'table1': Wang & Yu's Table 1 layout on the ',cpu' recipe; rows standard (A), PGD-AT (B),
advnet (C) and EAT (on A's examples), surrogates A', B', C' (same method, seed 1).
'table5': Wang & Yu's Table 5 on MNIST: generators G1 (k=8, 64), G2 and G3 trained against
A, applied to A, A', B', C' (the paper's Table 5 is on CIFAR-10; its numbers are not
comparable and are not printed).
'gradreg_study': advnet on the ',cpu' recipe trained with each gradreg mode, with A', B',
C' as surrogates (shares its runs with 'table1' when given the same --workdir), plus the
agreement and cost measurements (robustgan/studies/gradreg.py).
"""

from robustgan import recipes


def get_config(arg=None):
    return recipes.get_config("mnist", arg, __file__)
