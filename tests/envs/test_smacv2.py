"""SMACv2: config building, dependency errors, and the adapter's translation against a test double.

StarCraft II is not available here, so `FakeStarCraft2Env` implements the documented interface of
smacv2's ``StarCraft2Env`` (``get_env_info``, ``reset``, ``step -> (reward, terminated, info)``,
``get_obs_agent``, ``get_state``, ``get_avail_agent_actions``, ``close``) with a scripted battle.
"""

import importlib.machinery
import importlib.util
import sys
import types
import warnings

import gymnasium as gym
import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from wmenv.envs import make
from wmenv.envs.smacv2 import (
    PAPER_SCENARIOS,
    SMACv2Adapter,
    capability_config,
    check_smacv2_installed,
    parse_scenario,
    smacv2_env_kwargs,
)

N_AGENTS, N_ENEMIES, LIMIT = 3, 3, 5
N_ACTIONS = 6 + N_ENEMIES  # no-op, stop, 4 moves, one attack per enemy


class FakeStarCraft2Env:
    """Scripted battle: agent 1 dies on step 2; the battle is won on step 3 (``"win"``), lost on step 3
    (``"defeat"``, every ally dies) or runs into the step limit on step 5 (``"timeout"``)."""

    def __init__(self, outcome="win"):
        self.outcome = outcome
        self.n_agents, self.n_enemies, self.episode_limit = N_AGENTS, N_ENEMIES, LIMIT
        self.sent = []
        self.closed = False

    def get_env_info(self):
        return {
            "state_shape": 11,
            "obs_shape": 7,
            "cap_shape": 2,
            "n_actions": N_ACTIONS,
            "n_agents": N_AGENTS,
            "episode_limit": LIMIT,
        }

    def reset(self):
        self.t, self.dead = 0, set()
        return [self.get_obs_agent(i) for i in range(N_AGENTS)], self.get_state()

    def step(self, actions):
        for i, a in enumerate(actions):
            assert self.get_avail_agent_actions(i)[a] == 1, f"Agent {i} cannot perform action {a}"
        self.sent.append(list(actions))
        self.t += 1
        if self.t == 2:
            self.dead.add(1)
        info = {"battle_won": False}
        ended = False
        if self.t == 3 and self.outcome == "win":
            ended, info["battle_won"] = True, True
        elif self.t == 3 and self.outcome == "defeat":
            self.dead |= set(range(N_AGENTS))
            ended = True
        elif self.t >= LIMIT:
            ended = True
        info["dead_allies"], info["dead_enemies"] = len(self.dead), 3 if info["battle_won"] else 0
        return 0.25 * self.t, ended, info

    def get_obs_agent(self, agent_id):
        if agent_id in self.dead:
            return np.zeros(7, np.float32)
        return np.full(7, 10 * self.t + agent_id, np.float32)

    def get_state(self):
        return np.arange(11, dtype=np.float32) + self.t

    def get_avail_agent_actions(self, agent_id):
        if agent_id in self.dead:
            return [1] + [0] * (N_ACTIONS - 1)
        avail = [0, 1, 1, 1, 1, 1] + [0] * N_ENEMIES
        avail[6 + (self.t + agent_id) % N_ENEMIES] = 1  # one enemy in range, changing every step
        return avail

    def close(self):
        self.closed = True


def _env(outcome="win", **kw):
    return SMACv2Adapter(FakeStarCraft2Env(outcome), id="smacv2:test", **kw)


def test_spec_from_env_info():
    spec = _env().env_spec
    assert spec.agents == ("agent_0", "agent_1", "agent_2")
    assert (spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) == (7, 11, 9, 5)
    assert spec.action_masked and spec.discrete


def test_reset_translates_obs_masks_state():
    env = _env()
    obs, infos = env.reset()
    np.testing.assert_array_equal(obs["agent_2"], 2)
    np.testing.assert_array_equal(infos["agent_1"]["action_mask"], [0, 1, 1, 1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(env.state(), np.arange(11))
    assert env.state().dtype == np.float32


def test_death_removes_agent_and_sends_noop_for_it():
    env = _env()
    env.reset()
    _, rew, term, trunc, infos = env.step({"agent_0": 1, "agent_1": 2, "agent_2": 3})
    assert rew == {"agent_0": 0.25, "agent_1": 0.25, "agent_2": 0.25}  # the team reward, to everyone
    _, rew, term, trunc, infos = env.step({"agent_0": 1, "agent_1": 1, "agent_2": 1})
    assert term == {"agent_0": False, "agent_1": True, "agent_2": False} and not any(trunc.values())
    assert env.agents == ["agent_0", "agent_2"] and "action_mask" not in infos["agent_1"]
    assert infos["agent_0"]["dead_allies"] == 1
    obs, rew, term, trunc, infos = env.step({"agent_0": 4, "agent_2": 5})
    assert env.env.sent[-1] == [4, 0, 5]  # the dead agent gets SMAC's no-op
    assert set(rew) == {"agent_0", "agent_2"} and rew["agent_0"] == 0.75


@pytest.mark.parametrize(("outcome", "steps", "terminated"), [("win", 3, True), ("defeat", 3, True), ("timeout", 5, False)])
def test_battle_end_terminates_time_limit_truncates(outcome, steps, terminated):
    env = _env(outcome)
    env.reset()
    for _ in range(steps):
        _, _, term, trunc, infos = env.step(dict.fromkeys(env.agents, 1))
    assert env.agents == []
    assert term == {"agent_0": terminated, "agent_2": terminated}
    assert trunc == {"agent_0": not terminated, "agent_2": not terminated}
    assert infos["agent_0"]["battle_won"] == (outcome == "win")


def test_masked_action_raises_or_becomes_first_allowed():
    env = _env()
    env.reset()
    msg = r"actions\['agent_0'\]: action 0 is masked; available actions are \[1, 2, 3, 4, 5, 6\]"
    with pytest.raises(ValueError, match=msg):
        env.step({"agent_0": 0, "agent_1": 1, "agent_2": 1})
    with pytest.raises(ValueError, match=r"actions\['agent_2'\]: expected an integer in \[0, 9\), got 9"):
        env.step({"agent_0": 1, "agent_1": 1, "agent_2": 9})
    noop = _env(masked_action="noop")
    noop.reset()
    noop.step({"agent_0": 8, "agent_1": 1, "agent_2": 1})
    assert noop.env.sent[-1] == [1, 1, 1]


def test_parallel_api_on_double():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(_env("timeout", masked_action="noop"), num_cycles=20)
    assert not [str(w.message) for w in caught if "agent" in str(w.message).lower() and "seed" not in str(w.message)]


def test_reset_seed_warns_and_close_closes():
    env = _env()
    with pytest.warns(UserWarning, match="SMACv2 cannot be re-seeded per episode"):
        env.reset(seed=3)
    env.close()
    assert env.env.closed


# --- config building ---
def test_parse_scenario():
    assert parse_scenario("zerg_10_vs_11") == ("zerg", 10, 11)
    assert len(PAPER_SCENARIOS) == 15 and "terran_20_vs_23" in PAPER_SCENARIOS
    for bad in ["protoss_5v5", "orc_5_vs_5", "protoss_0_vs_5", 5]:
        with pytest.raises(ValueError, match=r"name: expected '<protoss\|terran\|zerg>_<allies>_vs_<enemies>'"):
            parse_scenario(bad)


def test_env_kwargs_match_smacv2_example_configs():
    kw = smacv2_env_kwargs("zerg_10_vs_11", seed=5)
    assert kw["map_name"] == "10gen_zerg" and kw["seed"] == 5
    assert kw["capability_config"] == {
        "n_units": 10,
        "n_enemies": 11,
        "team_gen": {
            "dist_type": "weighted_teams",
            "unit_types": ["zergling", "baneling", "hydralisk"],
            "weights": [0.45, 0.1, 0.45],
            "observe": True,
            "exception_unit_types": ["baneling"],
        },
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32},
    }
    for key, value in {
        "use_unit_ranges": True,
        "min_attack_range": 2,
        "obs_own_pos": True,
        "conic_fov": False,
        "reward_scale_rate": 20,
        "difficulty": "7",
        "state_last_action": True,
        "prob_obs_enemy": 0,
    }.items():
        assert kw[key] == value, key
    protoss = capability_config("protoss", 5, 5)["team_gen"]
    assert protoss["unit_types"] == ["stalker", "zealot", "colossus"] and "exception_unit_types" not in protoss
    terran = capability_config("terran", 5, 5)["team_gen"]
    assert terran["weights"] == [0.45, 0.45, 0.1] and terran["exception_unit_types"] == ["medivac"]
    a = capability_config("terran", 5, 5)
    a["team_gen"]["n_units"] = 99  # smacv2 mutates its config: every call must give a fresh one
    assert "n_units" not in capability_config("terran", 5, 5)["team_gen"]


# --- dependency checks ---
def test_missing_smacv2_package():
    if "smacv2" in sys.modules or importlib.util.find_spec("smacv2") is not None:
        pytest.skip("smacv2 is installed")
    with pytest.raises(gym.error.DependencyNotInstalled) as e:
        make("smacv2:protoss_5_vs_5")
    msg = str(e.value)
    assert "pip install git+https://github.com/oxwhirl/smacv2.git" in msg
    assert "StarCraft II 4.10" in msg and "SC2PATH" in msg and "Maps/SMAC_Maps" in msg


@pytest.fixture
def fake_smacv2(monkeypatch):
    """Pretend smacv2 is installed: its ``StarCraftCapabilityEnvWrapper`` records kwargs and plays the double."""
    made = {}

    class Wrapper(FakeStarCraft2Env):
        def __init__(self, **kwargs):
            made.update(kwargs)
            super().__init__("win")

    pkg = types.ModuleType("smacv2")
    pkg.__spec__ = importlib.machinery.ModuleSpec("smacv2", None)
    env_mod = types.ModuleType("smacv2.env")
    env_mod.StarCraftCapabilityEnvWrapper = Wrapper
    monkeypatch.setitem(sys.modules, "smacv2", pkg)
    monkeypatch.setitem(sys.modules, "smacv2.env", env_mod)
    return made


def test_missing_starcraft_binary_then_maps(fake_smacv2, tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    msg = r"StarCraft II was not found: no .*Versions/Base\*/SC2_x64.*SC2\.4\.10"
    with pytest.raises(gym.error.DependencyNotInstalled, match=msg):
        make("smacv2:terran_5_vs_5")
    binary = tmp_path / "Versions" / "Base75689" / "SC2_x64"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    msg = r"SMAC maps were not found: no .*Maps/SMAC_Maps/32x32_flat\.SC2Map"
    with pytest.raises(gym.error.DependencyNotInstalled, match=msg):
        check_smacv2_installed()
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    (tmp_path / "Maps" / "SMAC_Maps" / "32x32_flat.SC2Map").write_bytes(b"")
    check_smacv2_installed()  # everything in place


def test_make_builds_wrapper_with_config(fake_smacv2, tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    (tmp_path / "Versions" / "Base75689").mkdir(parents=True)
    (tmp_path / "Versions" / "Base75689" / "SC2_x64").write_bytes(b"")
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    (tmp_path / "Maps" / "SMAC_Maps" / "32x32_flat.SC2Map").write_bytes(b"")
    env, spec = make("smacv2:protoss_10_vs_11", seed=7, reward_sparse=True, masked_action="noop")
    assert fake_smacv2["map_name"] == "10gen_protoss" and fake_smacv2["seed"] == 7 and fake_smacv2["reward_sparse"]
    assert fake_smacv2["capability_config"]["n_enemies"] == 11
    assert spec.id == "smacv2:protoss_10_vs_11" and env.masked_action == "noop"
    assert spec.extra["race"] == "protoss" and spec.extra["n_enemies"] == 11
    obs, infos = env.reset()
    assert set(obs) == set(spec.agents) and "action_mask" in infos["agent_0"]
