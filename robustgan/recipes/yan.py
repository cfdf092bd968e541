"""Yan, Guo & Zhang, "Deep Defense: Training DNNs with Improved Adversarial Robustness"
(NeurIPS 2018): the reference classifiers, the fine-tuning setting of deep_defense and
its baselines (supplement Table 3), and the layouts of Table 1 and Figures 3 and 4.

`configs/<dataset>.py:<method>,<architecture>[,<option>]` with method deep_defense,
deepfool_at (Adv. Train I) or parseval (Par. Train); `standard,yan,<architecture>` is
the reference model. Architectures (models/yan.py): mlp, lenet (MNIST-like sets), convnet,
nin (CIFAR-like), alexnet, resnet18 (ImageNet). Options of deep_defense: clean (the
original objective only: Figure 2's "Clean" fine-tuning, the control for what more
training alone does), adv_train_ii (Goodfellow et al.'s objective alone, the supplement's
Adv. Train II) and combined (Deep Defense + the FGS term, supplement Sec. 2).

Inputs: data in [0, 1]; each model's fixed first layer maps them to the authors' space,
255 x - 255 * (training-set mean) (MNIST: mean-subtracted 0-255 images). The authors
also contrast-normalized and ZCA-whitened CIFAR: `--config.model.kwargs.whitening=FILE`
(a file written by `robustgan.data.whitening.save_zca` from the training images) adds
the whitening; the configs leave it off.
"""

from __future__ import annotations

import ml_collections

from robustgan import config as configlib
from robustgan import optim
from robustgan.data import default_source
from robustgan.errors import ConfigError

METHODS = ("deep_defense", "deepfool_at", "parseval")
OPTIONS = ("clean", "adv_train_ii", "combined")
MNIST_LIKE = ("mnist", "fashion_mnist")
CIFAR_LIKE = ("cifar10", "cifar100", "svhn")
# dataset -> (architectures, the first the default)
ARCHITECTURES = {**dict.fromkeys(MNIST_LIKE, ("lenet", "mlp")),
                 **dict.fromkeys(CIFAR_LIKE, ("convnet", "nin")),
                 "imagenet2012": ("alexnet", "resnet18")}
MODELS = {"mlp": "yan_mlp", "lenet": "yan_lenet", "convnet": "yan_convnet", "nin": "yan_nin",
          "alexnet": "alexnet", "resnet18": "resnet18"}
# Mean pixel value of each training set in [0, 1] (the authors subtracted it).
TRAIN_MEAN = {"mnist": 0.1307, "fashion_mnist": 0.2860, "cifar10": 0.4734,
              "cifar100": 0.4782, "svhn": 0.4510, "imagenet2012": 0.449}
TRAIN_SIZE = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000,
              "cifar100": 50_000, "svhn": 73_257, "imagenet2012": 1_281_167}
# Reference training (not in the paper: the authors trained the MLP and downloaded the
# others; supplement Sec. 6 gives momentum 0.9 and weight decay 5e-4): epochs.
REFERENCE_EPOCHS = {"mnist": 30, "fashion_mnist": 30, "cifar10": 60, "cifar100": 60,
                    "svhn": 20, "imagenet2012": 90}

# Table 1 (%, rho_2 as a number): Acc., rho_2, Acc. at 0.2 / 0.5 / 1.0 eps_ref.
PAPER_TABLE1 = {
    "mlp": {"Reference": (98.31, 0.111, 72.76, 29.08, 3.31),
            "Par. Train": (98.32, 0.111, 77.44, 28.95, 2.96),
            "Adv. Train I": (98.49, 0.162, 87.70, 59.69, 22.55),
            "Ours": (98.65, 0.225, 95.04, 88.93, 50.00)},
    "lenet": {"Reference": (99.02, 0.205, 90.95, 53.88, 19.75),
              "Par. Train": (99.10, 0.203, 91.68, 66.48, 19.64),
              "Adv. Train I": (99.18, 0.263, 95.20, 74.82, 41.40),
              "Ours": (99.34, 0.284, 96.51, 88.93, 50.00)},
    "convnet": {"Reference": (79.74, 0.0259, 61.62, 37.84, 23.85),
                "Par. Train": (80.48, 0.0342, 69.19, 50.43, 22.13),
                "Adv. Train I": (80.65, 0.0305, 65.16, 45.03, 35.53),
                "Ours": (81.70, 0.0532, 72.15, 59.02, 50.00)},
    "nin": {"Reference": (89.64, 0.0420, 75.61, 49.22, 33.56),
            "Par. Train": (88.20, 0.0433, 75.39, 49.75, 17.74),
            "Adv. Train I": (89.87, 0.0525, 78.87, 58.85, 45.90),
            "Ours": (89.96, 0.0558, 80.70, 70.73, 50.00)},
}


def config(dataset: str, arg) -> ml_collections.ConfigDict:
    """Yan et al.'s setting of `arg` ('method,architecture[,option]') on `dataset`."""
    if dataset not in ARCHITECTURES:
        raise ConfigError(f"Yan et al.'s recipes cover {sorted(ARCHITECTURES)}, not {dataset!r}")
    offered = ARCHITECTURES[dataset]
    method, options = configlib.parse_arg(arg, ("yan", *offered, *OPTIONS))
    options.discard("yan")
    architectures = sorted(options & set(offered))
    if len(architectures) > 1:
        raise ConfigError(f"the config argument names several architectures: {architectures}")
    architecture = architectures[0] if architectures else offered[0]
    variants = sorted(options & set(OPTIONS))
    if variants and method != "deep_defense":
        raise ConfigError(f"the options {variants} are deep_defense's")
    if len(variants) > 1:
        raise ConfigError(f"name one of {variants}")
    c = configlib.base_config()
    c.method = method
    c.options = ",".join([architecture, *variants])
    c.data.name = dataset
    c.data.source, c.data.dir = default_source(dataset)
    c.data.value_range = (0.0, 1.0)
    c.data.num_classes = {"cifar100": 100, "imagenet2012": 1000}.get(dataset, 10)
    c.model.name = MODELS[architecture]
    c.model.kwargs = ml_collections.ConfigDict(
        {"input_scale": 255.0, "input_mean": 255.0 * TRAIN_MEAN[dataset]}
        if architecture != "resnet18" else {})
    imagenet = dataset == "imagenet2012"
    c.batch_size = 256 if imagenet else 100
    steps_per_epoch = TRAIN_SIZE[dataset] // c.batch_size
    # Evaluation: FGS (eps_ref) and the supplement's PGD at eps 0.1 (MNIST) / 0.01 (CIFAR),
    # here in [0, 1] pixel units; APGD beside them.
    c.eval.eps = 0.1 if dataset in MNIST_LIKE else 0.01
    c.eval.pgd_steps, c.eval.pgd_step_size = 20, c.eval.eps / 8
    c.eval.attacks = ("fgsm", "pgd", "apgd_ce", "apgd_dlr")
    c.eval.measure_examples = 1000
    c.train_attack.eps = c.advnet.eps = c.eval.eps  # other methods in this setting
    if method == "standard":
        # In the authors' 0-255 input space the first layer's gradient is ~255x larger
        # than in [0, 1] units: SGD at 0.01 diverged within 20 steps (MLP), LeNet at 1e-3
        # within 10. MNIST MLP, test accuracy: lr 3e-4 for 10 epochs 95.8%, lr 1e-3 for
        # 30 epochs 97.2%.
        c.num_train_steps = REFERENCE_EPOCHS[dataset] * steps_per_epoch
        c.optimizer = optim.optimizer_config(
            name="sgd", learning_rate=1e-3 if architecture == "mlp" else 3e-4,
            momentum=0.9, weight_decay=5e-4,
            schedule="step", decay_at=(0.5, 0.75))
    else:
        apply_fine_tuning(c, dataset, architecture, steps_per_epoch)
    if "clean" in variants:  # fine-tuning on the original objective (Figure 2's "Clean")
        c.deep_defense.weight = 0.0
    if "adv_train_ii" in variants:
        c.deep_defense.weight = 0.0
        c.deep_defense.clean_weight = c.deep_defense.fgs_weight = 0.5
    if "combined" in variants:
        c.deep_defense.fgs_weight = 1.0
    c.checkpoint_every = steps_per_epoch
    c.log_every = 100
    c.lock()
    return c


# Fine-tuning learning rates where the paper's 5e-4 fails here. In the 0-255 input space
# our LeNet reference trains at 3e-4, not the MLP's 1e-3 (1e-3 diverged within 10 steps);
# fine-tuned at 5e-4, LeNet's Deep Defense objective blew up by step 50 (batch accuracy
# 0.71, cross-entropy 14) and plain fine-tuning lost 1.1 points of training accuracy. The
# rate scaled as the reference's, 5e-4 * 3e-4 / 1e-3, trained stably (docs/yan.md). The
# CIFAR-10 ConvNet's reference also trains at 3e-4, and at 5e-4 its Deep Defense run
# collapsed to 36% test accuracy within 30 steps (reference 54.6%): the same scaling. At
# 1.5e-4 its 30 steps ended at training-batch accuracy 0.46 (Clean fine-tune 0.50), with
# the regularizer at 0.91: no collapse in training; not yet evaluated on the test set.
FINE_TUNING_LR = {"lenet": 1.5e-4, "convnet": 1.5e-4}


def apply_fine_tuning(c, dataset: str, architecture: str, steps_per_epoch: int) -> None:
    """Supplement Table 3 and Sec. 6: SGD momentum 0.9, weight decay 5e-4, batch 100, lr
    5e-4 (LeNet here: FINE_TUNING_LR) for 5 epochs (MNIST) or 50 (CIFAR-10), halved for
    the last epoch (MNIST: "after four epochs") or the last 10 (CIFAR); ImageNet lr 1e-4
    (constant), batch 256, 10 epochs (AlexNet) or 1 (ResNet). lambda 15, c 25, d 5 (NIN:
    c 70; ImageNet: lambda 5, c 500);
    Parseval beta 1e-4 (MNIST) / 3e-4 (CIFAR); the FGS terms at the evaluation eps."""
    imagenet = dataset == "imagenet2012"
    epochs = ({"alexnet": 10, "resnet18": 1}[architecture] if imagenet
              else 5 if dataset in MNIST_LIKE else 50)
    c.num_train_steps = epochs * steps_per_epoch
    halved_epochs = 1 if dataset in MNIST_LIKE else 10  # ImageNet: no halving stated
    c.optimizer = optim.optimizer_config(
        name="sgd", learning_rate=1e-4 if imagenet else FINE_TUNING_LR.get(architecture, 5e-4),
        momentum=0.9, weight_decay=5e-4,
        schedule="constant" if imagenet else "step",
        decay_at=(0.5,) if imagenet else (1 - halved_epochs / epochs,), decay_factor=0.5)
    d = c.deep_defense
    if imagenet:
        d.weight, d.c = 5.0, 500.0
    if architecture == "nin":
        d.c = 70.0
    if architecture == "resnet18":
        d.space = "data"  # the zoo ResNet has no fixed first layer here
    d.fgs_eps = c.eval.eps
    c.parseval.beta = 1e-4 if dataset in MNIST_LIKE else 3e-4


def table1_rows(architecture: str, *, extra: bool = False, steps: int = 0,
                reference_steps: int = 0) -> list:
    """Table 1's rows for one network: Reference, then Clean fine-tune (Figure 2's
    control), Par. Train, Adv. Train I and Ours fine-tuned from it (extra: the
    supplement's Adv. Train II and the combined method), each for `steps` fine-tuning
    steps (0: the paper's schedule) after `reference_steps` of the Reference (0: its
    recipe's)."""
    start = {"init_from.run": "Reference", **({"num_train_steps": steps} if steps else {})}
    adv_train_i = {**start, "deepfool_at.source": "Reference"}
    if steps:  # the CPU layout: DeepFool's 5 steps (Deep Defense's), unrolled
        adv_train_i["deepfool_at.steps"] = 5
    reference = {"num_train_steps": reference_steps} if reference_steps else {}
    rows = [("Reference", f"standard,yan,{architecture}", 0, reference),
            ("Clean fine-tune", f"deep_defense,{architecture},clean", 0, start),
            ("Par. Train", f"parseval,{architecture}", 0, start),
            ("Adv. Train I", f"deepfool_at,{architecture}", 0, adv_train_i),
            ("Ours", f"deep_defense,{architecture}", 0, start)]
    if extra:
        rows += [("Adv. Train II", f"deep_defense,{architecture},adv_train_ii", 0, start),
                 ("Ours + FGS", f"deep_defense,{architecture},combined", 0, start)]
    return rows


def table1_config(dataset: str, architecture: str, config_file: str, *, extra: bool = False,
                  steps: int = 0, reference_steps: int = 0, eval_examples: int = 0,
                  cw_examples: int = 200) -> ml_collections.ConfigDict:
    """Table 1 on one network (robustgan/studies/deep_defense.py adds the rho_2 columns of
    the paper's DeepFool and C&W-L2 distances), eps_ref found on Ours; `steps` fine-tuning
    steps per row (0: the paper's schedule), `eval_examples` test images (0: all)."""
    budget = (f", {reference_steps} reference steps" if reference_steps else "") + (
        f", {steps} fine-tuning steps per row" if steps else "")
    c = configlib.study_config(
        "deep_defense_table1", f"Yan et al. Table 1 layout: {dataset} {architecture}{budget}",
        config_file, rows=table1_rows(architecture, extra=extra, steps=steps,
                                           reference_steps=reference_steps), surrogates=(),
        settings=dict(paper=tuple(PAPER_TABLE1.get(architecture, {}).items()) if dataset in (
            "mnist", "cifar10") else (), cw_examples=cw_examples))
    with c.unlocked():
        c.table.attacks = ("fgsm", "pgd", "apgd_ce", "apgd_dlr")
        c.table.eps_ref_row = "Ours"
        c.table.eval_num_examples = eval_examples
    return c


def sweep_config(title: str, config_file: str, *, architecture: str, groups, c_values,
                 steps: int) -> ml_collections.ConfigDict:
    """Figures 3 and 4: deep_defense runs for every (group, c), group a {key: value} of
    config overrides naming a curve (lambda for Figure 3; the one regularized layer for
    Figure 4), each fine-tuned for `steps` steps (the schedule's decay at the same
    fraction), with the Reference as the starting point of every curve."""
    rows = [("Reference", f"standard,yan,{architecture}", 0)]
    for label, overrides in groups:
        for c_value in c_values:
            rows.append((f"{label}, c={c_value:g}", f"deep_defense,{architecture}", 0,
                         {**overrides, "deep_defense.c": float(c_value),
                          "num_train_steps": steps, "init_from.run": "Reference"}))
    return configlib.study_config(
        "deep_defense_sweep", title, config_file, rows=rows, surrogates=(),
        settings=dict(groups=tuple(label for label, _ in groups)))


def tables(dataset: str, config_file: str) -> dict:
    """{arg: () -> study config} that `configs/<dataset>.py:<arg>` offers."""
    out = {f"deep_defense_table1_{a}": (lambda a=a: table1_config(dataset, a, config_file))
           for a in ARCHITECTURES.get(dataset, ()) if dataset != "imagenet2012"}
    if dataset == "mnist":
        out["deep_defense_table1_mlp"] = lambda: table1_config(
            dataset, "mlp", config_file, extra=True)
        # LeNet's regularized step takes ~2-3 s on this 2-core CPU (MLP: 0.09 s): the CPU
        # layout fine-tunes every row for the same LENET_CPU_STEPS steps, on 2,000 images.
        out["deep_defense_table1_lenet_cpu"] = lambda: table1_config(
            dataset, "lenet", config_file, steps=LENET_CPU_STEPS, eval_examples=2000)
        for architecture, layers in SWEEP_LAYERS.items():
            out[f"deep_defense_figure3_{architecture}"] = lambda a=architecture: sweep_config(
                f"Yan et al. Figure 3 layout: {a}, c and lambda", config_file,
                architecture=a, c_values=SWEEP_C[a], steps=SWEEP_STEPS[a],
                groups=[(f"lambda={w:g}", {"deep_defense.weight": float(w)})
                        for w in (5, 15, 25)])
            out[f"deep_defense_figure4_{architecture}"] = lambda a=architecture, layers=layers: (
                sweep_config(f"Yan et al. Figure 4 layout: {a}, one regularized layer",
                             config_file, architecture=a, c_values=SWEEP_C[a],
                             steps=SWEEP_STEPS[a],
                             groups=[(label, {"deep_defense.layers": (path,)})
                                     for label, path in layers.items()]))
    if dataset == "cifar10":
        # The ConvNet's regularized step takes ~28 s here (plain: 0.56 s): a CPU layout
        # at a small fraction of the paper's scale (50 + 50 epochs, GPU work).
        out["deep_defense_table1_convnet_cpu"] = lambda: table1_config(
            dataset, "convnet", config_file, steps=CONVNET_CPU_STEPS,
            reference_steps=CONVNET_CPU_REFERENCE_STEPS, eval_examples=500, cw_examples=100)
    return out


# Fine-tuning steps per row of the CPU layout of LeNet's Table 1 (the paper: 3,000).
LENET_CPU_STEPS = 300
# The CIFAR-10 ConvNet's CPU layout: 3 epochs of the Reference (the paper's reference is
# trained to convergence), 30 fine-tuning steps per row (the paper: 25,000).
CONVNET_CPU_REFERENCE_STEPS = 1500
CONVNET_CPU_STEPS = 30
# Figures 3 and 4 (the paper: LeNet, c in 5..45, the full 5-epoch schedule): c values,
# and fine-tuning steps per run: LeNet the paper's (c 5, 15, ..., 45; 3,000 steps, ~4.7
# hours a run on this CPU: GPU work); the MLP c 5, 25, 45 and half an epoch (300 steps,
# ~1 minute a run), the layout this CPU runs.
SWEEP_C = {"mlp": (5, 25, 45), "lenet": (5, 15, 25, 35, 45)}
SWEEP_STEPS = {"mlp": 300, "lenet": 3000}
# Each network's layers in the paper's names -> their parameter subtrees (models/yan.py).
SWEEP_LAYERS = {
    "lenet": {"conv1": "ConvBNReLU_0", "conv2": "ConvBNReLU_1", "fc1": "Dense_0",
              "fc2": "Dense_1"},
    "mlp": {"fc1": "Dense_0", "fc2": "Dense_1", "fc3": "Dense_2"},
}
