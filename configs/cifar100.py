"""CIFAR-100 (Wang & Yu appendix): CIFAR-10's setting with 100 classes, lr 0.1 then
0.01, weight decay 1e-5."""

from robustgan import config as configlib


def get_config(arg=None):
    c = configlib.paper_classifier_config(
        arg, name="cifar100", model="d2", eps=8 / 256, value_range=(-1.0, 1.0),
        learning_rate=0.1, weight_decay=1e-5, num_train_steps=200_000,
        model_kwargs={"width": 1},
    )
    c.data.num_classes = 100
    c.data.pad_crop, c.data.flip = 4, True
    if c.method == "advnet":  # CIFAR-10's advnet setting (Wang & Yu appendix)
        configlib.apply_advnet_paper(c, generator="g1", weight_decay=1e-5, g_adam=True)
    c.lock()
    return c
