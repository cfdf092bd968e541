"""ImageNet (ILSVRC-2012), Yan et al.'s Deep Defense setting (robustgan/recipes/yan.py):
AlexNet or ResNet-18 fine-tuned with lambda 5, c 500, d 5, SGD lr 1e-4, batch 256, 10
epochs (AlexNet) or 1 (ResNet). ImageNet is read through TFDS (`imagenet2012`) and is not
on this machine: a run stops with a message naming the alternatives.

Arg: 'standard,yan,<architecture>' (the reference) or '<method>,<architecture>' with
method deep_defense, deepfool_at or parseval and architecture alexnet (default) or
resnet18 (any other method runs in the same setting)."""

from robustgan import recipes


def get_config(arg=None):
    # Every method takes Yan et al.'s ImageNet setting: no other paper here uses ImageNet.
    return recipes.get_config("imagenet2012", f"{arg or 'deep_defense'},yan", __file__)
