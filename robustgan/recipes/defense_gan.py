"""Samangouei, Kabkab & Chellappa, "Defense-GAN" (ICLR 2018): the WGAN-GP run whose
generator the classifiers are projected through, the classifiers A-D (appendix Table 5)
trained on the original images (Defense-GAN-Orig) or on reconstructions (Rec), and the
CPU layouts of Table 4 (white box) and Figure 3 (L and R).

`configs/<dataset>.py:defense_gan[,cpu]` is the GAN: the paper's batch 50, latent 128,
Adam 1e-4 (0.5, 0.9), 5 critic steps per generator step, 200k generator iterations
(1M train steps here: each step is one critic step, methods/defense_gan.py); ',cpu' trains
CPU_GAN_STEPS steps. `configs/<dataset>.py:standard,defense_gan,<a|b|c|d>[,cpu]` is a
classifier: the paper gives no training settings, so these are the authors' code's
(whitebox.py: Adam 1e-3, 10 epochs, the GAN config's batch 50); ',cpu' trains
CPU_CLASSIFIER_STEPS steps. A classifier is defended by naming a GAN run in
--config.front_end.run (and trained on reconstructions with --config.front_end.train=True);
its config.defense_gan.projection holds L (steps) and R (restarts), default the tables'
L=200, R=10. Evaluation as Table 4: eps 0.3, FGSM, RAND+FGSM (alpha 0.05) and C&W-L2 (100
steps, lr 10, c 100, one binary-search step).
"""

from __future__ import annotations

import ml_collections

from robustgan import config as configlib
from robustgan import optim
from robustgan.errors import ConfigError
from robustgan.recipes.yan import TRAIN_SIZE

METHODS = ("defense_gan",)
DATASETS = ("mnist", "fashion_mnist")  # the paper's (and the 28x28 networks')
CLASSIFIERS = ("a", "b", "c", "d")
BATCH_SIZE = 50  # the authors' config (experiments/cfgs/gans/default.yml), GAN and classifiers
GENERATOR_ITERATIONS = 200_000
CLASSIFIER_EPOCHS = 10
CW = "cw=cw_l2(steps=100, learning_rate=10, initial_const=100, binary_steps=1)"
TABLE4_ATTACKS = ("fgsm", "rand_fgsm", CW)
# Adaptive columns beside Table 4's (Athalye et al. 2018): BPDA through the projection,
# and EOT over its random starts.
ADAPTIVE_ATTACKS = ("bpda(fgsm)", "bpda(pgd)", "eot(pgd, 4)")
# The CPU layouts: GAN train steps (critic steps; 1,000 generator iterations), classifier
# steps (one epoch), projection settings and test images (the paper: L=200, R=10, and the
# whole test set).
CPU_GAN_STEPS = 5_000
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


def config(dataset: str, arg) -> ml_collections.ConfigDict:
    """The GAN ('defense_gan[,cpu]') or a classifier ('<method>,defense_gan,<model>[,cpu]')
    on `dataset`, locked. The paper's sets are DATASETS: on others the same settings
    validate, and the Table 5 and 6 networks stop at init on images that are not 28x28."""
    method, options = configlib.parse_arg(arg, ("defense_gan", "cpu", *CLASSIFIERS))
    options.discard("defense_gan")
    models = sorted(options & set(CLASSIFIERS))
    if method == "defense_gan" and models:
        raise ConfigError(f"the classifier options {models} are for classifier runs; the "
                          "GAN takes only ',cpu'")
    if len(models) > 1:
        raise ConfigError(f"the config argument names several classifiers: {models}")
    model = models[0] if models else "a"
    if method != "defense_gan":
        options.add(model)  # named in the run's directory
    # [0, 1] data: the generator's sigmoid output (Table 6).
    c = configlib.method_config(method, options, dataset)
    c.batch_size = BATCH_SIZE
    cpu = "cpu" in options
    if method == "defense_gan":
        c.num_train_steps = (CPU_GAN_STEPS if cpu
                             else GENERATOR_ITERATIONS * c.defense_gan.critic_steps)
        c.checkpoint_every = 1_000 if cpu else 10_000
    else:
        c.model.name = f"dgan_{model}"
        steps_per_epoch = TRAIN_SIZE.get(dataset, TRAIN_SIZE["mnist"]) // BATCH_SIZE
        c.num_train_steps = CPU_CLASSIFIER_STEPS if cpu else CLASSIFIER_EPOCHS * steps_per_epoch
        c.optimizer = optim.optimizer_config(name="adam", learning_rate=1e-3,
                                             weight_decay=0.0, schedule="constant")
        c.checkpoint_every = steps_per_epoch
    c.eval.eps = c.train_attack.eps = 0.3
    c.eval.attacks = TABLE4_ATTACKS
    c.eval.batch_size = BATCH_SIZE
    c.eval.measures = False  # the paper reports accuracies only
    c.log_every = 100
    c.lock()
    return c


def table4_config(dataset: str, config_file: str) -> ml_collections.ConfigDict:
    """Table 4's white-box layout for classifier A on the CPU recipes: No defense and
    Defense-GAN-Orig (the same classifier run behind the GAN run's projection at
    CPU_PROJECTION), Table 4's columns and the adaptive ones."""
    classifier = "standard,defense_gan,a,cpu"
    c = configlib.table_config(
        f"Defense-GAN Table 4 layout: {dataset}, classifier A, white box, eps 0.3 (CPU: "
        f"L={CPU_PROJECTION['defense_gan.projection.steps']}, "
        f"R={CPU_PROJECTION['defense_gan.projection.restarts']})", config_file,
        rows=[("GAN", "defense_gan,cpu", 0), ("No defense", classifier, 0),
              ("Defense-GAN-Orig", classifier, 0, {"front_end.run": "GAN", **CPU_PROJECTION})],
        surrogates=(), attacks=TABLE4_ATTACKS + ADAPTIVE_ATTACKS)
    with c.unlocked():
        c.table.eval_num_examples = CPU_TABLE4_EXAMPLES
    return c


def lr_sweep_config(dataset: str, config_file: str) -> ml_collections.ConfigDict:
    """Figure 3's sweeps on the CPU recipes: one classifier A run behind one GAN run's
    projection for each L (at R=2) and each R (at L=10), FGSM white box; L and R are
    evaluation-only overrides, so every row shares the two trained runs."""
    settings = dict.fromkeys([(steps, 2) for steps in CPU_SWEEP_L]
                             + [(10, restarts) for restarts in CPU_SWEEP_R])
    rows = [("GAN", "defense_gan,cpu", 0), ("No defense", "standard,defense_gan,a,cpu", 0)]
    rows += [(f"L={steps}, R={restarts}", "standard,defense_gan,a,cpu", 0,
              {"front_end.run": "GAN", "defense_gan.projection.steps": steps,
               "defense_gan.projection.restarts": restarts})
             for steps, restarts in settings]
    c = configlib.table_config(f"Defense-GAN Figure 3 layout: {dataset}, classifier A, "
                               "L and R", config_file, rows=rows, surrogates=(),
                               attacks=("fgsm",))
    with c.unlocked():
        c.table.eval_num_examples = CPU_SWEEP_EXAMPLES
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
              ("Defense-GAN-Orig", "standard,defense_gan,a,cpu", 0,
               {"front_end.run": "GAN", **CPU_PROJECTION})],
        surrogates=(), settings=dict(steps=CPU_SWEEP_L, restarts=CPU_SWEEP_R,
                                     eps=CPU_DETECTION_EPS, grid_images=CPU_GRID_IMAGES))
    with c.unlocked():
        c.table.eval_num_examples = CPU_SWEEP_EXAMPLES
    return c


def tables(dataset: str, config_file: str) -> dict:
    """{arg: () -> table config} that `configs/<dataset>.py:<arg>` offers."""
    if dataset not in DATASETS:
        return {}
    return {"defense_gan_table4_cpu": lambda: table4_config(dataset, config_file),
            "defense_gan_lr_sweep_cpu": lambda: lr_sweep_config(dataset, config_file),
            "defense_gan_detection_cpu": lambda: detection_config(dataset, config_file)}
