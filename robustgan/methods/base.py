"""What a training method is to the rest of robustgan: a `Method` (the pure functions
`train.py` runs) built by a `MethodSpec` (what the platform knows before building it:
its config block, validation, run references and resumable keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from robustgan.attacks.adaptive import FrontEndFn
from robustgan.classifier import Classifier

State = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Method:
    """init(rng, sample_x) -> state; train_step(state, x, y, rng) -> (state, metrics);
    classifier(state) -> the Classifier that attacks and evaluation see, or None for a
    method whose training produces no classifier (a GAN): it is trained and checkpointed
    like any other and not evaluated.

    networks: network name -> attribute of the state that holds its `nets.NetState`
    ('' for the state itself). Names are shared across methods ('classifier',
    'generator', 'critic'), so `config.init_from` can warm-start one method's network
    from another method's run.
    """

    init: Callable[[jax.Array, jax.Array], State]
    train_step: Callable[[State, jax.Array, jax.Array, jax.Array], tuple[State, Metrics]]
    classifier: Callable[[State], Classifier] | None
    networks: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"classifier": ""})

    def network(self, state: State, name: str):
        """The NetState of network `name` in `state`."""
        path = self.networks[name]
        return getattr(state, path) if path else state

    def with_network(self, state: State, name: str, net) -> State:
        """`state` with network `name` replaced by `net`."""
        path = self.networks[name]
        return state.replace(**{path: net}) if path else net


# (config, num_classes, runs) -> Method. runs maps each of the spec's reference keys to
# the finished runs it names (`runs.Run`), loaded before the method is built.
Builder = Callable[[ml_collections.ConfigDict, int, Mapping[str, tuple]], Method]
# (config of the run it defends, a loaded run of this method (`runs.Run`)) ->
# (front end, its variables): the input transformation a classifier run is put behind
# when its config.front_end.run names a run of this method (`attacks.with_front_end`).
FrontEndBuilder = Callable[[ml_collections.ConfigDict, Any], tuple[FrontEndFn, Any]]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    name: config.method's value.
    build: the Builder.
    defaults: () -> the method's own config block, stored as config.<name> (None: the
      method has no settings of its own).
    validate: (config) -> None, raising ConfigError, run when config.method is this one.
    references: config keys whose values name finished runs (a run directory, or in a
      table a row name), loaded and handed to `build`.
    resumable: config keys a resumed run may change without changing what it trains
      (beyond config.RESUMABLE_KEYS): references, and evaluation-time settings.
    front_end: the FrontEndBuilder of the front end this method's runs offer to the
      classifier runs that name them in config.front_end.run (None: none).
    front_end_keys: keys (or prefixes ending in '.') of the defended run's config that
      the front end reads: evaluation settings of that run, unless it trains on the
      front end's outputs (config.front_end.train).
    attack_generator: (a finished run of this method, `runs.Run`) -> the keyword
      arguments with which a generator column that starts from a trained generator (the
      L2L-DA attack, Jang et al. Table 2) takes this run's: the module, its variables
      and the settings it was trained with (None: this method offers none).
    """

    name: str
    build: Builder
    defaults: Callable[[], ml_collections.ConfigDict] | None = None
    validate: Callable[[ml_collections.ConfigDict], None] = lambda config: None
    references: tuple[str, ...] = ()
    resumable: tuple[str, ...] = ()
    front_end: FrontEndBuilder | None = None
    front_end_keys: tuple[str, ...] = ()
    attack_generator: Callable[[Any], dict] | None = None
