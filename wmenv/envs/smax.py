"""SMAX (JaxMARL's StarCraft-free SMAC) as a `MultiAgentEnv`, and E copies stepped by one vmapped, jitted call.

``make("smax:3m")`` plays JaxMARL's ``HeuristicEnemySMAX``: our team's units are the agents, the enemy team
follows JaxMARL's built-in heuristic (attack the closest unit in range, else advance). SMAX re-implements
SMAC's unit micro-management in JAX: six unit types (marine, marauder, stalker, zealot, zergling,
hydralisk), episodes of at most 101 steps (``max_steps=100``: SMAX tests the limit before counting the
step, so ``spec.episode_limit`` is ``max_steps + 1``), 8 world steps of 1/16 s per env step, and a reward of 0-2 per episode
(the enemy team's health lost, normalized, plus 1 for a win) where SMAC's shaped reward reaches 20. So its
numbers compare loosely with the papers' SC2 numbers; comparisons between methods on it are real.

Maps: JaxMARL's 14 scenarios (`SMAX_MAPS`) plus the SMAC maps of the seeds' tables that its unit types can
build (`EXTRA_MAPS`: 3s_vs_3z, 3s_vs_4z, 8m_vs_9m, ...). MMM, corridor, 2c_vs_64zg and others need units
SMAX does not have.

The view (the same as the SMACv2 adapter's):
- agents ``ally_0`` ... ``ally_{N-1}``; observations are SMAX's ``unit_list`` features (other units'
  health, relative position / sight range, last move, last target, cooldown, type; own health, position /
  map size, cooldown, type), zeros for what is out of sight or dead; actions ``0-3`` move, ``4`` stop
  (always available: the no-op), ``5 + j`` attack enemy j; the mask is SMAX's ``get_avail_actions``.
- every acting ally gets the team reward; an ally that dies is terminated on that step and leaves
  ``env.agents`` (SMAX then only allows it "stop", which the adapter sends for it). When the battle ends
  (one team dead) every remaining ally is terminated; when the step limit ends it they are truncated.
- ``infos[agent]["won"]``: the battle is won (all enemies dead, an ally alive) on this step;
  `episode_metrics` reports ``won`` (1.0 / 0.0) for every finished episode, so `VecEnv` and every
  evaluation give win rates as the papers do.
- ``state()``: for every unit (allies, then enemies) health fraction, position / map size, weapon cooldown
  / the type's cooldown (clipped to [0, 1]) and the type one-hot, then the episode's elapsed fraction
  (SMAX's ``get_world_state`` gives raw map coordinates and repeats the teams and types; a critic wants
  them normalized).
- Seeding: ``reset(seed=s)`` starts the JAX key stream at ``PRNGKey(s)``; each step and each reset takes
  the next split of the stream, so seeded episodes repeat exactly.

`SMAXBatch` holds E copies as one batched JAX state and steps them with one jitted ``vmap`` call, with
auto-reset; ``VecEnv("smax:3m", E, backend="jax")`` uses it. Copy i reset with ``seed + i`` follows the
same key stream as a single env, so its episodes equal the sync backend's.

Needs the optional extra: ``pip install -e ".[smax]"`` (JaxMARL 0.2 with jax < 0.7.2, Python >= 3.11);
without it `make_smax` raises `gymnasium.error.DependencyNotInstalled` with that command.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from wmenv.checks import check_choice
from wmenv.envs.base import MaskedAction, MultiAgentEnv
from wmenv.envs.spec import EnvSpec

INSTALL_SMAX = 'pip install -e ".[smax]"  (from a wmenv checkout; or: pip install "wmenv[smax]")'
"""The install command the errors give: JaxMARL resolved together with the project (see pyproject's extra)."""
JAXMARL_VERSIONS = ((0, 2),)
"""(major, minor) JaxMARL versions the adapter is written against (its SMAX API changes between minors)."""

UNIT_TYPES = ("marine", "marauder", "stalker", "zealot", "zergling", "hydralisk")
"""SMAX's unit types, in its index order."""
MOVE_ACTIONS = 4
"""Actions 0-3 move; action 4 is "stop"; 5 + j attacks enemy j."""
STOP = 4
"""The no-op: always available, the only action of a dead unit."""

SMAX_MAPS = (
    "3m", "2s3z", "25m", "3s5z", "8m", "5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "3s5z_vs_3s6z", "3s_vs_5z", "6h_vs_8z",
    "smacv2_5_units", "smacv2_10_units", "smacv2_20_units",
)  # fmt: skip
"""The scenarios JaxMARL 0.2 ships (``map_name_to_scenario``)."""


class UnitMap(NamedTuple):
    """A SMAC map made of SMAX unit types: allies' and enemies' types as (type, count) pairs."""

    allies: tuple[tuple[str, int], ...]
    enemies: tuple[tuple[str, int], ...]


EXTRA_MAPS: dict[str, UnitMap] = {
    "3s_vs_3z": UnitMap((("stalker", 3),), (("zealot", 3),)),
    "3s_vs_4z": UnitMap((("stalker", 3),), (("zealot", 4),)),
    "8m_vs_9m": UnitMap((("marine", 8),), (("marine", 9),)),
    "2s_vs_3z": UnitMap((("stalker", 2),), (("zealot", 3),)),
    "4m_vs_5m": UnitMap((("marine", 4),), (("marine", 5),)),
}
"""SMAC maps of the seeds' tables (MAMBA Table 3, SP-Mamba Table 1) that SMAX's unit types can build, made here
(JaxMARL's ``register_scenario`` would change its global table; we pass the scenario to the env instead)."""


def known_maps() -> tuple[str, ...]:
    """Every map `make_smax` accepts."""
    return (*SMAX_MAPS, *EXTRA_MAPS)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send what is written to stdout (file descriptor 1, whatever ``sys.stdout`` is rebound to) to /dev/null, and
    restore ``sys.stdout`` afterwards."""
    saved = sys.stdout
    saved.flush()
    fd = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
            sys.stdout.flush()
    finally:
        os.dup2(fd, 1)
        os.close(fd)
        sys.stdout = saved


def check_smax_installed() -> None:
    """Raise a clear error unless JaxMARL 0.2 and a jax with CPU support can be imported.

    Raises:
        gymnasium.error.DependencyNotInstalled: JaxMARL is missing, of another version, or jax has no CPU backend.
    """
    if importlib.util.find_spec("jaxmarl") is None or importlib.util.find_spec("jax") is None:
        raise gym.error.DependencyNotInstalled(f"SMAX needs JaxMARL, which is not installed: {INSTALL_SMAX}")
    version = importlib.metadata.version("jaxmarl")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts not in JAXMARL_VERSIONS:
        raise gym.error.DependencyNotInstalled(
            f"SMAX: expected JaxMARL {' or '.join(f'{a}.{b}.x' for a, b in JAXMARL_VERSIONS)}, got jaxmarl {version}: "
            f"{INSTALL_SMAX}"
        )
    import jax

    with _quiet_stdout():  # jaxmarl prints "Importing submoduled environments..." and rebinds sys.stdout
        import jaxmarl.environments  # noqa: F401
    try:
        jax.devices("cpu")
    except RuntimeError as e:
        raise gym.error.DependencyNotInstalled(
            f"SMAX: the installed jax {jax.__version__} has no CPU backend ({e}); install jax with CPU support: {INSTALL_SMAX}"
        ) from e
    enable_compilation_cache(jax)


JAX_CACHE_ENV = "WMENV_JAX_CACHE"
"""Environment variable: the folder of JAX's persistent compilation cache for SMAX ("" turns it off)."""


def enable_compilation_cache(jax: Any) -> None:
    """Keep jitted SMAX functions on disk (JAX's persistent compilation cache), so a map compiles once per machine
    instead of once per process (seconds each). The folder is ``$WMENV_JAX_CACHE`` or ``~/.cache/wmenv/jax``; a
    cache folder the user configured for JAX is left as it is."""
    if jax.config.jax_compilation_cache_dir:
        return
    folder = os.environ.get(JAX_CACHE_ENV, str(Path.home() / ".cache" / "wmenv" / "jax"))
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)  # SMAX's many small functions too


def check_map(name: str, value: Any) -> None:
    """Raise a `ValueError` naming argument ``name`` and listing the known maps unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in known_maps():
        raise ValueError(f"{name}: unknown SMAX map {value!r}; known maps: {', '.join(known_maps())}")


def scenario(map_name: str) -> Any:
    """JaxMARL's ``Scenario`` for ``map_name`` (a built-in one or one of `EXTRA_MAPS`).

    Raises:
        ValueError: an unknown map; the message lists the known ones.
    """
    check_map("map_name", map_name)
    import jax.numpy as jnp
    from jaxmarl.environments.smax import Scenario, map_name_to_scenario

    if map_name in SMAX_MAPS:
        return map_name_to_scenario(map_name)
    m = EXTRA_MAPS[map_name]
    types = [UNIT_TYPES.index(t) for team in (m.allies, m.enemies) for t, count in team for _ in range(count)]
    n_allies = sum(c for _, c in m.allies)
    return Scenario(jnp.array(types, dtype=jnp.uint8), n_allies, len(types) - n_allies, False, False)


class StepOut(NamedTuple):
    """What one copy's jitted reset / step returns (JAX arrays; one copy: no batch dimension)."""

    obs: Any
    """(N, D) float32, the allies' observations."""
    mask: Any
    """(N, A) bool, available actions."""
    alive: Any
    """(N,) bool, allies alive after the step."""
    reward: Any
    """() float32, the team reward of the step (0 after a reset)."""
    state: Any
    """(S,) float32, the normalized global state."""
    done: Any
    """() bool, the episode ended (one team dead, or the step limit)."""
    won: Any
    """() bool, all enemies dead with an ally alive."""
    timeout: Any
    """() bool, the step limit ended the episode with both teams alive."""


class Core:
    """The jitted functions of one SMAX map, shared by the single env and the batch.

    Args:
        map_name: a map of `known_maps`.
        **env_kwargs: passed to ``HeuristicEnemySMAX`` (e.g. ``max_steps``, ``attack_mode``, ``enemy_shoots``).
    """

    def __init__(self, map_name: str, **env_kwargs: Any) -> None:
        check_smax_installed()
        import jax
        import jax.numpy as jnp
        from jaxmarl.environments.smax import HeuristicEnemySMAX

        self.env = env = HeuristicEnemySMAX(scenario=scenario(map_name), **env_kwargs)
        self.map_name = map_name
        self.env_kwargs = dict(env_kwargs)
        self.n_allies, self.n_enemies = env.num_allies, env.num_enemies
        self.n_units = env.num_allies + env.num_enemies  # the wrapper's num_agents counts only the allies
        self.n_actions = env.num_ally_actions
        self.obs_dim = int(env.obs_size)
        self.state_dim = self.n_units * (4 + len(UNIT_TYPES)) + 1
        self.max_steps = int(env.max_steps) + 1  # SMAX tests the limit before counting the step: max_steps + 1 steps
        size = jnp.array([env.map_width, env.map_height], dtype=jnp.float32)
        cooldowns = jnp.asarray(env.unit_type_weapon_cooldowns, dtype=jnp.float32)
        healths = jnp.asarray(env.unit_type_health, dtype=jnp.float32)
        allies = list(env.agents)

        def global_state(s: Any) -> Any:
            types = s.unit_types.astype(jnp.int32)
            alive = s.unit_alive[:, None].astype(jnp.float32)
            unit = jnp.concatenate(
                [
                    (s.unit_health / healths[types])[:, None],
                    s.unit_positions / size,
                    jnp.clip(s.unit_weapon_cooldowns / cooldowns[types], 0.0, 1.0)[:, None],
                    jax.nn.one_hot(types, len(UNIT_TYPES)),
                ],
                axis=-1,
            )  # (U, 4 + T)
            elapsed = jnp.minimum(s.step / self.max_steps, 1.0).astype(jnp.float32)
            return jnp.concatenate([(unit * alive).reshape(-1), elapsed[None]]).astype(jnp.float32)

        def view(obs: dict, s: Any, reward: Any, done: Any) -> StepOut:
            inner = s.state
            alive = inner.unit_alive[: self.n_allies]
            enemies = jnp.any(inner.unit_alive[self.n_allies :])
            won = done & ~enemies & jnp.any(alive)
            avail = env.get_avail_actions(s)
            return StepOut(
                obs=jnp.stack([obs[a] for a in allies]).astype(jnp.float32),
                mask=jnp.stack([avail[a] for a in allies]).astype(bool),
                alive=alive,
                reward=jnp.asarray(reward, jnp.float32),
                state=global_state(inner),
                done=done,
                won=won,
                timeout=done & jnp.any(alive) & enemies,
            )

        def reset(key: Any) -> tuple[Any, Any, StepOut]:
            key, sub = jax.random.split(key)
            obs, s = env.reset(sub)
            # Strong types: the heuristic's initial state has a weakly typed leaf that a step makes strong, and the
            # changed signature would compile `step` twice (≈ 10 s each).
            s = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), s)
            return key, s, view(obs, s, jnp.float32(0.0), jnp.bool_(False))

        def step(key: Any, s: Any, actions: Any) -> tuple[Any, Any, StepOut]:
            key, sub = jax.random.split(key)
            obs, s, rewards, dones, _ = env.step_env(sub, s, {a: actions[i] for i, a in enumerate(allies)})
            return key, s, view(obs, s, rewards[allies[0]], dones["__all__"])

        def step_autoreset(key: Any, s: Any, actions: Any) -> tuple[Any, Any, StepOut, StepOut]:
            key, s, out = step(key, s, actions)
            key_r, s_r, first = reset(key)
            pick = partial(jax.tree.map, lambda new, old: jnp.where(out.done, new, old))
            return pick(key_r, key), pick(s_r, s), out, first

        from jaxmarl.environments.smax.heuristic_enemy import create_heuristic_policy, get_heuristic_policy_initial_state

        policy = jax.vmap(create_heuristic_policy(env._env, 0, shoot=True, attack_mode="closest"))

        def heuristic(key: Any, policy_state: Any, obs: Any) -> tuple[Any, Any, Any]:
            key, sub = jax.random.split(key)
            actions, policy_state = policy(jax.random.split(sub, self.n_allies), policy_state, obs)
            return key, actions.astype(jnp.int32), policy_state

        self.heuristic_initial = lambda: jax.tree.map(
            lambda *xs: jnp.stack(xs), *([get_heuristic_policy_initial_state()] * self.n_allies)
        )
        self.heuristic = jax.jit(heuristic)
        self.reset = jax.jit(reset)
        self.step = jax.jit(step)
        self.batch_reset = jax.jit(jax.vmap(reset))
        self.batch_step = jax.jit(jax.vmap(step_autoreset))

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        """A `Core` pickles as its map and keywords and is rebuilt (or taken from the cache) where it is loaded: it
        holds no episode state, and JaxMARL's wrapper cannot be unpickled (its ``__getattr__`` recurses before its
        wrapped env is set), so an env snapshot holding it would not restore."""
        return _core_from, (self.map_name, self.env_kwargs)

    def spec(self, id: str) -> EnvSpec:
        """The `EnvSpec` of this map."""
        agents = tuple(f"ally_{i}" for i in range(self.n_allies))
        obs_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), dtype=np.float32)
        return EnvSpec(
            id=id,
            agents=agents,
            observation_spaces=dict.fromkeys(agents, obs_space),
            action_spaces=dict.fromkeys(agents, gym.spaces.Discrete(self.n_actions)),
            state_space=gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), dtype=np.float32),
            action_masked=True,
            episode_limit=self.max_steps,
            extra={
                "map_name": self.map_name,
                "n_enemies": self.n_enemies,
                "unit_types": [UNIT_TYPES[int(t)] for t in np.asarray(self.env._env.scenario)],
                "jaxmarl": importlib.metadata.version("jaxmarl"),
            },
        )


@functools.lru_cache(maxsize=16)
def _cached_core(map_name: str, kwargs: tuple[tuple[str, Any], ...]) -> Core:
    return Core(map_name, **dict(kwargs))


def core_for(map_name: str, **env_kwargs: Any) -> Core:
    """The `Core` of a map, built (and its functions compiled) once per process for the same hashable keywords.

    A `Core` holds no episode state, so envs and batches of one map share it; each compiles on first use (seconds).
    """
    check_smax_installed()  # every time (cheap once imported): a cached Core must not skip the checks
    try:
        return _cached_core(map_name, tuple(sorted(env_kwargs.items())))
    except TypeError:  # unhashable keywords (e.g. arrays): a Core of its own
        return Core(map_name, **env_kwargs)


def _core_from(map_name: str, env_kwargs: dict[str, Any]) -> Core:
    return core_for(map_name, **env_kwargs)


def new_key(seed: int | None) -> Any:
    """``PRNGKey(seed)``; a fresh random seed where ``seed`` is None."""
    import jax

    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return jax.random.PRNGKey(seed)


class SMAXEnv(MultiAgentEnv):
    """One SMAX battle as a PettingZoo parallel env (see the module docstring for the view).

    Args:
        core: the map's jitted functions (`Core`).
        id: the id recorded in the spec.
        masked_action: see `MultiAgentEnv`.
    """

    def __init__(self, core: Core, id: str, masked_action: MaskedAction = "raise") -> None:
        super().__init__(core.spec(id), masked_action=masked_action)
        self.core = core
        self._key: Any = None
        self._s: Any = None
        self._out: StepOut | None = None
        self._won = False
        self._policy_key: Any = None
        self._policy_state: Any = None
        self._slot = {a: i for i, a in enumerate(self.possible_agents)}  # agent -> slot in the core's arrays

    def _reset(self, seed: int | None, options: dict | None) -> tuple[dict, dict]:
        if seed is not None or self._key is None:
            self._key = new_key(seed)
        self._key, self._s, out = self.core.reset(self._key)
        self._out, self._won = out, False
        self._policy_state = None
        self.agents = list(self.possible_agents)
        obs, mask = np.array(out.obs), np.array(out.mask)  # copies: JAX arrays read as read-only views
        return (
            {a: obs[i] for i, a in enumerate(self.possible_agents)},
            {a: {"action_mask": mask[i], "won": False} for i, a in enumerate(self.possible_agents)},
        )

    def _step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        joint = np.full(self.core.n_allies, STOP, dtype=np.int32)  # dead or finished allies: "stop"
        index = self._slot
        for a, act in actions.items():
            joint[index[a]] = int(act)
        acting = list(self.agents)
        self._key, self._s, out = self.core.step(self._key, self._s, joint)
        self._out = out
        obs, mask, alive = np.array(out.obs), np.array(out.mask), np.array(out.alive)
        done, won, timeout = bool(out.done), bool(out.won), bool(out.timeout)
        self._won = won
        term = {a: not alive[index[a]] or (done and not timeout) for a in acting}
        trunc = {a: done and timeout and alive[index[a]] for a in acting}
        self.agents = [a for a in acting if not (term[a] or trunc[a])]
        infos: dict[str, dict] = {a: {"won": won} for a in acting}
        for a in self.agents:
            infos[a]["action_mask"] = mask[index[a]]
        reward = float(out.reward)
        return {a: obs[index[a]] for a in acting}, dict.fromkeys(acting, reward), term, trunc, infos

    def heuristic_actions(self, seed: int = 0) -> dict[str, int]:
        """Actions of JaxMARL's SMAC heuristic for the live allies (attack the closest enemy in range, else
        advance): the reference the seeds' tables do not have, a floor above random play.

        Its random stream is its own (started at ``PRNGKey(seed)`` on the first call), so driving the allies with
        it does not change the env's episodes. Its memory (target, last attacked) restarts at each `reset`.
        """
        if self._out is None:
            raise RuntimeError("heuristic_actions() called before reset()")
        if self._policy_key is None:
            self._policy_key = new_key(seed)
        if self._policy_state is None:
            self._policy_state = self.core.heuristic_initial()
        self._policy_key, actions, self._policy_state = self.core.heuristic(
            self._policy_key, self._policy_state, self._out.obs
        )
        actions = np.asarray(actions)
        index = self._slot
        return {a: int(actions[index[a]]) for a in self.agents}

    def noop_action(self, agent: str) -> int:
        """ "stop" (action 4), always available."""
        return STOP

    def state(self) -> np.ndarray:
        """The normalized global state, (S,) float32 (see the module docstring)."""
        if self._out is None:
            raise RuntimeError("state() called before reset()")
        return np.array(self._out.state, dtype=np.float32)

    def episode_metrics(self) -> dict[str, float]:
        """``{"won": 1.0 or 0.0}``: whether the current (finished) episode was won."""
        return {"won": float(self._won)}


class SMAXBatch:
    """E copies of one SMAX map as one batched JAX state, stepped by one jitted ``vmap`` call with auto-reset.

    The `VecEnv` backend ``"jax"``; returns the rows `VecEnv` turns into a `VecStep`.

    Args:
        map_name: a map of `known_maps`.
        num_envs: E.
        seed: copy i starts its key stream at ``PRNGKey(seed + i)`` (as ``SMAXEnv.reset(seed=seed + i)``).
        masked_action: ``"raise"``: a masked action of a live ally is a `ValueError`; ``"noop"``: replaced by stop.
        **env_kwargs: passed to ``HeuristicEnemySMAX``.
    """

    def __init__(
        self, map_name: str, num_envs: int, seed: int = 0, masked_action: MaskedAction = "raise", **env_kwargs: Any
    ) -> None:
        check_choice("masked_action", masked_action, ("raise", "noop"))
        self.core = core_for(map_name, **env_kwargs)  # checks that JaxMARL and jax are installed
        import jax.numpy as jnp

        self.spec = self.core.spec(f"smax:{map_name}")
        self.num_envs, self.masked_action = num_envs, masked_action
        self._keys = jnp.stack([new_key(seed + i) for i in range(num_envs)])
        self._s: Any = None
        self._alive = np.zeros((num_envs, self.core.n_allies), dtype=bool)
        self._mask = np.ones((num_envs, self.core.n_allies, self.core.n_actions), dtype=bool)
        self._ret = np.zeros((num_envs, self.core.n_allies), dtype=np.float32)
        self._len = np.zeros(num_envs, dtype=np.int64)

    def _rows(self, out: StepOut) -> dict[str, np.ndarray]:
        alive = np.array(out.alive)
        mask = np.array(out.mask)
        mask[~alive] = True  # the VecStep convention: dead slots are all-ones
        return {"obs": np.array(out.obs), "state": np.array(out.state), "alive": alive, "action_mask": mask}

    def reset(self) -> dict[str, Any]:
        """Reset every copy (the first time with its seed, then continuing its key stream)."""
        self._keys, self._s, out = self.core.batch_reset(self._keys)
        rows = self._rows(out)
        E, N = self._alive.shape
        self._alive, self._mask = rows["alive"], rows["action_mask"]
        self._ret[:], self._len[:] = 0.0, 0
        zeros = np.zeros((E, N), dtype=np.float32)
        return {
            **rows, "reward": zeros, "terminated": np.zeros((E, N), bool), "truncated": np.zeros((E, N), bool),
            "done": np.zeros(E, bool), "final_obs": np.zeros_like(rows["obs"]), "final_state": np.zeros_like(rows["state"]),
            "episode_return": zeros.copy(), "episode_length": np.zeros(E, np.int64),
            "infos": [{a: {"action_mask": rows["action_mask"][e, i], "won": False} for i, a in enumerate(self.spec.agents)}
                      for e in range(E)],
            "episode_metrics": [{}] * E,
        }  # fmt: skip

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        """Step every copy with (E, N) int actions; entries of dead allies are ignored (they stop)."""
        if self._s is None:
            raise RuntimeError("step() called before reset()")
        actions = np.asarray(actions)
        if not np.issubdtype(actions.dtype, np.integer):
            raise TypeError(f"actions: expected integer actions, got dtype {actions.dtype}")
        alive = self._alive
        bad = alive & ((actions < 0) | (actions >= self.core.n_actions))
        if bad.any():
            e, n = np.argwhere(bad)[0]
            raise ValueError(
                f"actions[{e}, {n}] ({self.spec.agents[n]}): expected an integer in [0, {self.core.n_actions}), "
                f"got {actions[e, n]}"
            )
        joint = np.where(alive, actions, STOP).astype(np.int32)
        allowed = np.take_along_axis(self._mask, joint[..., None], -1)[..., 0]
        if not allowed.all():
            if self.masked_action == "raise":
                e, n = np.argwhere(~allowed)[0]
                raise ValueError(
                    f"actions[{e}, {n}] ({self.spec.agents[n]}): action {joint[e, n]} is masked; available: "
                    f"{np.flatnonzero(self._mask[e, n]).tolist()}"
                )
            joint = np.where(allowed, joint, STOP).astype(np.int32)
        self._keys, self._s, out, first = self.core.batch_step(self._keys, self._s, joint)
        after, start = self._rows(out), self._rows(first)
        done, won, timeout = np.array(out.done), np.array(out.won), np.array(out.timeout)
        reward = np.where(alive, np.asarray(out.reward)[:, None], 0.0).astype(np.float32)
        self._ret += reward
        self._len += 1
        died = alive & ~after["alive"]
        terminated = died | (alive & (done & ~timeout)[:, None])
        truncated = alive & ~died & (done & timeout)[:, None]
        d = done[:, None]
        rows: dict[str, Any] = {k: np.where(d if after[k].ndim == 2 else d[..., None], start[k], after[k]) for k in after}
        rows.update(
            reward=reward, terminated=terminated, truncated=truncated, done=done,
            final_obs=np.where(d[..., None], after["obs"], 0.0).astype(np.float32),
            final_state=np.where(d, after["state"], 0.0).astype(np.float32),
            episode_return=np.where(d, self._ret, 0.0).astype(np.float32),
            episode_length=np.where(done, self._len, 0),
        )  # fmt: skip
        stays = ~done[:, None] & after["alive"]  # (E, N): still in the episode, so its info carries the mask
        rows["infos"] = [
            {a: {"won": bool(won[e]), **({"action_mask": after["action_mask"][e, i]} if stays[e, i] else {})}
             for i, a in enumerate(self.spec.agents) if alive[e, i]}
            for e in range(self.num_envs)
        ]  # fmt: skip
        rows["episode_metrics"] = [{"won": float(won[e])} if done[e] else {} for e in range(self.num_envs)]
        self._ret[done], self._len[done] = 0.0, 0
        self._alive, self._mask = rows["alive"], rows["action_mask"]
        return rows

    _STATE = ("_keys", "_s", "_alive", "_mask", "_ret", "_len")
    """The attributes that change as the copies step (the rest is fixed by the map and the options)."""

    def get_state(self) -> dict[str, Any]:
        """The batch's state (keys, JAX env states, running returns) as NumPy, for `set_state`."""
        import jax

        return {"map": self.spec.id, "num_envs": self.num_envs, **jax.device_get({k: getattr(self, k) for k in self._STATE})}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `get_state` (of a batch of the same map and size)."""
        import jax.numpy as jnp
        from jax import tree_util

        if not isinstance(state, dict) or (state.get("map"), state.get("num_envs")) != (self.spec.id, self.num_envs):
            got = (state.get("map"), state.get("num_envs")) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a SMAXBatch state of {(self.spec.id, self.num_envs)}, got {got}")
        for k in self._STATE:
            v = state[k]
            setattr(self, k, tree_util.tree_map(jnp.asarray, v) if k in ("_keys", "_s") and v is not None else v)

    def close(self) -> None:
        """Nothing to release (kept for the `VecEnv` contract)."""


def make_smax(name: str, **kwargs: Any) -> SMAXEnv:
    """Make ``smax:<map>``, e.g. ``make_smax("3s_vs_5z")``.

    Args:
        name: a map of `known_maps`.
        **kwargs: ``masked_action`` goes to the adapter; the rest to ``HeuristicEnemySMAX`` (``max_steps``,
            ``attack_mode``, ``enemy_shoots``, ``won_battle_bonus``, ...).

    Raises:
        ValueError: an unknown map (the known ones are listed).
        gymnasium.error.DependencyNotInstalled: JaxMARL is missing or of another version (with the install command).
    """
    check_map("name", name)
    masked_action = kwargs.pop("masked_action", "raise")
    return SMAXEnv(core_for(name, **kwargs), id=f"smax:{name}", masked_action=masked_action)
