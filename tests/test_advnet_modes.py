"""advnet end to end for the gradreg modes and generators test_advnet.py does not run."""

import jax
import pytest
from test_advnet import train_and_check


@pytest.fixture(autouse=True)
def fast_keys():
    """'rbg' keys only make initialization faster to compile on CPU than threefry."""
    with jax.default_prng_impl("rbg"):
        yield


@pytest.mark.parametrize("gradreg,generator", [("none", "g1"), ("authors_code", "g3")])
def test_gradreg_mode_and_generator_train(tmp_path, gradreg, generator):
    train_and_check(tmp_path, gradreg, generator)
