"""CIFAR-10 (Wang & Yu section 4.3): D2, [-1, 1], eps 8/256, pad-crop 4 + flip;
SGD lr 0.1 momentum 0.9, / 10 after 100k of 200k steps, batch 64; weight decay 1e-4
for standard training, 1e-5 for PGD training. --config.model.kwargs.width=10 is the
wide variant of their appendix."""

from robustgan import config as configlib


def get_config(arg=None):
    c = configlib.paper_classifier_config(
        arg, name="cifar10", model="d2", eps=8 / 256, value_range=(-1.0, 1.0),
        learning_rate=0.1, weight_decay=1e-4, num_train_steps=200_000,
        model_kwargs={"width": 1},
    )
    if c.method != "standard":
        c.optimizer.weight_decay = 1e-5
    c.data.pad_crop, c.data.flip = 4, True
    if c.method == "advnet":  # Sec. 4.3: G1; G by Adam 0.002, beta1 0.5; wd 1e-5
        configlib.apply_advnet_paper(c, generator="g1", weight_decay=1e-5, g_adam=True)
    c.lock()
    return c
