"""ltg_loc: where ltg puts the cleanest patch, set per config (docs/where_it_pays.md)."""

from __future__ import annotations

import pytest

from patchforcing.errors import ConfigError
from patchforcing.training import resolve_config


def test_ltg_loc_sets_the_distributions_loc_and_an_explicit_option_wins():
    assert resolve_config("digits", ltg_loc=0.0).timestep_params()["loc"] == 0.0
    assert resolve_config("digits", ltg_loc=0.0, timestep_options="loc=0.3").timestep_params() == {"loc": 0.3}
    assert resolve_config("digits-t2i", ltg_loc=0.1).timestep_params() == {"loc": 0.1}


def test_ltg_loc_is_ignored_by_global_time_distributions():
    cfg = resolve_config("digits", ltg_loc=0.0, timesteps="uniform")
    assert cfg.timestep_params() == {}
    assert resolve_config("digits-sit", ltg_loc=0.0).timestep_params() == {}


def test_ltg_loc_must_be_finite():
    with pytest.raises(ConfigError, match="ltg_loc"):
        resolve_config("digits", ltg_loc=float("nan"))
