"""The one view every real environment is seen through: `EnvSpec` plus fixed-slot array helpers.

Glossary (one letter per dimension, across the library):
    N  agents (fixed slots, in `spec.agents` order)
    D  observation features (padded to the widest agent's flattened observation)
    A  actions (discrete: number of choices, padded to the largest; continuous: action dims)
    S  global-state features

A PettingZoo `ParallelEnv` removes agents from `env.agents` once they terminate or truncate.
Batched code wants a fixed N, so the helpers below turn per-agent dicts into `(N, ...)` arrays
where an agent that is gone keeps its slot: zeros for its observation, `alive = False`, and an
all-ones action mask (any action is ignored there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What a learner needs to know about a multi-agent environment.

    Built by every adapter in `wmenv.envs` and carried by world models, replays and policies so
    that mismatches (a checkpoint for another env, a replay of another shape) are caught early.
    """

    id: str
    """The id it was made from, e.g. ``"mpe:simple_spread_v3"``."""
    agents: tuple[str, ...]
    """All agent ids (PettingZoo's ``possible_agents``); the slot order of every ``(N, ...)`` array."""
    observation_spaces: Mapping[str, gym.spaces.Box]
    """Per-agent flat observation space (1-D ``Box``)."""
    action_spaces: Mapping[str, gym.Space]
    """Per-agent action space: ``Discrete`` or 1-D ``Box``."""
    state_space: gym.spaces.Box
    """Global state returned by ``env.state()`` (1-D ``Box``), for centralized critics."""
    action_masked: bool
    """Whether ``infos[agent]["action_mask"]`` carries a per-step availability mask."""
    episode_limit: int | None
    """Maximum steps per episode after which every agent is truncated (``None`` if unbounded)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Adapter-specific facts (e.g. map size) recorded for reproducibility."""

    def __post_init__(self) -> None:
        if not self.agents:
            raise ValueError(f"EnvSpec.agents: expected at least one agent, got {self.agents!r}")
        for name, spaces in (("observation_spaces", self.observation_spaces), ("action_spaces", self.action_spaces)):
            missing = [a for a in self.agents if a not in spaces]
            if missing:
                raise ValueError(f"EnvSpec.{name}: missing agents {missing}; expected keys {list(self.agents)}")
        for a, sp in self.observation_spaces.items():
            if not (isinstance(sp, gym.spaces.Box) and len(sp.shape) == 1):
                raise TypeError(f"EnvSpec.observation_spaces[{a!r}]: expected a 1-D Box, got {sp}")
        for a, sp in self.action_spaces.items():
            if isinstance(sp, gym.spaces.Discrete) and int(sp.start) != 0:
                raise ValueError(f"EnvSpec.action_spaces[{a!r}]: expected Discrete starting at 0, got start={sp.start}")
        kinds = {type(sp) for sp in self.action_spaces.values()}
        if kinds - {gym.spaces.Discrete, gym.spaces.Box} or len(kinds) != 1:
            raise TypeError(
                f"EnvSpec.action_spaces: expected all Discrete or all 1-D Box, got {sorted(k.__name__ for k in kinds)}"
            )

    @property
    def n_agents(self) -> int:
        """N, the number of agent slots."""
        return len(self.agents)

    @property
    def obs_dim(self) -> int:
        """D, the widest agent observation; narrower ones are zero-padded on the right."""
        return max(int(self.observation_spaces[a].shape[0]) for a in self.agents)

    @property
    def obs_dtype(self) -> np.dtype:
        """Observations' dtype everywhere they are stored: uint8 where every agent's space is a uint8 Box (frames:
        4x less memory in buffers and replays), float32 otherwise. Models read them as float32."""
        spaces = self.observation_spaces.values()
        return np.dtype(np.uint8) if all(sp.dtype == np.uint8 for sp in spaces) else np.dtype(np.float32)

    @property
    def state_dtype(self) -> np.dtype:
        """The global state's dtype where stored: uint8 for a uint8 Box, float32 otherwise."""
        return np.dtype(np.uint8) if self.state_space.dtype == np.uint8 else np.dtype(np.float32)

    @property
    def state_dim(self) -> int:
        """S, the width of the global state."""
        return int(self.state_space.shape[0])

    @property
    def discrete(self) -> bool:
        """Whether actions are discrete."""
        return isinstance(self.action_spaces[self.agents[0]], gym.spaces.Discrete)

    @property
    def n_actions(self) -> int:
        """A: number of choices (discrete, padded to the largest) or action dims (continuous, widest)."""
        if self.discrete:
            return max(int(self.action_spaces[a].n) for a in self.agents)
        return max(int(self.action_spaces[a].shape[0]) for a in self.agents)

    @property
    def homogeneous(self) -> bool:
        """Whether all agents share one observation and one action space."""
        first_o, first_a = self.observation_spaces[self.agents[0]], self.action_spaces[self.agents[0]]
        return all(self.observation_spaces[a] == first_o and self.action_spaces[a] == first_a for a in self.agents)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, stored with checkpoints and replays to detect mismatches."""
        return {
            "id": self.id,
            "agents": list(self.agents),
            "obs_dim": self.obs_dim,
            "state_dim": self.state_dim,
            "discrete": self.discrete,
            "n_actions": self.n_actions,
            "action_masked": self.action_masked,
            "episode_limit": self.episode_limit,
            # only where not float32, so that the descriptions saved before dtypes existed still match
            **({"obs_dtype": str(self.obs_dtype)} if self.obs_dtype != np.float32 else {}),
        }


def spec_differences(expected: Mapping[str, Any], got: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, expected value, got value)`` for every field where two `EnvSpec.describe` dicts differ, in order."""
    return [(k, expected.get(k), got.get(k)) for k in {**expected, **got} if expected.get(k) != got.get(k)]


def stack_obs(spec: EnvSpec, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-agent observation dict -> fixed-slot arrays.

    Returns:
        obs: (N, D) ``spec.obs_dtype`` (float32, or uint8 frames), zeros in the slots of agents absent from ``obs``.
        alive: (N,) bool, True where the agent is present.
    """
    out = np.zeros((spec.n_agents, spec.obs_dim), dtype=spec.obs_dtype)
    alive = np.zeros(spec.n_agents, dtype=bool)
    for i, a in enumerate(spec.agents):
        if a in obs:
            o = np.asarray(obs[a]).reshape(-1).astype(spec.obs_dtype, copy=False)
            out[i, : o.shape[0]] = o
            alive[i] = True
    return out, alive


def stack_masks(spec: EnvSpec, infos: Mapping[str, Mapping[str, Any]], alive: np.ndarray) -> np.ndarray:
    """Per-agent ``infos[agent]["action_mask"]`` -> (N, A) bool; all True for dead or unmasked agents.

    Padded actions beyond an agent's own ``Discrete.n`` are False for living agents. For continuous actions the mask
    marks the action dims each living agent has (False on dims padded to the widest agent's).
    """
    own = own_action_dims(spec)  # (N, A)
    masks = np.where(np.asarray(alive, dtype=bool)[:, None], own, True)
    if not (spec.discrete and spec.action_masked):
        return masks
    for i, a in enumerate(spec.agents):
        m = infos.get(a, {}).get("action_mask") if alive[i] else None
        if m is not None:
            masks[i, own[i]] = np.asarray(m, dtype=bool)
    return masks


def action_bounds(spec: EnvSpec) -> tuple[np.ndarray, np.ndarray]:
    """(N, A) float32 lower and upper bounds of each agent's continuous actions; 0 on dims padded beyond an agent's
    own (they carry nothing), the space's bounds (possibly infinite) elsewhere.

    Raises:
        ValueError: ``spec`` has discrete actions.
    """
    if spec.discrete:
        raise ValueError(f"spec: {spec.id} has discrete actions; bounds are for continuous ones")
    low = np.zeros((spec.n_agents, spec.n_actions), np.float32)
    high = np.zeros((spec.n_agents, spec.n_actions), np.float32)
    for i, a in enumerate(spec.agents):
        space = spec.action_spaces[a]
        k = space.shape[0]
        low[i, :k], high[i, :k] = space.low, space.high
    return low, high


def own_space(space: gym.spaces.Space) -> gym.spaces.Space:
    """A fresh copy of an agent's action space (``Discrete(n)``, or a float32 ``Box`` with its bounds), for an env
    that hands out its own space objects (seeding one leaves other envs' spaces alone)."""
    if isinstance(space, gym.spaces.Discrete):
        return gym.spaces.Discrete(int(space.n))
    return gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)


def unstack_continuous(spec: EnvSpec, actions: Mapping[str, Any]) -> np.ndarray:
    """Per-agent continuous actions -> (N, A) float32, each in its agent's own dims (0 for padded dims and absent
    agents); the inverse of `unstack_actions` for continuous specs."""
    out = np.zeros((spec.n_agents, spec.n_actions), np.float32)
    for i, a in enumerate(spec.agents):
        if a in actions:
            arr = np.asarray(actions[a], dtype=np.float32).reshape(-1)
            out[i, : arr.shape[0]] = arr
    return out


def own_action_dims(spec: EnvSpec) -> np.ndarray:
    """(N, A) bool: the action dims (continuous) or choices (discrete) each agent has, before padding."""
    own = np.array([int(spec.action_spaces[a].n) if spec.discrete else spec.action_spaces[a].shape[0] for a in spec.agents])
    return np.arange(spec.n_actions)[None, :] < own[:, None]


def stack_rewards(spec: EnvSpec, values: Mapping[str, Any], dtype: type = np.float32) -> np.ndarray:
    """Per-agent scalar dict (rewards, terminations, ...) -> (N,) array, 0 / False for absent agents."""
    return np.array([values.get(a, 0) for a in spec.agents], dtype=dtype)


def unstack_actions(spec: EnvSpec, actions: np.ndarray, agents: Sequence[str]) -> dict[str, Any]:
    """Fixed-slot actions (N,) int or (N, A) float -> dict for the live ``agents`` only."""
    actions = np.asarray(actions)
    expected = (spec.n_agents,) if spec.discrete else (spec.n_agents, spec.n_actions)
    if actions.shape != expected:
        raise ValueError(f"actions: expected shape {expected}, got {actions.shape}")
    out: dict[str, Any] = {}
    for i, a in enumerate(spec.agents):
        if a in agents:
            if spec.discrete:
                out[a] = int(actions[i])
            else:
                out[a] = actions[i, : spec.action_spaces[a].shape[0]].astype(np.float32)
    return out


def check_actions(
    spec: EnvSpec,
    actions: Mapping[str, Any],
    live_agents: Sequence[str],
    masks: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Validate an action dict against the live agents, their spaces and current masks.

    Raises:
        ValueError: a live agent without an action, an action for an unknown or finished agent,
            an out-of-range action or one its mask forbids. The message names the agent and value.
        TypeError: a non-integer action for a discrete space.
    """
    missing = [a for a in live_agents if a not in actions]
    if missing:
        raise ValueError(f"actions: missing actions for live agents {missing}; got keys {sorted(actions)}")
    for a, act in actions.items():
        if a not in spec.action_spaces:
            raise ValueError(f"actions: unknown agent {a!r}; known agents are {list(spec.agents)}")
        if a not in live_agents:
            raise ValueError(f"actions: agent {a!r} is no longer alive; live agents are {list(live_agents)}")
        space = spec.action_spaces[a]
        if isinstance(space, gym.spaces.Discrete):
            if (
                isinstance(act, (bool, np.bool_))
                or not isinstance(act, (int, np.integer))
                and not (isinstance(act, np.ndarray) and act.shape == () and np.issubdtype(act.dtype, np.integer))
            ):
                raise TypeError(f"actions[{a!r}]: expected an integer in [0, {space.n}), got {act!r} ({type(act).__name__})")
            if not 0 <= int(act) < int(space.n):
                raise ValueError(f"actions[{a!r}]: expected an integer in [0, {space.n}), got {act}")
            if masks is not None and a in masks and not bool(np.asarray(masks[a])[int(act)]):
                allowed = np.flatnonzero(np.asarray(masks[a])).tolist()
                raise ValueError(f"actions[{a!r}]: action {int(act)} is masked; available actions are {allowed}")
        else:
            arr = np.asarray(act, dtype=np.float32)
            if arr.shape != space.shape:
                raise ValueError(f"actions[{a!r}]: expected shape {space.shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"actions[{a!r}]: expected finite values, got {arr}")
