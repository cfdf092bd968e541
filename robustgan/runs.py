"""Finished runs as inputs to other runs: loading, run references, warm starts, resume guard.

A run directory holds config.json (the run's config), run.json (what it was built on:
input shape and class count) and checkpoints/. `load_run` rebuilds its Method and state
from those alone, without reading data. A config refers to other runs by run
references: config keys (`config.reference_keys`: config.init_from.run and the keys a
method declares, e.g. config.eat.sources) whose values are run directories, or in a table
the names of earlier rows (`table.py` rewrites them). `linked_runs` loads a method's
references before the method is built; `warm_start` applies config.init_from;
`evaluated_classifier` puts a classifier behind config.front_end.run's front end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from robustgan import checkpoint, methods
from robustgan import config as configlib
from robustgan.attacks import adaptive
from robustgan.errors import ConfigError

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


@dataclasses.dataclass(frozen=True)
class Run:
    """A run restored from its directory: its config, Method and state at `step`, and
    the shape of one input image."""

    workdir: str
    config: ml_collections.ConfigDict
    method: methods.Method
    state: Any
    step: int
    input_shape: tuple[int, ...]

    def classifier(self):
        """The run's Classifier as it is evaluated (`evaluated_classifier`); a ConfigError
        for a method that trains none."""
        if self.method.classifier is None:
            raise ConfigError(f"{self.workdir} trained {self.config.method!r}, which produces "
                              "no classifier; name a run that does")
        return evaluated_classifier(self.config, self.method, self.state)

    def network(self, name: str):
        """The NetState of network `name` (a ConfigError naming the ones it has)."""
        if name not in self.method.networks:
            raise ConfigError(f"{self.workdir} ({self.config.method}) has no network "
                              f"{name!r}; it has {sorted(self.method.networks)}")
        return self.method.network(self.state, name)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config.json of the run in workdir, or a ConfigError saying to train it first.
    Keys added to the schema after the run was trained take their defaults."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{workdir!r} holds no trained run (no {CONFIG_FILE}); train it "
                          "there first (--mode train)")
    with open(path) as f:
        saved = json.load(f)
    return ml_collections.ConfigDict(_merged(configlib.base_config().to_dict(), saved))


def _merged(defaults: dict, saved: dict) -> dict:
    """defaults with saved's values, recursively (saved wins)."""
    out = dict(defaults)
    for key, value in saved.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def write_run_files(config, workdir: str, input_shape) -> None:
    """config.json and run.json: what `load_run` needs to rebuild the run without data."""
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
        json.dump({"input_shape": list(input_shape),
                   "num_classes": config.data.num_classes}, f)


def _input_shape(config, workdir: str) -> tuple[int, ...]:
    """One image's shape, from run.json; runs written before it existed read their data."""
    path = os.path.join(workdir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return tuple(json.load(f)["input_shape"])
    from robustgan import data

    return data.load_dataset(config.data).image_shape


def init_key(config) -> jax.Array:
    """The key a run's initial state is drawn with (its seed's first split)."""
    return jax.random.split(jax.random.key(config.seed))[0]


def references(config) -> dict[str, tuple[str, ...]]:
    """{reference key: the run references it holds} for config's non-empty references."""
    out = {}
    for key in configlib.reference_keys(config):
        value = configlib.get(config, key)
        refs = (value,) if isinstance(value, str) else tuple(value)
        if any(refs):
            out[key] = refs
    return out


def linked_runs(config) -> dict[str, tuple[Run, ...]]:
    """{key: the loaded runs} for each reference key the method of config declares."""
    spec = methods.spec(config.method)
    return {key: tuple(load_run(path) for path in refs)
            for key, refs in references(config).items() if key in spec.references}


def build_method(config) -> methods.Method:
    """config's Method, its references loaded."""
    return methods.build(config, config.data.num_classes, linked_runs(config))


def load_run(workdir: str, step: int | None = None) -> Run:
    """The finished (or latest checkpointed) run in workdir, without reading its data."""
    config = read_config(workdir)
    method = build_method(config)
    input_shape = _input_shape(config, workdir)
    sample = jax.ShapeDtypeStruct((1, *input_shape), np.float32)
    template = jax.eval_shape(method.init, init_key(config), sample)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, CHECKPOINTS), config.keep_checkpoints)
    try:
        step = ckpts.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"no checkpoint in {workdir}: train first (--mode train)")
        return Run(os.path.abspath(workdir), config, method, ckpts.restore(template, step),
                   step, input_shape)
    finally:
        ckpts.close()


def front_end(config) -> tuple[adaptive.FrontEndFn, Any]:
    """(front end, its variables) that the run config.front_end.run offers to the run of
    `config` (its method's `MethodSpec.front_end`, given config's settings for it); a
    ConfigError if that run's method offers none or its data range differs."""
    source = load_run(config.front_end.run)
    builder = methods.spec(source.config.method).front_end
    if builder is None:
        offering = sorted(n for n, s in methods.REGISTRY.items() if s.front_end is not None)
        raise ConfigError(f"config.front_end.run={config.front_end.run!r} trained "
                          f"{source.config.method!r}, which offers no front end; name a run "
                          f"of {offering}")
    here, there = (tuple(c.data.value_range) for c in (config, source.config))
    if here != there:
        raise ConfigError(f"config.front_end.run={config.front_end.run!r} works on data in "
                          f"{there}; this run's data.value_range is {here}")
    return builder(config, source)


def evaluated_classifier(config, method: methods.Method, state):
    """The Classifier a run of `config` is evaluated as: its method's, behind the front end
    of config.front_end.run when set (`attacks.with_front_end`: Defense-GAN, Samangouei et
    al. Sec. 3.2); None for a method that trains no classifier."""
    if method.classifier is None:
        return None
    classifier = method.classifier(state)
    if not config.front_end.run:
        return classifier
    return adaptive.with_front_end(*front_end(config), classifier)


def resolve(config, names: dict[str, str]) -> ml_collections.ConfigDict:
    """A copy of config with each run reference that is a key of `names` (a table's row
    name) replaced by names[ref] (its run directory)."""
    resolved = config.copy_and_resolve_references()
    for key, refs in references(config).items():
        paths = tuple(names.get(ref, ref) for ref in refs)
        value = configlib.get(config, key)
        parent, _, leaf = key.rpartition(".")
        configlib.get(resolved, parent)[leaf] = paths[0] if isinstance(value, str) else paths
    return resolved


def warm_start(method: methods.Method, state, config):
    """state with config.init_from's networks taken from that run (params and BatchNorm
    averages; each network's step and optimizer state stay as initialized). Loaded here,
    outside the compiled step (big_vision's model_init)."""
    if not config.init_from.run:
        return state
    source = load_run(config.init_from.run)
    names = tuple(config.init_from.networks) or tuple(
        n for n in method.networks if n in source.method.networks)
    if not names:
        raise ConfigError(f"config.init_from.run={config.init_from.run!r} shares no network "
                          f"with {config.method!r} (it has {sorted(source.method.networks)}, "
                          f"this run {sorted(method.networks)})")
    for name in names:
        if name not in method.networks:
            raise ConfigError(f"config.init_from.networks names {name!r}; {config.method!r} "
                              f"has {sorted(method.networks)}")
        net, loaded = method.network(state, name), source.network(name)
        _check_same_shapes(name, (net.params, net.batch_stats),
                           (loaded.params, loaded.batch_stats), config.init_from.run)
        state = method.with_network(state, name, net.replace(
            params=jax.device_get(loaded.params), batch_stats=jax.device_get(loaded.batch_stats)))
    return state


def _check_same_shapes(name: str, expected, loaded, run: str) -> None:
    """Stops naming the first leaf of `loaded` whose path or shape differs from
    `expected`'s (both (params, batch_stats))."""
    shapes = [{jax.tree_util.keystr(path): np.shape(leaf)
               for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
              for tree in (expected, loaded)]
    for key in sorted(shapes[0].keys() | shapes[1].keys()):
        here, there = (s.get(key) for s in shapes)
        if here != there:
            raise ConfigError(
                f"config.init_from: network {name!r} of {run} does not fit this run's: "
                f"{key} is {there} there and {here} here (another architecture?)")


def check_same_run(config, workdir: str) -> None:
    """Refuses to resume a checkpoint that another config trained (its config.json differs
    in a key outside `config.resumable_keys`), rather than silently continuing the old run
    under the new settings."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = traverse_util.flatten_dict(json.load(f), sep=".")
    current = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
    resumable = configlib.resumable_keys(config)
    # Keys only one side has are left out: a key added to the code since the run started
    # takes its default, which is not evidence of a change.
    changed = sorted(k for k in saved.keys() & current.keys()
                     if saved[k] != current[k] and not configlib.is_resumable(k, resumable))
    if changed:
        details = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(
            f"{workdir} holds a checkpoint of a different config ({details}); resuming would "
            f"continue that run under the new settings. Use a new --workdir, or restore "
            f"those values to resume it."
        )
