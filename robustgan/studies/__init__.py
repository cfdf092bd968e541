"""Studies: experiments beyond one results table, each a module with
`run(config, workdir) -> results` that owns its measurements and report, registered below
by the name a study config carries (config.study.name, `config.study_config`).

`python -m robustgan.main --config <file>:<study> --mode study --workdir DIR` runs one.
A new study is a module here plus one line in STUDIES (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from robustgan.errors import ConfigError
from robustgan.studies import (
    deep_defense,
    defense_gan_detection,
    generator_attacks,
    gradreg,
    l2l_da_recursion,
)

STUDIES = {
    "gradreg": gradreg.run,
    "generator_attacks": generator_attacks.run,
    "deep_defense_table1": deep_defense.table1,
    "deep_defense_sweep": deep_defense.sweep,
    "defense_gan_detection": defense_gan_detection.run,
    "l2l_da_recursion": l2l_da_recursion.run,
}


def run(config, workdir: str) -> dict:
    """Runs the study config.study.name names."""
    name = config.study.name
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose one of {sorted(STUDIES)}")
    return STUDIES[name](config, workdir)
