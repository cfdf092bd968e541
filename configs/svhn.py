"""SVHN (Wang & Yu section 4.2): D2 (ResNet-20 layout), [-1, 1], eps 0.05; train set
plus 80k images of 'extra'; SGD 0.01 momentum 0.9, wd 1e-4, batch 64, 200k steps."""

from robustgan import config as configlib


def get_config(arg=None):
    c = configlib.paper_classifier_config(
        arg, name="svhn_cropped", model="d2", eps=0.05, value_range=(-1.0, 1.0),
        learning_rate=0.01, weight_decay=1e-4, num_train_steps=200_000,
        model_kwargs={"width": 1},
    )
    c.data.svhn_extra = 80_000
    if c.method == "advnet":  # Sec. 4.2: G1; G by SGD 0.01 momentum 0.9; wd 1e-4 for D and G
        configlib.apply_advnet_paper(c, generator="g1", weight_decay=1e-4)
    c.lock()
    return c
