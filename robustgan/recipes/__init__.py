"""Per-paper settings ("recipes"): one module per paper, one line each in RECIPES.

A dataset file in configs/ calls `get_config(dataset, arg, __file__)`. The arg's first
word is either a table or study that some paper lays out for this dataset (`tables`), or
a method: then the paper's recipe that comes first in RECIPES listing the method (its
`METHODS`) gives the setting, unless an option names another paper
(`configs/mnist.py:standard,<paper>`).

A recipe module offers METHODS, `config(dataset, arg) -> ConfigDict` and
`tables(dataset, config_file) -> {arg: () -> ConfigDict}`.
"""

from __future__ import annotations

import ml_collections

from robustgan.errors import ConfigError
from robustgan.recipes import defense_gan, l2l_da, wang_yu, yan

RECIPES = {
    "wang_yu": wang_yu,
    "defense_gan": defense_gan,
    "l2l_da": l2l_da,
    "yan": yan,
}


def get_config(dataset: str, arg: str | None, config_file: str) -> ml_collections.ConfigDict:
    """The config `configs/<dataset>.py:<arg>` stands for."""
    words = [w.strip() for w in (arg or "standard").split(",") if w.strip()]
    for recipe in RECIPES.values():
        tables = recipe.tables(dataset, config_file)
        if words[0] in tables:
            if len(words) > 1:
                raise ConfigError(f"{words[0]!r} takes no options, got {words[1:]}")
            return tables[words[0]]()
    papers = [w for w in words[1:] if w in RECIPES]
    if len(papers) > 1:
        raise ConfigError(f"the config argument names several papers' recipes: {papers}")
    if papers:
        return RECIPES[papers[0]].config(dataset, arg)
    for recipe in RECIPES.values():
        if words[0] in recipe.METHODS:
            return recipe.config(dataset, arg)
    offered = sorted({m for r in RECIPES.values() for m in r.METHODS}
                     | {t for r in RECIPES.values() for t in r.tables(dataset, config_file)})
    raise ConfigError(f"unknown method or table {words[0]!r} in the config argument; "
                      f"{dataset} offers {offered}")
