"""Every config the project shipped before the platform refactor (commit d848632) is the
same config after it, but for the keys the protocol fixes changed on purpose; the tiny
runs' numbers are compared in the tests that train them (helpers.assert_matches_recorded).
"""

import json
import os

import pytest
from flax import traverse_util

from robustgan import config as configlib

ROOT = os.path.join(os.path.dirname(__file__), "..")
with open(os.path.join(os.path.dirname(__file__), "recorded", "d848632.json")) as f:
    CONFIGS = json.load(f)["configs"]
TABLES = {spec for spec, c in CONFIGS.items() if "table.title" in c}
# Keys whose values changed on purpose, with the new values' rule.
PAPER_ADVNET = {f"configs/{f}:advnet" for f in (
    "mnist.py", "fashion_mnist.py", "svhn.py", "cifar10.py", "cifar100.py")} | {
    "configs/mnist.py:advnet,exact"}


def flat(config) -> dict:
    f = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
    return {k: v.replace(os.path.abspath(ROOT), "<repo>") if isinstance(v, str) else v
            for k, v in f.items()}


def load(spec):
    cwd = os.getcwd()
    os.chdir(ROOT)  # the specs are relative to the repository, as recorded
    try:
        return configlib.load_config_file(spec)
    finally:
        os.chdir(cwd)


@pytest.fixture(autouse=True)
def as_recorded(monkeypatch):
    """The record was made without ROBUSTGAN_DATA_DIR, which picks local data copies."""
    monkeypatch.delenv("ROBUSTGAN_DATA_DIR", raising=False)


@pytest.mark.parametrize("spec", sorted(set(CONFIGS) - TABLES))
def test_run_configs_are_as_recorded_but_for_the_protocol_fixes(spec):
    old, new = CONFIGS[spec], flat(load(spec))
    # advnet trains on the unclipped adversarial image (Eq. 4 and the authors' code) ...
    assert new.pop("advnet.clip") is False
    # ... and its paper configs evaluate with batch statistics, as the authors did.
    assert new.pop("eval.batch_norm") == ("batch_stats" if spec in PAPER_ADVNET
                                          else old["eval.batch_norm"])
    # rho's DeepFool runs to convergence (50 steps) on valid images, and unclipped.
    assert (old["eval.deepfool_steps"], new.pop("eval.deepfool_steps")) == (10, 50)
    assert {k: v for k, v in old.items() if k in new} == {k: new[k] for k in old if k in new}
    assert set(old) - set(new) == {"advnet.clip", "eval.batch_norm", "eval.deepfool_steps"}


@pytest.mark.parametrize("spec", sorted(TABLES))
def test_tables_and_studies_name_the_recorded_runs_and_settings(spec):
    old, new = CONFIGS[spec], flat(load(spec))
    for key in ("table.title", "table.attacks", "table.eval_num_examples", "table.config_file"):
        assert new[key] == old[key], key
    # The paper's rows were a ConfigDict; they are (name, numbers) pairs now.
    assert {name: list(values) for name, values in new["table.paper"]} == {
        k.removeprefix("table.paper."): v for k, v in old.items()
        if k.startswith("table.paper.")}
    for part in ("rows", "surrogates"):
        assert [r[:3] for r in new[f"table.{part}"]] == old[f"table.{part}"]
    # The EAT row's sources were a table key; they are a run reference of the row now.
    overrides = {r[0]: dict(map(tuple, r[3])) for r in new["table.rows"] if r[3]}
    assert overrides == ({"EAT": {"eat.sources": old["table.eat_sources"]}}
                         if old["table.eat_sources"] else {})
    # Study settings moved from their own block to config.study.
    for key, value in old.items():
        if key.startswith(("study.", "generator_attacks.")):
            assert new["study." + key.split(".", 1)[1]] == value, key

