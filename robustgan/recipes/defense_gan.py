"""Samangouei, Kabkab & Chellappa, "Defense-GAN" (ICLR 2018): the WGAN-GP run whose
generator the classifiers are projected through, the classifiers A-D (appendix Table 5)
trained on the original images (Defense-GAN-Orig) or on reconstructions (Rec), the
baselines (MagNet, Adv. Tr.), and the CPU layouts of Tables 1-2 (black box), Table 4
(white box) and Figure 3 (L and R).

`configs/<dataset>.py:defense_gan[,cpu]` is the GAN: the paper's batch 50, latent 128,
Adam 1e-4 (0.5, 0.9), 5 critic steps per generator step, 200k generator iterations
(train steps here: each is 5 critic steps on 5 batches of 50 and one generator step,
methods/defense_gan.py); ',cpu' trains CPU_GAN_ITERATIONS of them.
`configs/<dataset>.py:standard,defense_gan,<a|b|c|d>[,cpu]` is a classifier: the paper
gives no training settings, so these are the authors' code's (whitebox.py: Adam 1e-3, 10
epochs, the GAN config's batch 50); ',cpu' trains
CPU_CLASSIFIER_STEPS steps. A classifier is defended by naming a GAN run in
--config.front_end.run (and trained on reconstructions with --config.front_end.train=True);
its config.defense_gan.projection holds L (steps) and R (restarts), default the tables'
L=200, R=10. Evaluation as Table 4: eps 0.3, FGSM, RAND+FGSM (alpha 0.05) and C&W-L2 (100
steps, lr 10, c 100, one binary-search step).

The baselines of Tables 1, 2 and 4. MagNet: `configs/<dataset>.py:magnet[,cpu]` trains the
reformer auto-encoder (Table 7's encoder, methods/magnet.py) as MagNet's code does: batch
256, 100 epochs, Keras Adam 1e-3, inputs with Gaussian noise 0.1; ',cpu' trains
CPU_MAGNET_STEPS steps. Start its decoder from a GAN run's generator
(--config.init_from.run=<GAN run>, as the Table 1 layout does): from scratch its tanh code
collapsed (methods/magnet.py). A classifier is put behind it by naming the run in
--config.front_end.run. Adv. Tr.: `configs/<dataset>.py:pgd_at,defense_gan,<model>,fgsm
[,eps015][,cpu]` is the classifier trained on FGSM examples at eps 0.3 (',eps015': 0.15) as
the authors' code (blackbox.py: CleverHans model_train with predictions_adv, the loss
0.5 CE(x) + 0.5 CE(x_FGSM)): pgd_at with one step of size eps from x on half of each batch
(`fgsm_training`).
"""

from __future__ import annotations

import functools
import math

import ml_collections

from robustgan import config as configlib
from robustgan import optim
from robustgan.errors import ConfigError
from robustgan.recipes.yan import TRAIN_SIZE

# This recipe's own methods, the GAN and the MagNet reformer: neither trains a classifier.
METHODS = ("defense_gan", "magnet")
DATASETS = ("mnist", "fashion_mnist")  # the paper's (and the 28x28 networks')
CLASSIFIERS = ("a", "b", "c", "d")
BATCH_SIZE = 50  # the authors' config (experiments/cfgs/gans/default.yml), GAN and classifiers
GENERATOR_ITERATIONS = 200_000
CLASSIFIER_EPOCHS = 10
CW = "cw=cw_l2(steps=100, learning_rate=10, initial_const=100, binary_steps=1)"
TABLE4_ATTACKS = ("fgsm", "rand_fgsm", CW)
# Adaptive columns beside Table 4's (Athalye et al. 2018): BPDA through the projection,
# and EOT over its random starts.
# Athalye, Carlini & Wagner (2018) put Defense-GAN at 55% on MNIST under an L2 attack of
# 0.005 with BPDA. Their distance is read as the mean squared perturbation per pixel of a
# [0, 1] image, ||delta||_2^2 / 784: an L2 norm of sqrt(0.005 * 784) = 1.98 (their
# notebook, defensegan/attack.ipynb, prints plain L2 norms of 2-3 for its examples; a
# root-mean-square 0.005 would be a norm of 0.14, far below any adversarial example on
# MNIST). The column: BPDA through the projection, L2 PGD at that norm.
ATHALYE_MSE = 0.005
ATHALYE_L2 = f"athalye_l2=bpda(pgd(norm='l2', eps={math.sqrt(ATHALYE_MSE * 28 * 28):.4f}))"
# APGD-CE (100 steps) on top, through the unrolled projection and through BPDA.
ADAPTIVE_ATTACKS = ("bpda(fgsm)", "bpda(pgd)", "eot(pgd, 4)", "apgd_ce", "bpda(apgd_ce)",
                    ATHALYE_L2)
# The CPU layouts: GAN generator iterations (train steps, each 5 critic steps), classifier
# steps (one epoch), projection settings and test images (the paper: L=200, R=10, and the
# whole test set).
CPU_GAN_ITERATIONS = 1_000
CPU_CLASSIFIER_STEPS = TRAIN_SIZE["mnist"] // BATCH_SIZE
CPU_PROJECTION = {"defense_gan.projection.steps": 10, "defense_gan.projection.restarts": 2}
CPU_TABLE4_EXAMPLES = 100
CPU_SWEEP_L = (5, 10, 20)  # at R = 2 (Figure 3 left: R = 10)
CPU_SWEEP_R = (1, 2, 4)  # at L = 10 (Figure 3 right: L = 100)
CPU_SWEEP_EXAMPLES = 200
# The detection study: Table 3's noise norms (Figure 4 right sweeps eps at L=400, R=10),
# and the reconstruction grid's images.
CPU_DETECTION_EPS = (0.1, 0.15, 0.2, 0.25, 0.3)
CPU_GRID_IMAGES = 10
# MagNet's training (its code: train_defense.py, defensive_models.py), and the CPU run's
# steps (one epoch).
MAGNET_BATCH_SIZE = 256
MAGNET_EPOCHS = 100
CPU_MAGNET_STEPS = TRAIN_SIZE["mnist"] // MAGNET_BATCH_SIZE
# Adv. Tr.'s FGSM eps: the attack's (0.3) and ',eps015' (Tables 1 and 2).
FGSM_TRAINING_EPS = 0.3
FGSM_TRAINING_EPS_OPTION = {"eps015": 0.15}
# Table 1's black box (Sec. 4.1): Papernot et al.'s substitute, seeded with the first 150
# test images and trained on the classifier's labels, FGSM eps 0.3 on the rest (the paper:
# 9,850 images; the CPU layouts: CPU_TABLE1_TEST_EXAMPLES).
SUBSTITUTE_SEED_SIZE = 150
CPU_TABLE1_TEST_EXAMPLES = 350
# Table 3: FGSM's eps from substitute E, on the same substitute as Table 1 (2) with E; the
# paper's Defense-GAN-Rec (model F, L=400, R=10) at the eps below 0.3.
TABLE3_EPS = (0.1, 0.15, 0.2, 0.25)
PAPER_TABLE3_REC = {"mnist": (0.9864, 0.9836, 0.9772, 0.9641),
                    "fashion_mnist": (0.8844, 0.8267, 0.7492, 0.6384)}
# Tables 1 (MNIST) and 2 (F-MNIST), as printed: for each classifier/substitute pair, No
# Attack, then each of TABLE1_DEFENSES' accuracy under FGSM eps 0.3 from the substitute.
TABLE1_DEFENSES = ("No defense", "Defense-GAN-Rec", "Defense-GAN-Orig", "MagNet",
                   "Adv. Tr. eps=0.3", "Adv. Tr. eps=0.15")
SUBSTITUTES = ("b", "e")  # Tables 1 and 2 (Table 5's models)
PAPER_TABLE1 = {
    "mnist": {
        "a/b": (0.9970, 0.6343, 0.9312, 0.9282, 0.6937, 0.9654, 0.6223),
        "a/e": (0.9970, 0.5432, 0.9139, 0.9221, 0.6710, 0.9668, 0.9327),
        "b/b": (0.9618, 0.2816, 0.9057, 0.9105, 0.5687, 0.2092, 0.3441),
        "b/e": (0.9618, 0.2128, 0.8841, 0.8892, 0.4627, 0.1120, 0.3354),
        "c/b": (0.9959, 0.6648, 0.9357, 0.9322, 0.7571, 0.9834, 0.9208),
        "c/e": (0.9959, 0.8050, 0.9223, 0.9182, 0.6760, 0.9843, 0.9755),
        "d/b": (0.9920, 0.4641, 0.9272, 0.9323, 0.6817, 0.7667, 0.8514),
        "d/e": (0.9920, 0.3931, 0.9164, 0.9155, 0.6073, 0.7676, 0.7129),
    },
    "fashion_mnist": {
        "a/b": (0.9346, 0.5131, 0.586, 0.5803, 0.5404, 0.7393, 0.6600),
        "a/e": (0.9346, 0.3653, 0.4790, 0.4616, 0.3311, 0.6945, 0.5638),
        "b/b": (0.7470, 0.4017, 0.4940, 0.5530, 0.3812, 0.3177, 0.3560),
        "b/e": (0.7470, 0.3123, 0.3720, 0.4187, 0.3119, 0.2617, 0.2453),
        "c/b": (0.9334, 0.2635, 0.5289, 0.6079, 0.4664, 0.7791, 0.6838),
        "c/e": (0.9334, 0.2066, 0.4871, 0.4625, 0.3016, 0.7504, 0.6655),
        "d/b": (0.8923, 0.4541, 0.5779, 0.5853, 0.5478, 0.6172, 0.6395),
        "d/e": (0.8923, 0.2543, 0.4007, 0.4730, 0.3396, 0.5093, 0.4962),
    },
}

# Table 4, classifier A, as printed: No Attack, then each defense's accuracy under FGSM
# eps 0.3, RAND+FGSM (alpha 0.05) and C&W-L2 (None: F-MNIST's C&W Defense-GAN-Rec entry
# is not legible in the paper's text).
PAPER_TABLE4_A = {
    "mnist": (0.997, {"No defense": (0.217, 0.179, 0.141),
                      "Defense-GAN-Rec": (0.988, 0.988, 0.989),
                      "MagNet": (0.191, 0.171, 0.038), "Adv. Tr. eps=0.3": (0.651, 0.774, 0.077)}),
    "fashion_mnist": (0.934, {"No defense": (0.102, 0.102, 0.076),
                              "Defense-GAN-Rec": (0.879, 0.888, None),
                              "MagNet": (0.089, 0.096, 0.060),
                              "Adv. Tr. eps=0.3": (0.797, 0.447, 0.157)}),
}


def config(dataset: str, arg) -> ml_collections.ConfigDict:
    """The GAN ('defense_gan[,cpu]'), the MagNet reformer ('magnet[,cpu]') or a classifier
    ('<method>,defense_gan,<model>[,fgsm[,eps015]][,cpu]') on `dataset`, locked. The
    paper's sets are DATASETS: on others the same settings validate, and the Table 5-7
    networks stop at init on images that are not 28x28."""
    method, options = configlib.parse_arg(
        arg, ("defense_gan", "cpu", "fgsm", *FGSM_TRAINING_EPS_OPTION, *CLASSIFIERS))
    options.discard("defense_gan")
    models = sorted(options & set(CLASSIFIERS))
    if method in METHODS and models:
        raise ConfigError(f"the classifier options {models} are for classifier runs; "
                          f"{method} takes only ',cpu'")
    if len(models) > 1:
        raise ConfigError(f"the config argument names several classifiers: {models}")
    eps_options = sorted(options & set(FGSM_TRAINING_EPS_OPTION))
    if eps_options and "fgsm" not in options:
        raise ConfigError(f"{eps_options} set the eps of FGSM training: add ',fgsm'")
    if "fgsm" in options and method != "pgd_at":
        raise ConfigError(f"',fgsm' is Adv. Tr. (FGSM adversarial training), a setting of "
                          f"pgd_at, not of {method}")
    model = models[0] if models else "a"
    if method not in METHODS:
        options.add(model)  # named in the run's directory
    # [0, 1] data: the generator's sigmoid output (Table 6).
    c = configlib.method_config(method, options, dataset)
    c.batch_size = BATCH_SIZE
    cpu = "cpu" in options
    if method == "defense_gan":  # a train step: critic_steps critic batches, one G step
        c.batch_size = BATCH_SIZE * c.defense_gan.critic_steps
        c.num_train_steps = CPU_GAN_ITERATIONS if cpu else GENERATOR_ITERATIONS
        c.checkpoint_every = 200 if cpu else 2_000
    else:  # the reformer (MagNet's code) or a classifier (the authors' code): Adam 1e-3
        magnet = method == "magnet"
        c.batch_size = MAGNET_BATCH_SIZE if magnet else BATCH_SIZE
        steps_per_epoch = TRAIN_SIZE.get(dataset, TRAIN_SIZE["mnist"]) // c.batch_size
        epochs, cpu_steps = ((MAGNET_EPOCHS, CPU_MAGNET_STEPS) if magnet
                             else (CLASSIFIER_EPOCHS, CPU_CLASSIFIER_STEPS))
        c.num_train_steps = cpu_steps if cpu else epochs * steps_per_epoch
        c.optimizer = optim.optimizer_config(name="adam", learning_rate=1e-3,
                                             weight_decay=0.0, schedule="constant")
        c.checkpoint_every = steps_per_epoch
        if not magnet:
            c.model.name = f"dgan_{model}"
    c.eval.eps = c.train_attack.eps = 0.3
    if "fgsm" in options:
        fgsm_training(c.train_attack, eps=FGSM_TRAINING_EPS_OPTION[eps_options[0]]
                      if eps_options else FGSM_TRAINING_EPS)
    c.eval.attacks = TABLE4_ATTACKS
    c.eval.batch_size = BATCH_SIZE
    c.eval.measures = False  # the paper reports accuracies only
    c.log_every = 100
    c.lock()
    return c


def fgsm_training(train_attack, *, eps: float) -> None:
    """Sets pgd_at's attack to Adv. Tr. as the authors' code runs it (Goodfellow et al.
    2015; blackbox.py: the loss 0.5 CE(x) + 0.5 CE(x_FGSM), FGSM at eps from the start):
    one step of size eps from x (no random start), which is FGSM, on half of each batch,
    no eps ramp. Half the batch clean and half adversarial has that loss's expectation;
    the code sees each image both ways in one step, here each image one way. The attack
    ascends the true label's loss with dropout off (CleverHans: the predicted label, in
    training mode)."""
    train_attack.eps = train_attack.step_size = eps
    train_attack.steps = 1
    train_attack.random_start = False
    train_attack.fraction = 0.5
    train_attack.eps_ramp_steps = 0


def classifier_arg(model: str) -> str:
    """The config argument of Table 5's classifier `model` on the CPU recipe."""
    return f"standard,defense_gan,{model},cpu"


def percent(values) -> tuple:
    """The paper's accuracies as the tables print them (None: not in the paper)."""
    return tuple(None if v is None else round(100 * v, 2) for v in values)


def table4_config(dataset: str, config_file: str) -> ml_collections.ConfigDict:
    """Table 4's white-box layout for classifier A on the CPU recipes: the paper's rows
    (`defended_rows`: No defense, Defense-GAN-Rec, MagNet, Adv. Tr. eps=0.3) and
    Defense-GAN-Orig (the No defense run behind the GAN run's projection at
    CPU_PROJECTION), then Defense-GAN-Orig with fixed starts, which every attacker knows
    (the judged model is the attacked one); Table 4's columns and the adaptive ones. The
    paper's numbers (model A) beside ours."""
    projected = {"front_end.run": "GAN", **CPU_PROJECTION}
    known_starts = ("Defense-GAN-Orig, known starts", classifier_arg("a"), 0,
                    {**projected, "defense_gan.projection.starts": "fixed"})
    rows = []
    for row in defended_rows("a", projected, {}):
        if row[0] != "Adv. Tr. eps=0.15":  # not in Table 4
            rows.append(row)
        if row[0] == "Defense-GAN-Orig":
            rows.append(known_starts)
    no_attack, paper = PAPER_TABLE4_A[dataset]
    c = configlib.table_config(
        f"Defense-GAN Table 4 layout: {dataset}, classifier A, white box, eps 0.3 (CPU: "
        f"L={CPU_PROJECTION['defense_gan.projection.steps']}, "
        f"R={CPU_PROJECTION['defense_gan.projection.restarts']})", config_file,
        rows=rows, surrogates=(), attacks=TABLE4_ATTACKS + ADAPTIVE_ATTACKS,
        paper={name: percent((no_attack, *values)) for name, values in paper.items()})
    with c.unlocked():
        c.table.eval_num_examples = CPU_TABLE4_EXAMPLES
        c.table.output = "defense_gan_table4"
    return c


def lr_sweep_config(dataset: str, config_file: str) -> ml_collections.ConfigDict:
    """Figure 3's sweeps on the CPU recipes: one classifier A run behind one GAN run's
    projection for each L (at R=2) and each R (at L=10), FGSM white box; L and R are
    evaluation-only overrides, so every row shares the two trained runs. The table's
    `_sweeps.png` draws Figure 3's curves: accuracy against L and against R."""
    settings = dict.fromkeys([(steps, 2) for steps in CPU_SWEEP_L]
                             + [(10, restarts) for restarts in CPU_SWEEP_R])
    rows = [("GAN", "defense_gan,cpu", 0), ("No defense", classifier_arg("a"), 0)]
    rows += [(f"L={steps}, R={restarts}", classifier_arg("a"), 0,
              {"front_end.run": "GAN", "defense_gan.projection.steps": steps,
               "defense_gan.projection.restarts": restarts})
             for steps, restarts in settings]
    sweeps = (("L (R=2)", [(f"L={steps}, R=2", steps) for steps in CPU_SWEEP_L]),
              ("R (L=10)", [(f"L=10, R={restarts}", restarts) for restarts in CPU_SWEEP_R]))
    c = configlib.table_config(f"Defense-GAN Figure 3 layout: {dataset}, classifier A, "
                               "L and R", config_file, rows=rows, surrogates=(),
                               attacks=("fgsm",), sweeps=sweeps)
    with c.unlocked():
        c.table.eval_num_examples = CPU_SWEEP_EXAMPLES
        c.table.output = "defense_gan_lr_sweep"
    return c


def detection_config(dataset: str, config_file: str) -> ml_collections.ConfigDict:
    """Sec. 4.1.3's detection study (Figures 4-5, robustgan/studies/defense_gan_detection.py)
    on the CPU recipes: FGSM on classifier A, scored by the GAN run's projection; L over
    CPU_SWEEP_L and R over CPU_SWEEP_R at eps 0.3, eps over CPU_DETECTION_EPS at the row's
    CPU_PROJECTION; CPU_GRID_IMAGES clean test images beside their reconstructions."""
    c = configlib.study_config(
        "defense_gan_detection", f"Defense-GAN detection layout: {dataset}, classifier A, "
        f"FGSM (CPU: L={CPU_PROJECTION['defense_gan.projection.steps']}, "
        f"R={CPU_PROJECTION['defense_gan.projection.restarts']})", config_file,
        rows=[("GAN", "defense_gan,cpu", 0),
              ("Defense-GAN-Orig", classifier_arg("a"), 0,
               {"front_end.run": "GAN", **CPU_PROJECTION})],
        surrogates=(), settings=dict(steps=CPU_SWEEP_L, restarts=CPU_SWEEP_R,
                                     eps=CPU_DETECTION_EPS, grid_images=CPU_GRID_IMAGES))
    with c.unlocked():
        c.table.eval_num_examples = CPU_SWEEP_EXAMPLES
    return c


def defended_rows(model: str, projected: dict, evaluation: dict) -> list:
    """The runs of Tables 1, 2 and 4 for classifier `model` on the CPU recipes, in the paper's
    order: the GAN and the MagNet reformer (whose decoder starts from the GAN run's
    generator), then the table rows No defense; Defense-GAN-Rec (trained on the GAN
    run's reconstructions) and Defense-GAN-Orig (the No defense run behind the
    projection), both with the `projected` overrides; MagNet (the No defense run behind
    the reformer); Adv. Tr. at eps 0.3 and 0.15. `evaluation`: every row's
    evaluation-only overrides (the layouts share the trained runs in one workdir)."""
    classifier = classifier_arg(model)
    return [("GAN", "defense_gan,cpu", 0),
            ("MagNet reformer", "magnet,cpu", 0, {"init_from.run": "GAN"}),
            ("No defense", classifier, 0, evaluation),
            ("Defense-GAN-Rec", classifier, 0, {**projected, "front_end.train": True}),
            ("Defense-GAN-Orig", classifier, 0, projected),
            ("MagNet", classifier, 0, {"front_end.run": "MagNet reformer", **evaluation}),
            ("Adv. Tr. eps=0.3", f"pgd_at,defense_gan,{model},fgsm,cpu", 0, evaluation),
            ("Adv. Tr. eps=0.15", f"pgd_at,defense_gan,{model},fgsm,eps015,cpu", 0, evaluation)]


def table1_config(dataset: str, config_file: str, model: str,
                  substitute: str) -> ml_collections.ConfigDict:
    """Table 1's black-box layout (Table 2's on F-MNIST) for classifier `model` (Table 5's
    A-D) on the CPU recipes, `defended_rows`: No defense; Defense-GAN-Rec and
    Defense-GAN-Orig at CPU_PROJECTION; MagNet; Adv. Tr. at eps 0.3 and 0.15. Each row:
    clean accuracy ('No noise') on the first SUBSTITUTE_SEED_SIZE + CPU_TABLE1_TEST_EXAMPLES
    test images, and ('substitute FGS') the accuracy under FGSM eps 0.3 crafted on
    `substitute` (SUBSTITUTES: Table 5's B or E), trained by Papernot et al.'s procedure
    against the defended classifier as oracle (config.eval.substitute: seeded with the
    first SUBSTITUTE_SEED_SIZE of those images, tested on the rest; 6 rounds, lambda 0.1,
    10 epochs). With substitute E, also FGSM at each TABLE3_EPS from the same substitute:
    Table 3's sweep. The paper's rows: its clean accuracy of the classifier (one number for
    every row), its Table 1 (2) accuracy for the pair, and for Defense-GAN-Rec with E its
    Table 3 (model F, L=400, R=10)."""
    examples = SUBSTITUTE_SEED_SIZE + CPU_TABLE1_TEST_EXAMPLES
    black_box = {"eval.substitute": f"dgan_{substitute}",
                 "eval.substitute_seed_size": SUBSTITUTE_SEED_SIZE,
                 "eval.measure_examples": examples}
    if substitute == "e":  # Table 3 (its eps 0.3 is Table 1's column)
        black_box["eval.substitute_eps"] = TABLE3_EPS
    rows = defended_rows(model, {"front_end.run": "GAN", **CPU_PROJECTION, **black_box},
                         black_box)
    no_attack, *paper = PAPER_TABLE1[dataset][f"{model}/{substitute}"]
    table3 = PAPER_TABLE3_REC[dataset] if substitute == "e" else ()
    c = configlib.table_config(
        f"Defense-GAN Table {2 if dataset == 'fashion_mnist' else 1} layout: {dataset}, "
        f"classifier {model.upper()}, substitute {substitute.upper()}, black-box "
        f"FGSM eps 0.3 (CPU: L={CPU_PROJECTION['defense_gan.projection.steps']}, "
        f"R={CPU_PROJECTION['defense_gan.projection.restarts']}; substitute seeded with "
        f"{SUBSTITUTE_SEED_SIZE} test images, tested on {CPU_TABLE1_TEST_EXAMPLES})",
        config_file, rows=rows, surrogates=(), attacks=(),
        paper={name: percent((no_attack, None, value,
                              *(table3 if name == "Defense-GAN-Rec" else ())))
               for name, value in zip(TABLE1_DEFENSES, paper, strict=True)})
    with c.unlocked():
        c.table.eval_num_examples = examples
        c.table.output = f"defense_gan_table1_{model}{substitute}"
    return c


def tables(dataset: str, config_file: str) -> dict:
    """{arg: () -> table config} that `configs/<dataset>.py:<arg>` offers. Table 1's (2's)
    layouts: `defense_gan_table1[_<classifier>][_e]_cpu`, classifier A and substitute B
    unless named."""
    if dataset not in DATASETS:
        return {}
    layouts = {
        f"defense_gan_table1{'' if model == 'a' else '_' + model}"
        f"{'' if substitute == 'b' else '_' + substitute}_cpu":
            functools.partial(table1_config, dataset, config_file, model, substitute)
        for model in CLASSIFIERS for substitute in SUBSTITUTES}
    return layouts | {
        "defense_gan_table4_cpu": lambda: table4_config(dataset, config_file),
        "defense_gan_lr_sweep_cpu": lambda: lr_sweep_config(dataset, config_file),
        "defense_gan_detection_cpu": lambda: detection_config(dataset, config_file)}
