"""Jang, Zhao, Hong & Lee, "Adversarial Defense via Learning to Generate Diverse Attacks"
(ICCV 2019): the settings of `l2l_da` and its one-shot baseline `l2l` (Sec. 5.1 and the
authors' code), and the CPU layouts of Tables 1-3 and Figure 2.

`configs/<dataset>.py:l2l_da` / `:l2l`: SGD momentum 0.9 and weight decay 1e-5 for both
networks, batch 100, 100k iterations; eps 0.3 (MNIST-like sets, LeNet-5) or 8/255
(others, ResNet-20: the zoo's `d2`, the authors' CIFAR network); lambda 0.02
(MNIST) or 0.5 (CIFAR-10) in the code's scale (methods/l2l_da.py). The paper's CIFAR
classifier is fine-tuned from a `standard` run: set --config.init_from.run. Evaluation as
Table 2: FGSM, PGD-10, PGD-100 and the C&W margin loss under the L-inf bound, with APGD
beside them. `configs/<dataset>.py:standard,l2l_da` / `:pgd_at,l2l_da` are Table 2's Plain
and PGD10 classifiers in the same setting (PGD-10, step eps/4, random start).

The CPU layouts (MNIST-like sets; `tables`): every row but Plain starts from the Plain
row's classifier (Sec. 5.1: weights pre-trained on the original data; the authors' code
trains CLEAN_START_STEPS clean steps first) and then takes the same CPU_STEPS classifier
updates; the tables are evaluated on the first CPU_EXAMPLES test images. AdvGAN, GAP and
the L2L-DA attack (Table 2's generator columns, attacks/advgan.py, gap.py,
l2l_da_attack.py) are trained against each attacked classifier before they run, for
CPU_*_STEPS steps; 'Min' is the per-example worst case over every column. The layouts
write their outputs under their own names, so they share one workdir and its runs.
"""

from __future__ import annotations

import ml_collections

from robustgan import config as configlib
from robustgan import optim
from robustgan.errors import ConfigError
from robustgan.methods.l2l_da import ABLATIONS

METHODS = ("l2l_da", "l2l")
# Table 2's other defenses, trained in this paper's setting (`<method>,l2l_da`).
BASELINES = ("standard", "pgd_at")
MNIST_LIKE = ("mnist", "fashion_mnist")
ITERATIONS = 100_000
MNIST_EPS = 0.3  # MNIST-like sets (CIFAR-10: 8/255)
CW1000 = "cw1000=pgd(steps=1000, loss=\"margin\")"
TABLE2_ATTACKS = ("fgsm", "pgd10=pgd(steps=10)", "pgd100=pgd(steps=100)",
                  "cw100=pgd(steps=100, loss=\"margin\")", "apgd_ce", "apgd_dlr")
# Table 1's columns: FGSM, PGD100 and C&W1000 (the C&W margin loss under the L-inf bound).
TABLE1_ATTACKS = ("fgsm", "pgd100=pgd(steps=100)", CW1000)
# The CPU layouts. l2l_da's train step (T = 10, the width-64 U-Net, batch 100, two z
# samples) took 50 s on this 2-core CPU with the U-Net's 'columns' transposed
# convolutions (ROBUSTGAN_CPU_DEVICES=1, load average 5 from two other jobs; 158 s before
# them; the generator update alone 20.8 s at load 1-2, benchmarks/RESULTS.md): CPU_STEPS
# classifier updates keep a row within about an hour on an idle machine (an estimate:
# about 25 s a step). The paper: 100k iterations.
CPU_STEPS = 100
# Table 2's claim tested at equal wall time too: an l2l_da train step against a pgd_at
# (PGD-10) one, both LeNet-5 at batch 100 on this CPU (one device, load average 5 from
# two other jobs, commit 4c0c12c): about 50 s against 0.53 s. The row 'PGD10 (equal
# time)' takes this many times CPU_STEPS updates. MNIST at commit 21e5c7f, the two trained
# side by side on one core each: L2L-DA's 100 updates in 69.5 minutes, PGD10's 9,500 in
# 61.9 (89% of L2L-DA's time; docs/l2l_da.md).
L2L_DA_OVER_PGD10_STEP_TIME = 95
EQUAL_TIME_ROW = "PGD10 (equal time)"
# And on L2L-DA's classifier loss: Algorithm 1 steps on CE(x) + CE(x_adv), PGD10 (Madry
# et al.) on CE(x_adv) alone. 'PGD10 (half clean)' trains on batches half clean, half
# PGD-10 (train_attack.fraction 0.5), so the two differ in the attack only.
HALF_CLEAN = {"train_attack.fraction": 0.5}
HALF_CLEAN_ROW = "PGD10 (half clean)"
HALF_CLEAN_EQUAL_TIME_ROW = "PGD10 (half clean, equal time)"
# Table 2's generator columns ("each fine-tuned to its corresponding classifier"), trained
# on the training split against each row's classifier (evaluate/columns.py): AdvGAN and
# GAP from scratch, the L2L-DA attack from the L2L-DA (full) row's generator (the authors'
# code fine-tunes 48k steps, then 10 z samples x 10 steps). Their training steps on CPU.
CPU_ADVGAN_STEPS = 500
CPU_GAP_STEPS = 200
CPU_L2L_DA_ATTACK_STEPS = 10
L2L_DA_ATTACK_SAMPLES = 10
CLEAN_START_STEPS = 1_000  # the Plain row, every other row's start (the authors' warm-up)
CPU_EXAMPLES = 1_000
# Figure 2's statistics took 22 s per 20 images on one classifier (the width-64 U-Net, 10 z
# samples x 10 steps; the same load): 500 images, about 20 minutes for the two classifiers.
FIGURE2_EXAMPLES = 500
START_ROW = "Plain"
# CIFAR-10 at this CPU's scale (the JPEG set; `tables`): ResNet-20 after CIFAR_CLEAN_START_STEPS
# clean steps, then CIFAR_CPU_STEPS updates per row, the first CIFAR_CPU_EXAMPLES test
# images. The paper fine-tunes a trained ResNet-20 for 100k iterations.
CIFAR_CLEAN_START_STEPS = 1_000
CIFAR_CPU_STEPS = 30
CIFAR_CPU_EXAMPLES = 200
# Its equal-time ratio: an l2l_da train step (ResNet-20, the width-64 U-Net at 32x32)
# against a pgd_at one on half-clean batches, one core each, the other core busy
# (2026-12-01, commit da5ab8a): 2.57 against 80.4 images/s, 31.3x.
CIFAR_L2L_DA_OVER_PGD10_STEP_TIME = 31

# The paper's MNIST numbers (%), in our columns' order (table2_attacks): Natural, FGSM,
# PGD10, PGD100, C&W100, C&W1000, AdvGAN, GAP, L2L-DA (its Min is left out: our APGD
# columns come before ours).
PAPER_TABLE2_MNIST = {
    "Plain": (99.14, 0.90, 0.00, 0.00, 63.14, 0.85, 0.47, 3.94, 0.00),
    "PGD10": (98.52, 96.14, 92.21, 90.22, 96.66, 88.92, 98.30, 96.56, 89.49),
    "PGD100": (98.29, 94.07, 90.15, 88.93, 96.48, 89.76, 95.00, 96.79, 89.95),
    "C&W100": (99.09, 17.54, 0.25, 0.25, 69.99, 0.05, 4.90, 3.74, 34.51),
    "L2L*": (98.95, 36.59, 0.18, 0.02, 81.63, 2.46, 10.87, 2.01, 3.89),
    "L2L-DA (full)": (98.47, 97.87, 95.70, 95.15, 97.26, 95.26, 95.72, 96.92, 94.61),
}
PAPER_TABLE2_CIFAR10 = {
    "Plain": (91.73, 17.63, 0.00, 0.00, 0.00, 0.00, 24.13, 17.42, 0.04),
    "PGD10": (87.43, 72.00, 41.77, 37.37, 35.12, 34.81, 69.96, 67.38, 0.32),
    "PGD100": (81.11, 44.96, 37.60, 35.80, 36.25, 35.85, 77.79, 77.97, 36.95),
    "C&W100": (88.36, 25.76, 9.44, 6.82, 8.27, 6.97, 83.11, 72.94, 8.88),
    "L2L*": (88.96, 59.48, 0.00, 0.00, 0.00, 0.00, 30.13, 19.36, 0.00),
    "L2L-DA (full)": (78.91, 45.77, 39.69, 38.39, 37.75, 37.40, 75.31, 76.35, 39.20),
}
PAPER_TABLE2 = {"mnist": PAPER_TABLE2_MNIST, "cifar10": PAPER_TABLE2_CIFAR10}
# Table 1 (a) and (b): Natural, FGSM, PGD100, C&W1000, Min (the paper's Min is its lowest
# column; ours the per-example worst case, at most that). (b)'s first row (delta O, y O)
# is (a)'s R O, D O.
PAPER_TABLE1_MNIST = {
    "L2L*": (98.95, 36.59, 0.02, 2.46, 0.02),
    "L2L-DA (R X, D X)": (98.81, 97.02, 87.86, 86.12, 86.12),
    "L2L-DA (R X, D O)": (98.94, 97.46, 91.40, 90.45, 90.45),
    "L2L-DA (R O, D X)": (98.51, 96.91, 93.97, 94.68, 93.97),
    "L2L-DA (R O, D O)": (98.47, 97.87, 95.15, 95.26, 95.15),
    "L2L-DA (delta O, y X)": (98.51, 96.75, 93.44, 94.02, 93.44),
    "L2L-DA (delta X, y O)": (98.50, 95.73, 92.46, 93.59, 92.46),
    "L2L-DA (delta X, y X)": (98.40, 95.58, 92.36, 93.24, 92.36),
}
# FGSM adversarial training as pgd_at: one step of the whole eps from x (Eq. 2).
FGSM_TRAINING = {"train_attack.steps": 1, "train_attack.step_size": MNIST_EPS,
                 "train_attack.random_start": False}
# Table 2's PGD100 and C&W100 defenses: pgd_at with 100 steps of eps/4, the C&W margin loss.
PGD100_TRAINING = {"train_attack.steps": 100}
CW100_TRAINING = {"train_attack.steps": 100, "train_attack.loss": "margin"}
FULL_ROW = "L2L-DA (full)"


def generator_columns(*, advgan_steps: int = CPU_ADVGAN_STEPS, gap_steps: int = CPU_GAP_STEPS,
                      l2l_da_steps: int = CPU_L2L_DA_ATTACK_STEPS,
                      samples: int = L2L_DA_ATTACK_SAMPLES) -> dict[str, str]:
    """Table 2's AdvGAN, GAP and L2L-DA columns (the last starts from FULL_ROW's generator)."""
    return {"advgan": f"advgan=advgan(num_steps={advgan_steps})",
            "gap": f"gap=gap(num_steps={gap_steps})",
            "l2l_da": f"l2l_da=l2l_da_attack(start={FULL_ROW!r}, num_steps={l2l_da_steps}, "
                      f"samples={samples})"}


def table2_attacks(**generator_steps) -> tuple[str, ...]:
    """Table 2's columns in the paper's order (FGSM, PGD10, PGD100, C&W100, C&W1000,
    AdvGAN, GAP, L2L-DA), then APGD-CE and APGD-DLR."""
    return (*TABLE2_ATTACKS[:4], CW1000, *generator_columns(**generator_steps).values(),
            *TABLE2_ATTACKS[4:])


def config(dataset: str, arg) -> ml_collections.ConfigDict:
    """The paper's setting of `arg` ('l2l_da', 'l2l', or a baseline 'standard,l2l_da' or
    'pgd_at,l2l_da') on `dataset`, locked."""
    method, options = configlib.parse_arg(arg, ("l2l_da",))
    if method not in METHODS + BASELINES:
        raise ConfigError(f"Jang et al.'s setting covers {METHODS + BASELINES}, not {method!r}")
    mnist_like = dataset in MNIST_LIKE
    c = configlib.method_config(method, options, dataset)  # [0, 1] data
    c.model.name = "lenet5" if mnist_like else "d2"
    c.batch_size = 100
    c.num_train_steps = ITERATIONS
    c.optimizer = optim.optimizer_config(name="sgd", learning_rate=0.01, momentum=0.9,
                                         weight_decay=1e-5, schedule="constant")
    eps = MNIST_EPS if mnist_like else 8 / 255
    c.eval.eps = c.train_attack.eps = eps
    if method in METHODS:
        c[method].eps = eps
    c.train_attack.steps, c.train_attack.step_size = 10, eps / 4  # the PGD10 defense
    if method == "l2l_da":
        c.l2l_da.diversity_weight = 0.02 if mnist_like else 0.5
    c.eval.pgd_steps, c.eval.pgd_step_size = 10, eps / 4
    c.eval.attacks = TABLE2_ATTACKS
    c.checkpoint_every = 1_000  # an equal-time CPU row (9,500 steps) resumes within minutes
    c.log_every = 10  # a CPU row of 100 L2L-DA updates (about an hour) shows its progress
    c.lock()
    return c


def start_row(clean_steps: int = CLEAN_START_STEPS) -> tuple:
    """The Plain row: LeNet-5 on clean images, the start of every other row."""
    return (START_ROW, "standard,l2l_da", 0, {"num_train_steps": clean_steps})


def cpu_run(name: str, arg: str, seed: int = 0, *, steps: int = CPU_STEPS,
            start: str = START_ROW, **overrides) -> tuple:
    """A table run of `steps` classifier updates from the classifier of run `start`."""
    return (name, arg, seed, {"num_train_steps": steps, "init_from.run": start, **overrides})


def table2_rows(*, steps: int = CPU_STEPS, clean_steps: int = CLEAN_START_STEPS,
                time_ratio: int = L2L_DA_OVER_PGD10_STEP_TIME) -> list:
    """Table 2's rows: Plain, the PGD10, PGD100 and C&W100 defenses, L2L* and L2L-DA
    (full), the fair comparison's PGD10 on half-clean batches (HALF_CLEAN_ROW), and
    (time_ratio > 0) the PGD10 rows given L2L-DA's wall-clock budget, time_ratio times its
    updates (EQUAL_TIME_ROW, HALF_CLEAN_EQUAL_TIME_ROW)."""
    equal_time_steps = steps * time_ratio
    half_clean_row = cpu_run(HALF_CLEAN_ROW, "pgd_at,l2l_da", steps=steps, **HALF_CLEAN)
    fair_rows = [half_clean_row] if not time_ratio else [
        cpu_run(EQUAL_TIME_ROW, "pgd_at,l2l_da", steps=equal_time_steps), half_clean_row,
        cpu_run(HALF_CLEAN_EQUAL_TIME_ROW, "pgd_at,l2l_da", steps=equal_time_steps,
                **HALF_CLEAN)]
    return [start_row(clean_steps), cpu_run("PGD10", "pgd_at,l2l_da", steps=steps),
            *fair_rows,
            cpu_run("PGD100", "pgd_at,l2l_da", steps=steps, **PGD100_TRAINING),
            cpu_run("C&W100", "pgd_at,l2l_da", steps=steps, **CW100_TRAINING),
            cpu_run("L2L*", "l2l", steps=steps), cpu_run(FULL_ROW, "l2l_da", steps=steps)]


def cpu_table(title: str, config_file: str, *, rows, surrogates=(), attacks, paper,
              examples: int, output: str) -> ml_collections.ConfigDict:
    """A table layout on the first `examples` test images, written as `output`.{md,json,png}
    (the layouts share their runs in one workdir)."""
    c = configlib.table_config(title, config_file, rows=rows, surrogates=surrogates,
                               attacks=attacks, paper=paper)
    with c.unlocked():
        c.table.eval_num_examples = examples
        c.table.output = output
    return c


def eps_label(dataset: str) -> str:
    """The paper's eps on `dataset`, as the layouts' titles print it."""
    return "0.3" if dataset in MNIST_LIKE else "8/255"


def table2_config(dataset: str, config_file: str, *, steps: int = CPU_STEPS,
                  clean_steps: int = CLEAN_START_STEPS, examples: int = CPU_EXAMPLES,
                  time_ratio: int = L2L_DA_OVER_PGD10_STEP_TIME,
                  **generator_steps) -> ml_collections.ConfigDict:
    """Table 2's white-box layout: table2_rows (PGD10 at equal classifier updates and, if
    time_ratio, at equal wall time), table2_attacks (generator_steps: generator_columns')
    and Min."""
    return cpu_table(
        f"Jang et al. Table 2 layout: {dataset}, white box, eps {eps_label(dataset)} "
        f"({steps} classifier updates per row after {clean_steps} clean ones)", config_file,
        rows=table2_rows(steps=steps, clean_steps=clean_steps, time_ratio=time_ratio),
        attacks=table2_attacks(**generator_steps), paper=PAPER_TABLE2.get(dataset),
        examples=examples, output="l2l_da_table2")


def claim_config(dataset: str, config_file: str, *, steps: int, clean_steps: int,
                 examples: int, time_ratio: int) -> ml_collections.ConfigDict:
    """Table 2's central claim alone: Plain, PGD10 (half clean) at L2L-DA's updates and
    (time_ratio times as many) at its wall time, and L2L-DA (full), under Table 2's
    white-box columns without C&W1000 and the generator columns (their cost at CPU
    scale), APGD-CE and APGD-DLR beside them."""
    claim = (START_ROW, HALF_CLEAN_ROW, HALF_CLEAN_EQUAL_TIME_ROW, FULL_ROW)
    rows = [row for row in table2_rows(steps=steps, clean_steps=clean_steps,
                                       time_ratio=time_ratio) if row[0] in claim]
    paper = {name: values[:5] for name, values in PAPER_TABLE2.get(dataset, {}).items()}
    return cpu_table(
        f"Jang et al. Table 2's claim: {dataset}, white box, eps {eps_label(dataset)} "
        f"({steps} classifier updates per row after {clean_steps} clean ones)", config_file,
        rows=rows, attacks=TABLE2_ATTACKS, paper=paper, examples=examples,
        output="l2l_da_claim")


def ablation_rows(*, steps: int = CPU_STEPS, clean_steps: int = CLEAN_START_STEPS) -> list:
    """Table 1's rows: L2L*, then l2l_da with each of ABLATIONS' overrides."""
    return [start_row(clean_steps), cpu_run("L2L*", "l2l", steps=steps)] + [
        cpu_run(f"L2L-DA ({label})", "l2l_da", steps=steps,
                **{f"l2l_da.{key}": value for key, value in overrides.items()})
        for label, overrides in ABLATIONS.items()]


def ablation_config(dataset: str, config_file: str, *, steps: int = CPU_STEPS,
                    clean_steps: int = CLEAN_START_STEPS,
                    examples: int = CPU_EXAMPLES) -> ml_collections.ConfigDict:
    """Table 1 (a) and (b): recursion and diversity on and off, delta and y inputs on and
    off; Table 1's columns (TABLE1_ATTACKS) and Min."""
    return cpu_table(
        f"Jang et al. Table 1 layout: {dataset}, ablations, eps 0.3 ({steps} classifier "
        f"updates per row after {clean_steps} clean ones)", config_file,
        rows=ablation_rows(steps=steps, clean_steps=clean_steps), attacks=TABLE1_ATTACKS,
        paper=PAPER_TABLE1_MNIST if dataset == "mnist" else None, examples=examples,
        output="l2l_da_table1")


def table3_config(dataset: str, config_file: str, *, steps: int = CPU_STEPS,
                  clean_steps: int = CLEAN_START_STEPS, examples: int = CPU_EXAMPLES,
                  l2l_da_steps: int = CPU_L2L_DA_ATTACK_STEPS,
                  samples: int = L2L_DA_ATTACK_SAMPLES) -> ml_collections.ConfigDict:
    """Table 3's black-box layout: Table 2's rows at equal updates attacked by the L2L-DA
    attack, PGD10 and PGD100 crafted on the surrogates (A) Plain, (B) FGSM and (C) PGD10
    LeNet-5, seed 1, B and C started from A on half-clean batches (PGD10 on adversarial
    batches alone collapses to a constant classifier here, docs/l2l_da.md; a constant
    surrogate has no gradient to transfer), the L2L-DA attack being FULL_ROW's generator
    fine-tuned against each surrogate. The paper's numbers are not printed: its
    columns (no clean one, attack-major) do not line up with ours, and its Min is over
    the transfer columns only (ours: every column, white box included)."""
    surrogates = [("A", "standard,l2l_da", 1, {"num_train_steps": clean_steps}),
                  cpu_run("B", "pgd_at,l2l_da", 1, steps=steps, start="A", **FGSM_TRAINING,
                          **HALF_CLEAN),
                  cpu_run("C", "pgd_at,l2l_da", 1, steps=steps, start="A", **HALF_CLEAN)]
    l2l_da = generator_columns(l2l_da_steps=l2l_da_steps, samples=samples)["l2l_da"]
    return cpu_table(
        f"Jang et al. Table 3 layout: {dataset}, black box by transfer, eps 0.3 ({steps} "
        f"classifier updates per row after {clean_steps} clean ones)", config_file,
        rows=table2_rows(steps=steps, clean_steps=clean_steps, time_ratio=0),
        surrogates=surrogates, attacks=(l2l_da, *TABLE2_ATTACKS[1:3]), paper=None,
        examples=examples, output="l2l_da_table3")


def figure2_config(dataset: str, config_file: str, *, steps: int = CPU_STEPS,
                   clean_steps: int = CLEAN_START_STEPS, examples: int = FIGURE2_EXAMPLES,
                   recursion_steps: int = 10, samples: int = 10) -> ml_collections.ConfigDict:
    """Figure 2 (robustgan/studies/l2l_da_recursion.py; the paper's is on CIFAR-10): the
    loss of the PGD-trained (HALF_CLEAN_ROW: Table 2's PGD10 collapses to a constant
    classifier at this scale) and L2L-DA (full) classifiers along `recursion_steps` steps
    of PGD, of L2L*'s generator and of L2L-DA (full)'s (not fine-tuned), max and std over
    `samples` attacks per image; Table 2's runs."""
    c = configlib.study_config(
        "l2l_da_recursion", f"Jang et al. Figure 2 layout: {dataset}, eps 0.3 ({steps} "
        f"classifier updates per row after {clean_steps} clean ones)", config_file,
        rows=[row for row in table2_rows(steps=steps, clean_steps=clean_steps, time_ratio=0)
              if row[0] in (START_ROW, HALF_CLEAN_ROW, "L2L*", FULL_ROW)], surrogates=(),
        settings=dict(classifiers=(HALF_CLEAN_ROW, FULL_ROW), l2l_row="L2L*",
                      l2l_da_row=FULL_ROW,
                      steps=recursion_steps, samples=samples,
                      step_fraction=0.25, pgd_random_start=True, batch_size=100))
    with c.unlocked():
        c.table.eval_num_examples = examples
    return c


def tables(dataset: str, config_file: str) -> dict:
    """{arg: () -> table or study config} that `configs/<dataset>.py:<arg>` offers."""
    if dataset == "cifar10":
        scale = dict(steps=CIFAR_CPU_STEPS, clean_steps=CIFAR_CLEAN_START_STEPS,
                     examples=CIFAR_CPU_EXAMPLES, time_ratio=CIFAR_L2L_DA_OVER_PGD10_STEP_TIME)
        return {"l2l_da_table2_cpu": lambda: table2_config(dataset, config_file, **scale),
                "l2l_da_claim_cpu": lambda: claim_config(dataset, config_file, **scale)}
    if dataset not in MNIST_LIKE:
        return {}
    return {"l2l_da_table2_cpu": lambda: table2_config(dataset, config_file),
            "l2l_da_ablation_cpu": lambda: ablation_config(dataset, config_file),
            "l2l_da_table3_cpu": lambda: table3_config(dataset, config_file),
            "l2l_da_figure2_cpu": lambda: figure2_config(dataset, config_file)}
