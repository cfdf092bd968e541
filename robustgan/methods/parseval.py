"""parseval: Parseval training (Cisse et al., ICML 2017) as Deep Defense's baseline (Yan
et al. 2018, Sec. 4): after each SGD step, a projection step pulls every weight matrix
toward a Parseval tight frame, W_S <- (1 + beta) W_S - beta W_S W_S^T W_S on a random
`fraction` (30%) of its rows S (Cisse et al. Sec. 3.2). A dense kernel's rows are its
output units; a convolution kernel is unfolded to (output channels, kh * kw * inputs).
Fine-tuning runs as Deep Defense's (inference mode, BatchNorm frozen); beta 1e-4 on
MNIST and 3e-4 on CIFAR-10 (Yan et al.'s grid search).
"""

from __future__ import annotations

import jax
import ml_collections

from robustgan.checks import check_at_least, check_range
from robustgan.methods.base import Method, MethodSpec
from robustgan.methods.deep_defense import plain_fine_tuning


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"beta": 1e-4, "fraction": 0.3})


def validate(config) -> None:
    check_at_least("parseval.beta", config.parseval.beta, 0.0, "non-negative")
    check_range("parseval.fraction", config.parseval.fraction, 0.0, 1.0)


def project_rows(kernel, rng, *, beta: float, fraction: float):
    """One Parseval step on a random `fraction` of the rows (output units) of `kernel`
    ((..., outputs): a dense or convolution kernel)."""
    columns = kernel.reshape(-1, kernel.shape[-1])  # the rows of W are its columns
    count = max(1, round(fraction * columns.shape[1]))
    rows = jax.random.permutation(rng, columns.shape[1])[:count]
    m = columns[:, rows]
    m = (1 + beta) * m - beta * m @ (m.T @ m)
    return columns.at[:, rows].set(m).reshape(kernel.shape)


def project(params, rng, *, beta: float, fraction: float):
    """`project_rows` on every kernel of `params`, each with its own key."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(rng, len(leaves))
    return treedef.unflatten([
        project_rows(p, k, beta=beta, fraction=fraction) if p.ndim >= 2 else p
        for p, k in zip(leaves, keys, strict=True)])


def parseval(config, num_classes: int, runs=None) -> Method:
    """The parseval Method: plain fine-tuning, each step followed by `project`."""
    net, init, fine_tune_step = plain_fine_tuning(config, num_classes)
    p = config.parseval

    def train_step(state, x, y, rng):
        state, metrics = fine_tune_step(state, x, y, rng)
        params = project(state.params, rng, beta=p.beta, fraction=p.fraction)
        return state.replace(params=params), metrics

    return Method(init=init, train_step=train_step, classifier=net.classifier)


PARSEVAL = MethodSpec("parseval", build=parseval, defaults=defaults, validate=validate)
