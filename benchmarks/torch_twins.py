"""PyTorch twins of robustgan's D1 and CIFAR ResNet-18 classifiers, loaded with the very
weights (parameters and BatchNorm running statistics) of a Flax model, for benchmarks that
compare the two frameworks on the same network.

    flax_vars = get_model("d1", 10).init(key, x)
    twin = torch_twin("d1", flax_vars)      # eval mode, NCHW input
    twin(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))   # the Flax logits, to ~1e-5

Layouts: Flax convolutions are NHWC with (kh, kw, in, out) kernels; PyTorch's are NCHW
with (out, in, kh, kw). D1's Dense layer reads the feature map flattened as (h, w, c),
PyTorch's Flatten gives (c, h, w): the twin's Linear weight is permuted to match, so the
twin needs no transposes in its forward pass. BatchNorm: momentum 0.9 in Flax is 0.1 in
PyTorch's convention, epsilon 1e-5 in both (models/layers.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch's convention for Flax's momentum=0.9


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv (padding kernel // 2 each side, no bias) then BatchNorm."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]


class D1(nn.Sequential):
    """models.convnets.D1 (use_bn=True) on 28x28xC NCHW images."""

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__(
            *_conv_bn(channels, 16, 3), nn.ReLU(),
            *_conv_bn(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            *_conv_bn(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, num_classes),
        )


class BasicBlock(nn.Module):
    """models.layers.ResidualBlock: conv-BN-ReLU-conv-BN + (projected) input, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(
            *_conv_bn(in_ch, out_ch, 3, stride), nn.ReLU(), *_conv_bn(out_ch, out_ch, 3)
        )
        self.shortcut = (
            nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.shortcut(x) + self.branch(x))


class ResNet18(nn.Module):
    """models.resnet.ResNet18 (CIFAR variant) on 32x32xC NCHW images."""

    def __init__(self, num_classes: int = 10, channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(channels, 64, 3), nn.ReLU())
        blocks, in_ch = [], 64
        for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _load_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, params, stats) -> None:
    """A Flax ConvBNReLU's kernel, BatchNorm scale/bias and running mean/var."""
    conv.weight.copy_(_tensor(params["Conv_0"]["kernel"]).permute(3, 2, 0, 1))
    bn.weight.copy_(_tensor(params["BatchNorm_0"]["scale"]))
    bn.bias.copy_(_tensor(params["BatchNorm_0"]["bias"]))
    bn.running_mean.copy_(_tensor(stats["BatchNorm_0"]["mean"]))
    bn.running_var.copy_(_tensor(stats["BatchNorm_0"]["var"]))


def _load_dense(linear: nn.Linear, params, feature_shape: tuple[int, int, int]) -> None:
    """A Flax Dense kernel (features flattened as h, w, c) into a Linear after Flatten
    of an NCHW (c, h, w) feature map."""
    h, w, c = feature_shape
    kernel = _tensor(params["kernel"])  # (h * w * c, out)
    kernel = kernel.reshape(h, w, c, -1).permute(2, 0, 1, 3).reshape(c * h * w, -1)
    linear.weight.copy_(kernel.T)
    linear.bias.copy_(_tensor(params["bias"]))


def _convs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    layers = list(module)
    return [(a, b) for a, b in zip(layers, layers[1:], strict=False)
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]


@torch.no_grad()
def load_d1(twin: D1, variables) -> D1:
    params, stats = variables["params"], variables["batch_stats"]
    for i, (conv, bn) in enumerate(_convs(twin)):
        name = f"ConvBNReLU_{i}"
        _load_conv_bn(conv, bn, params[name], stats[name])
    _load_dense(twin[-1], params["Dense_0"], (7, 7, 64))
    return twin


@torch.no_grad()
def load_resnet18(twin: ResNet18, variables) -> ResNet18:
    params = variables["params"]["ResNetTrunk_0"]
    stats = variables["batch_stats"]["ResNetTrunk_0"]
    _load_conv_bn(*_convs(twin.stem)[0], params["ConvBNReLU_0"], stats["ConvBNReLU_0"])
    for i, block in enumerate(twin.blocks):
        p, s = params[f"ResidualBlock_{i}"], stats[f"ResidualBlock_{i}"]
        for j, (conv, bn) in enumerate(_convs(block.branch)):
            _load_conv_bn(conv, bn, p[f"ConvBNReLU_{j}"], s[f"ConvBNReLU_{j}"])
        if not isinstance(block.shortcut, nn.Identity):
            _load_conv_bn(*_convs(block.shortcut)[0], p["ConvBNReLU_2"], s["ConvBNReLU_2"])
    _load_dense(twin.fc, variables["params"]["Dense_0"], (1, 1, 512))
    return twin


TWINS = {"d1": (D1, load_d1), "resnet18": (ResNet18, load_resnet18)}


def torch_twin(name: str, variables, num_classes: int = 10, channels: int | None = None):
    """The PyTorch twin of `get_model(name, num_classes)` holding `variables` (a Flax
    {'params', 'batch_stats'} tree), in eval mode with gradients off for its weights."""
    cls, load = TWINS[name]
    if channels is None:
        channels = 1 if name == "d1" else 3
    twin = load(cls(num_classes, channels), variables).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
