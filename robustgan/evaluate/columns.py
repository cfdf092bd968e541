"""Evaluation columns by name: attack specs as a paper's table names them.

A spec is `[label=]expr`, expr one of
  - an attack name: fgsm, fgsm_predicted, rand_fgsm, ll_fgs, pgd, pgd_margin, apgd_ce,
    apgd_dlr, cw_l2, deepfool, random_search (which needs `samples`);
  - an attack with settings: `pgd(steps=40)`, `cw_l2(steps=100, learning_rate=10,
    initial_const=100, binary_steps=1)`, `pgd(eps=1.0, steps=100, step_size=0.01)`;
  - a wrapper around another expr: `bpda(pgd)` (the attack sees the classifier's
    front-end through BPDA's identity backward pass, Athalye et al. Sec. 4.1; a
    classifier without one is attacked as it is), or
    `eot(pgd, 10)` (the attack's loss averaged over 10 draws of the classifier's
    randomness, Sec. 4.3);
  - a generator column (`attacks.GENERATOR_ATTACKS`): `advgan(num_steps=200)`,
    `gap(num_steps=200)`, `l2l_da_attack(start="L2L-DA (full)", num_steps=20)`, a
    generator trained against the classifier it attacks (Jang et al. Table 2: "each
    fine-tuned to its corresponding classifier") on the training split before the column
    runs (`protocol.train_generator_columns`); `start` names the finished run (a run
    directory, or in a table a row name) whose trained generator it starts from.
The label (default: the spec as written) names the column. Every column is scored on
the evaluated classifier itself: a wrapper changes what the attacker sees, never what is
judged.

Settings left out take the evaluation config's values: eps = config.eval.eps for attacks
bounded by an eps (pixel units); PGD's steps, restarts and step size from eval.pgd_*, the
step size kept at the same fraction of eps (so `pgd(eps=0.1)` steps eps/4 when the
config's PGD does); the rest the attack's own defaults. Unknown names and settings stop
with an error naming the spec.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any

from robustgan import attacks
from robustgan.errors import ConfigError

# Named attacks beyond the registry's: (registry attack, fixed settings).
VARIANTS = {"pgd_margin": ("pgd", {"loss": "margin"})}
WRAPPERS = ("bpda", "eot")
_LABEL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*(.+)$")


def names() -> tuple[str, ...]:
    """Every attack name a spec may use (wrappers aside)."""
    return (*attacks.ATTACKS, *VARIANTS, *attacks.GENERATOR_ATTACKS)


@dataclasses.dataclass(frozen=True)
class GeneratorColumn:
    """A column whose attack is `attacks.GENERATOR_ATTACKS[name]` trained with `settings`
    ((key, value) pairs; 'start': the run whose generator it starts from) before it runs."""

    name: str
    settings: tuple


# A generator column's settings that are not the trainer's keywords, and the trainer's
# keywords a spec does not set (the data and the run context, or what `start` gives).
START = "start"
_GENERATOR_CONTEXT = ("classifier", "x", "y", "rng", "mesh", "progress", "optimizer",
                      "generator", "discriminator", "unroll")
_FROM_START = ("module", "variables")


def generator_settings(name: str) -> dict[str, inspect.Parameter]:
    """The settings a spec may give the generator column `name`."""
    parameters = inspect.signature(attacks.GENERATOR_ATTACKS[name]).parameters
    out = {k: p for k, p in parameters.items() if k not in _GENERATOR_CONTEXT + _FROM_START}
    if any(k in parameters for k in _FROM_START):  # a trained generator to start from
        for k in _FROM_START:
            out.pop(k, None)
        out[START] = inspect.Parameter(START, inspect.Parameter.KEYWORD_ONLY)
    return out


@dataclasses.dataclass(frozen=True)
class Wrapped:
    """An attack run on `wrap(classifier, *args)` instead of the classifier."""

    attack: Callable
    wrap: Callable
    args: tuple = ()

    def __call__(self, classifier, x, y, rng=None):
        return self.attack(self.wrap(classifier, *self.args), x, y, rng)


def bpda_column(classifier):
    """BPDA for a column: a classifier without a front end (the undefended row of a table
    of defended ones) is attacked as it is, there being nothing to approximate."""
    return attacks.bpda(classifier) if attacks.has_front_end(classifier) else classifier


def label_and_expr(spec: str) -> tuple[str, str]:
    """('pgd40', 'pgd(steps=40)') for 'pgd40=pgd(steps=40)'; the spec is its own label."""
    match = _LABEL.match(spec)
    if match:
        return match.group(1), match.group(2).strip()
    return spec.strip(), spec.strip()


def parse(spec: str, eval_config) -> tuple[str, Callable | GeneratorColumn]:
    """(column label, attack function (classifier, x, y, rng) -> x_adv, or the
    GeneratorColumn to train first) for a spec."""
    label, expr = label_and_expr(spec)
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"attack spec {spec!r} is not of the form name(setting=value, ...)"
                          ) from e
    return label, _build(tree, spec, eval_config)


def _literal(node, spec: str):
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise ConfigError(f"attack spec {spec!r}: settings must be literal values, got "
                          f"{ast.unparse(node)!r}") from e


def _build(node, spec: str, eval_config) -> Callable:
    if isinstance(node, ast.Name):
        name, args, settings = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name, args = node.func.id, node.args
        settings = {k.arg: _literal(k.value, spec) for k in node.keywords}
    else:
        raise ConfigError(f"attack spec {spec!r}: expected an attack name or call, got "
                          f"{ast.unparse(node)!r}")
    if name in WRAPPERS:
        return _wrapper(name, args, settings, spec, eval_config)
    if args:
        raise ConfigError(f"attack spec {spec!r}: {name} takes settings by keyword only")
    return attack(name, eval_config, spec=spec, **settings)


def _wrapper(name, args, settings, spec: str, eval_config) -> Callable:
    if not args:
        raise ConfigError(f"attack spec {spec!r}: {name}(...) wraps an attack: {name}(pgd)")
    inner = _build(args[0], spec, eval_config)
    if isinstance(inner, GeneratorColumn):
        raise ConfigError(f"attack spec {spec!r}: {name} wraps a gradient attack; a "
                          f"generator column trains against the classifier as it is")
    extra = [_literal(a, spec) for a in args[1:]]
    if name == "bpda":
        if extra or settings:
            raise ConfigError(f"attack spec {spec!r}: bpda takes only the attack (its "
                              "backward pass is the identity)")
        return Wrapped(inner, bpda_column)
    samples = settings.pop("samples", extra[0] if extra else None)
    if settings or len(extra) > 1 or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"attack spec {spec!r}: write eot(<attack>, <number of draws>)")
    return Wrapped(inner, attacks.eot, (samples,))


def attack(name: str, eval_config, *, spec: str | None = None, **settings) -> Callable:
    """The attack `name` with `settings`, the rest from eval_config (module docstring)."""
    spec = spec or name
    if name in attacks.GENERATOR_ATTACKS:
        return generator_column(name, eval_config, spec=spec, **settings)
    base, fixed = VARIANTS.get(name, (name, {}))
    if base not in attacks.ATTACKS:
        raise ConfigError(f"attack spec {spec!r}: unknown attack {name!r}; choose one of "
                          f"{names()} or wrap one in {WRAPPERS}")
    parameters = attacks.settings(base)
    unknown = sorted(set(settings) - set(parameters))
    if unknown:
        raise ConfigError(f"attack spec {spec!r}: {name} has no setting(s) {unknown}; it "
                          f"takes {sorted(parameters)}")
    allowed = set(parameters)
    values: dict[str, Any] = {**fixed, **settings}
    e = eval_config
    if "eps" in allowed:
        values.setdefault("eps", e.eps)
    if base == "pgd":
        values.setdefault("steps", e.pgd_steps)
        values.setdefault("restarts", e.pgd_restarts)
        values.setdefault("random_start", True)
        values.setdefault("step_size", e.pgd_step_size * values["eps"] / e.eps if e.eps
                          else e.pgd_step_size)
    missing = sorted(k for k, p in parameters.items()
                     if p.default is inspect.Parameter.empty and k not in values)
    if missing:
        raise ConfigError(f"attack spec {spec!r}: {name} needs the setting(s) {missing}, "
                          f"e.g. {name}({missing[0]}=...)")
    return attacks.make_attack(base, **values)


def generator_column(name: str, eval_config, *, spec: str, **settings) -> GeneratorColumn:
    """The generator column `name` with `settings`; eps defaults to eval_config.eps."""
    parameters = generator_settings(name)
    unknown = sorted(set(settings) - set(parameters))
    if unknown:
        raise ConfigError(f"attack spec {spec!r}: {name} has no setting(s) {unknown}; it "
                          f"takes {sorted(parameters)}")
    settings.setdefault("eps", eval_config.eps)
    missing = sorted(k for k, p in parameters.items()
                     if p.default is inspect.Parameter.empty and k not in settings)
    if missing:
        raise ConfigError(f"attack spec {spec!r}: the generator column {name} needs the "
                          f"setting(s) {missing}, e.g. {name}({missing[0]}=...)")
    return GeneratorColumn(name, tuple(sorted(settings.items())))


def white_box(eval_config, specs=None) -> dict[str, Callable | GeneratorColumn]:
    """{label: attack or GeneratorColumn} for `specs` (default config.eval.attacks);
    labels must differ."""
    specs = tuple(eval_config.attacks if specs is None else specs)
    out = {}
    for spec in specs:
        label, fn = parse(spec, eval_config)
        if label in out or label in ("clean", "min"):
            raise ConfigError(f"attack spec {spec!r}: column label {label!r} is taken; give "
                              f"it another with <label>=<spec>")
        out[label] = fn
    return out
