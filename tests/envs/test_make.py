"""`wmenv.envs.make`: id parsing, unknown ids, bad keyword arguments per family."""

import pytest

from wmenv.envs import KNOWN_IDS, make


@pytest.mark.parametrize("bad_id", ["nope:thing", "mpe", "mpe:", ":simple_spread_v3", "flatland:7"])
def test_unknown_id_lists_known_ids(bad_id):
    with pytest.raises(ValueError) as e:
        make(bad_id)
    msg = str(e.value)
    if bad_id == "flatland:7":  # a known family, unknown preset: the family lists its own names
        assert "'7'" in msg and "['5', '10', '15']" in msg
    else:
        assert repr(bad_id) in msg
        for known in KNOWN_IDS:
            assert known in msg


def test_non_string_id():
    with pytest.raises(TypeError, match="id: expected a string"):
        make(5)


@pytest.mark.parametrize(
    ("env_id", "pattern"),
    [
        ("mpe:simple_spread_v3", "bogus"),
        ("gym:CartPole-v1", "bogus"),
        ("pettingzoo:pettingzoo.classic.rps_v2", "bogus"),
        ("flatland:5", r"unknown keyword arguments \['bogus'\]; FlatlandConfig fields are"),
    ],
)
def test_unknown_keyword_is_a_type_error_naming_it(env_id, pattern):
    with pytest.raises(TypeError, match=pattern):
        make(env_id, bogus=1)


@pytest.mark.parametrize(
    ("env_id", "kwargs", "pattern"),
    [
        ("mpe:simple_spread_v3", {"max_cycles": 0}, "max_cycles: expected a positive int, got 0"),
        ("flatland:5", {"n_agents": 0}, "FlatlandConfig.n_agents: expected an int >= 1, got 0"),
        ("flatland:5", {"malfunction_rate": 2.0}, r"FlatlandConfig.malfunction_rate: expected a rate in \[0, 1\], got 2.0"),
        ("mpe:simple_spread_v3", {"masked_action": "ignore"}, "masked_action: expected 'raise' or 'noop', got 'ignore'"),
    ],
)
def test_bad_values_name_the_argument(env_id, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", ["mpe:simple_spread_v3", "gym:CartPole-v1", "pettingzoo:pettingzoo.classic.rps_v2"])
def test_make_returns_env_and_its_spec(env_id):
    env, spec = make(env_id)
    assert spec is env.env_spec and spec.id == env_id
    assert env.possible_agents == list(spec.agents)
    env.close()
