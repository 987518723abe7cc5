"""SMACv2 (StarCraft Multi-Agent Challenge v2) as a `MultiAgentEnv`.

``make("smacv2:protoss_5_vs_5")`` builds the capability config of SMACv2's own example configs
(``smacv2/examples/configs/sc2_gen_<race>.yaml``): map ``10gen_<race>``, teams drawn with
``weighted_teams`` over the race's three unit types (weights 0.45 / 0.45 / 0.1, with the weak
unit type — medivac, baneling — never making up a whole team), start positions
``surrounded_and_reflect`` (p = 0.5 on the 32 x 32 map), unit ranges on, own position observed,
and the rest of those configs' ``env_args`` (shaped reward scaled to 20, difficulty 7, ...).
Scenario names are ``<race>_<allies>_vs_<enemies>``; the SMACv2 paper uses 5_vs_5, 10_vs_10,
20_vs_20, 10_vs_11 and 20_vs_23.

The view: agents ``agent_0`` ... (SMAC ids 0...); observations from ``get_obs_agent``; masks from
``get_avail_agent_actions``; ``state()`` from ``get_state``; the team reward given to every living
agent; an agent that dies is terminated on that step and leaves ``env.agents`` (SMAC then only
allows it the no-op, which the adapter sends for it). When the battle ends every remaining agent is
terminated; when SMAC's step limit ends it they are truncated. SMACv2 draws its scenarios from
unseeded generators, so only StarCraft II's game seed can be set (``make(..., seed=...)``);
``reset(seed=...)`` cannot make episodes reproducible and warns.

Needs the ``smacv2`` package (not on PyPI) and StarCraft II with the SMAC maps; `make_smacv2`
raises `gymnasium.error.DependencyNotInstalled` saying what is missing and how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from wmenv.envs.base import MaskedAction, MultiAgentEnv
from wmenv.envs.spec import EnvSpec

INSTALL_SMACV2 = "pip install git+https://github.com/oxwhirl/smacv2.git"
INSTALL_SC2 = (
    "download StarCraft II 4.10 for Linux (http://blzdistsc2-a.akamaihd.net/Linux/SC2.4.10.zip, listed at "
    "https://github.com/Blizzard/s2client-proto#downloads; unzip with the EULA password 'iagreetotheeula') "
    "to ~/StarCraftII, or elsewhere and point the SC2PATH environment variable there"
)
INSTALL_MAPS = (
    "copy the SMAC maps of the smacv2 repository (folder smacv2/env/starcraft2/maps/SMAC_Maps, or its SMAC_Maps.zip "
    "unzipped) to $SC2PATH/Maps/SMAC_Maps, so that $SC2PATH/Maps/SMAC_Maps/32x32_flat.SC2Map exists"
)
MAP_FILE = "32x32_flat.SC2Map"
"""The map file every ``10gen_<race>`` scenario plays on."""
PAPER_SCENARIOS = tuple(
    f"{race}_{n}_vs_{m}" for race in ("protoss", "terran", "zerg") for n, m in ((5, 5), (10, 10), (20, 20), (10, 11), (20, 23))
)


class RaceUnits(NamedTuple):
    """Unit types a race's teams are drawn from."""

    unit_types: tuple[str, ...]
    weights: tuple[float, ...]
    exception_unit_types: tuple[str, ...]
    """Types that may not make up a whole team."""


RACES: dict[str, RaceUnits] = {
    "protoss": RaceUnits(("stalker", "zealot", "colossus"), (0.45, 0.45, 0.1), ()),
    "terran": RaceUnits(("marine", "marauder", "medivac"), (0.45, 0.45, 0.1), ("medivac",)),
    "zerg": RaceUnits(("zergling", "baneling", "hydralisk"), (0.45, 0.1, 0.45), ("baneling",)),
}

# env_args shared by SMACv2's example configs sc2_gen_{protoss,terran,zerg}.yaml
EXAMPLE_ENV_ARGS: dict[str, Any] = {
    "continuing_episode": False,
    "difficulty": "7",
    "game_version": None,
    "move_amount": 2,
    "obs_all_health": True,
    "obs_instead_of_state": False,
    "obs_last_action": False,
    "obs_own_health": True,
    "obs_pathing_grid": False,
    "obs_terrain_height": False,
    "obs_timestep_number": False,
    "reward_death_value": 10,
    "reward_defeat": 0,
    "reward_negative_scale": 0.5,
    "reward_only_positive": True,
    "reward_scale": True,
    "reward_scale_rate": 20,
    "reward_sparse": False,
    "reward_win": 200,
    "replay_dir": "",
    "replay_prefix": "",
    "conic_fov": False,
    "use_unit_ranges": True,
    "min_attack_range": 2,
    "obs_own_pos": True,
    "num_fov_actions": 12,
    "state_last_action": True,
    "state_timestep_number": False,
    "step_mul": 8,
    "heuristic_ai": False,
    "debug": False,
    "prob_obs_enemy": 0,
}


def parse_scenario(name: str) -> tuple[str, int, int]:
    """``"protoss_5_vs_5"`` -> ``("protoss", 5, 5)``; ``ValueError`` naming the expected form otherwise."""
    m = re.fullmatch(r"(protoss|terran|zerg)_(\d+)_vs_(\d+)", name) if isinstance(name, str) else None
    if m is None or int(m.group(2)) < 1 or int(m.group(3)) < 1:
        raise ValueError(
            f"name: expected '<protoss|terran|zerg>_<allies>_vs_<enemies>' "
            f"(e.g. {', '.join(PAPER_SCENARIOS[:3])}), got {name!r}"
        )
    return m.group(1), int(m.group(2)), int(m.group(3))


def capability_config(race: str, n_units: int, n_enemies: int, map_size: int = 32) -> dict[str, Any]:
    """SMACv2's capability config for a race and team sizes (a fresh dict: SMACv2 mutates it)."""
    if race not in RACES:
        raise ValueError(f"race: expected one of {sorted(RACES)}, got {race!r}")
    units = RACES[race]
    team_gen: dict[str, Any] = {
        "dist_type": "weighted_teams",
        "unit_types": list(units.unit_types),
        "weights": list(units.weights),
        "observe": True,
    }
    if units.exception_unit_types:
        team_gen["exception_unit_types"] = list(units.exception_unit_types)
    return {
        "n_units": n_units,
        "n_enemies": n_enemies,
        "team_gen": team_gen,
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": map_size, "map_y": map_size},
    }


def smacv2_env_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``StarCraftCapabilityEnvWrapper`` for scenario ``name`` (example-config defaults + overrides)."""
    race, n, m = parse_scenario(name)
    return {**EXAMPLE_ENV_ARGS, "map_name": f"10gen_{race}", "capability_config": capability_config(race, n, m), **overrides}


def sc2_path() -> Path:
    """Where StarCraft II is looked for: ``$SC2PATH``, else ``~/StarCraftII`` (pysc2's Linux default)."""
    return Path(os.environ.get("SC2PATH") or Path.home() / "StarCraftII").expanduser()


def check_smacv2_installed(path: Path | None = None) -> None:
    """Raise `DependencyNotInstalled` unless ``smacv2``, the StarCraft II binary and the SMAC maps are all present."""
    if importlib.util.find_spec("smacv2") is None:
        raise gym.error.DependencyNotInstalled(
            f"SMACv2 is not installed (it is not on PyPI): {INSTALL_SMACV2}; it also needs StarCraft II: {INSTALL_SC2}; "
            f"and the SMAC maps: {INSTALL_MAPS}"
        )
    path = sc2_path() if path is None else Path(path)
    binaries = sorted(path.glob("Versions/Base*/SC2_x64"))
    if not binaries:
        raise gym.error.DependencyNotInstalled(
            f"StarCraft II was not found: no {path}/Versions/Base*/SC2_x64 (SC2PATH={os.environ.get('SC2PATH')!r}); "
            f"{INSTALL_SC2}"
        )
    if not (path / "Maps" / "SMAC_Maps" / MAP_FILE).is_file():
        raise gym.error.DependencyNotInstalled(
            f"The SMAC maps were not found: no {path / 'Maps' / 'SMAC_Maps' / MAP_FILE}; {INSTALL_MAPS}"
        )


class SMACv2Adapter(MultiAgentEnv):
    """Wrap a ``StarCraft2Env`` / ``StarCraftCapabilityEnvWrapper`` (or anything with their interface).

    Uses: ``get_env_info()`` (``n_agents``, ``n_actions``, ``obs_shape``, ``state_shape``,
    ``episode_limit``), ``reset()``, ``step(actions) -> (reward, terminated, info)``,
    ``get_obs_agent(i)``, ``get_state()``, ``get_avail_agent_actions(i)`` and ``close()``.

    Args:
        env: the SMAC env (owned: `close` closes it).
        id: the id recorded in the spec.
        masked_action: see `MultiAgentEnv`.
        extra: facts recorded in ``spec.extra``.
    """

    def __init__(self, env: Any, id: str, masked_action: MaskedAction = "raise", extra: dict | None = None) -> None:
        info = env.get_env_info()
        n, n_act = int(info["n_agents"]), int(info["n_actions"])
        agents = tuple(f"agent_{i}" for i in range(n))
        obs_space = gym.spaces.Box(-np.inf, np.inf, (int(info["obs_shape"]),), dtype=np.float32)
        spec = EnvSpec(
            id=id,
            agents=agents,
            observation_spaces=dict.fromkeys(agents, obs_space),
            action_spaces=dict.fromkeys(agents, gym.spaces.Discrete(n_act)),
            state_space=gym.spaces.Box(-np.inf, np.inf, (int(info["state_shape"]),), dtype=np.float32),
            action_masked=True,
            episode_limit=int(info["episode_limit"]),
            extra=dict(extra or {}),
        )
        super().__init__(spec, masked_action=masked_action)
        self.env = env
        self._t = 0

    def _avail(self, i: int) -> np.ndarray:
        return np.asarray(self.env.get_avail_agent_actions(i), dtype=bool)

    def _obs(self, i: int) -> np.ndarray:
        return np.asarray(self.env.get_obs_agent(i), dtype=np.float32).reshape(-1)

    def _reset(self, seed: int | None, options: dict | None) -> tuple[dict, dict]:
        if seed is not None:
            warnings.warn(
                "SMACv2 cannot be re-seeded per episode; pass seed= to make() for StarCraft II's game seed", stacklevel=3
            )
        self.env.reset()
        self._t = 0
        self.agents = list(self.possible_agents)
        obs = {a: self._obs(i) for i, a in enumerate(self.possible_agents)}
        infos = {a: {"action_mask": self._avail(i)} for i, a in enumerate(self.possible_agents)}
        return obs, infos

    def _step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        index = {a: i for i, a in enumerate(self.possible_agents)}
        acting = list(self.agents)
        joint = [0] * self.env_spec.n_agents  # no-op for agents that are already dead
        for a, act in actions.items():
            joint[index[a]] = int(act)
        reward, ended, info = self.env.step(joint)
        self._t += 1
        info = dict(info or {})
        timed_out = bool(info.get("episode_limit", False)) or not info  # an empty info: SMAC restarted the game
        if ended and not timed_out and self._t >= self.env_spec.episode_limit:
            timed_out = not info.get("battle_won", False) and info.get("dead_allies", 0) < self.env_spec.n_agents
        avail = {a: self._avail(index[a]) for a in acting}
        died = {a: bool(avail[a][0]) for a in acting}  # SMAC: the no-op is available exactly to dead agents
        term = {a: died[a] or (bool(ended) and not timed_out) for a in acting}
        trunc = {a: bool(ended) and timed_out and not died[a] for a in acting}
        self.agents = [a for a in acting if not (term[a] or trunc[a])]
        obs = {a: self._obs(index[a]) for a in acting}
        infos: dict[str, dict] = {a: dict(info) for a in acting}
        for a in self.agents:
            infos[a]["action_mask"] = avail[a]
        return obs, dict.fromkeys(acting, float(reward)), term, trunc, infos

    def state(self) -> np.ndarray:
        """SMAC's global state (``get_state``), (S,) float32."""
        return np.asarray(self.env.get_state(), dtype=np.float32).reshape(-1)

    def close(self) -> None:
        """Close StarCraft II."""
        self.env.close()


def make_smacv2(name: str, **kwargs: Any) -> SMACv2Adapter:
    """Make ``smacv2:<race>_<allies>_vs_<enemies>``, e.g. ``make_smacv2("zerg_10_vs_11", seed=1)``.

    Args:
        name: the scenario.
        **kwargs: ``masked_action`` goes to the adapter; the rest override ``StarCraftCapabilityEnvWrapper``
            arguments (`smacv2_env_kwargs`), e.g. ``seed``, ``difficulty``, ``reward_sparse``.

    Raises:
        ValueError: a malformed scenario name.
        gymnasium.error.DependencyNotInstalled: ``smacv2``, StarCraft II or the SMAC maps are missing.
    """
    race, n, m = parse_scenario(name)
    masked_action = kwargs.pop("masked_action", "raise")
    env_kwargs = smacv2_env_kwargs(name, **kwargs)
    check_smacv2_installed()
    from smacv2.env import StarCraftCapabilityEnvWrapper

    env = StarCraftCapabilityEnvWrapper(**env_kwargs)
    extra = {"race": race, "n_units": n, "n_enemies": m, "map_name": env_kwargs["map_name"], "sc2_path": str(sc2_path())}
    return SMACv2Adapter(env, id=f"smacv2:{name}", masked_action=masked_action, extra=extra)
