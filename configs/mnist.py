"""MNIST (Wang & Yu section 4.1): D1, inputs in [-1, 1], eps 0.3.

Arg: 'standard', 'pgd_at', 'advnet' or 'eat', optionally ',cpu'; advnet also takes the
gradreg mode as an option (',none', ',exact', ',authors_code'; default finite_difference,
Eq. 9). The default is the paper's schedule (SGD 0.01 momentum 0.9, wd 1e-4, batch 64,
200k steps, lr / 10 at 100k; advnet: 5 G updates per D update, wd 1e-5: GPU work).
',cpu' is the recipe that fits a CPU budget (config.wang_yu_mnist_config): Adam 1e-3,
cosine decay, D1 without BN; standard and eat 2 epochs, pgd_at 3 epochs with eps ramped
over the first, advnet 1.1 epochs (D on Adam 2e-3) with a D update every iteration and the
adversarial image not clipped (the authors' code; config.apply_advnet_cpu_recipe).
eat needs --config.eat.sources (run directories of trained standard models).

Arg 'table1' (with --mode table): Wang & Yu's Table 1 layout on the ',cpu' recipe; rows
standard (A), PGD-AT (B), advnet (C) and EAT (on A's examples), surrogates A', B', C'
(same method, seed 1).
Arg 'table5' (with --mode table): Wang & Yu's Table 5 on MNIST: generators G1 (k=8, 64), G2
and G3 trained against A for GENERATOR_ATTACK_STEPS minibatches, applied to A, A', B', C'
(the paper's Table 5 is on CIFAR-10; its numbers are not comparable and are not printed).
Arg 'gradreg_study' (with --mode table): advnet on the ',cpu' recipe trained with each
gradreg mode, with A', B', C' as surrogates (shares its runs with 'table1' when given the
same --workdir), plus the agreement and cost measurements (robustgan/gradreg_study.py).
"""

from robustgan import config as configlib

# Wang & Yu Table 1 (%): No noise, FGS, PGD, FGS(A'), PGD(A'), FGS(B'), PGD(B'),
# FGS(C'), PGD(C'); the EAT row is their Table 4's "ensemble (MNIST)".
PAPER_TABLE1 = {
    "standard (A)": (99.40, 23.70, 0.00, 39.49, 3.41, 90.56, 86.10, 94.21, 91.36),
    "PGD-AT (B)": (98.70, 95.46, 92.92, 95.78, 96.18, 95.58, 95.01, 97.05, 96.48),
    "advnet (C)": (99.32, 94.66, 87.09, 95.75, 96.19, 96.15, 95.24, 96.96, 95.78),
    "EAT": (98.65, 2.52, 0.00, 90.91, 93.91, 90.94, 88.12, 90.79, 89.61),
}
GENERATOR_ATTACK_STEPS = 500
SURROGATES = configlib.TABLE1_SURROGATES


def get_config(arg=None):
    if arg == "table1":
        return configlib.wang_yu_table1_config(
            "Wang & Yu Table 1 layout: MNIST, eps 0.3", __file__, paper=PAPER_TABLE1)
    if arg == "table5":
        return configlib.generator_attack_config(
            "Wang & Yu Table 5 layout: generator attacks on MNIST, eps 0.3", __file__,
            target=("A", "standard,cpu", 0), others=SURROGATES,
            generators=[("autoencoder (8 filters)", "g1", 8),
                        ("autoencoder (64 filters)", "g1", 64),
                        ("random Gaussian", "g2", 0), ("label", "g3", 0)],
            steps=GENERATOR_ATTACK_STEPS,
        )
    if arg == "gradreg_study":
        return configlib.gradreg_study_config(
            "MNIST advnet: gradient regularization modes", __file__,
            rows=[("finite_difference", "advnet,cpu", 0), ("exact", "advnet,cpu,exact", 0),
                  ("none", "advnet,cpu,none", 0)],
            surrogates=SURROGATES, agreement_row="finite_difference",
        )
    return configlib.wang_yu_mnist_config(arg, name="mnist", eps=0.3, pgd_at_epochs=3)
