"""`MultiAgentEnv`: the PettingZoo `ParallelEnv` base every wmenv adapter derives from.

It owns what is the same for all adapters: cached spaces taken from the `EnvSpec`, action
validation (missing / unknown / out-of-range / masked actions raise a `ValueError` naming the
agent and the value), and remembering the current action masks from the infos it returned.
Adapters implement `_reset`, `_step` and `state`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from wmenv.checks import check_choice
from wmenv.envs.spec import EnvSpec, check_actions

MaskedAction = Literal["raise", "noop"]


class MultiAgentEnv(ParallelEnv, ABC):
    """A PettingZoo parallel env with an `EnvSpec`, `state()` and validated actions.

    Args:
        spec: the environment's spec; `possible_agents` and all spaces come from it.
        masked_action: what a masked action does. ``"raise"`` (default) raises a `ValueError`;
            ``"noop"`` replaces it by the adapter's `noop_action` (for learners that cannot read
            masks, e.g. stable-baselines3, and for PettingZoo's `parallel_api_test`, which samples
            actions without looking at ``infos``). Out-of-range actions always raise.
    """

    metadata: dict[str, Any] = {"render_modes": [], "name": "wmenv", "is_parallelizable": True}

    def __init__(self, spec: EnvSpec, masked_action: MaskedAction = "raise") -> None:
        check_choice("masked_action", masked_action, ("raise", "noop"))
        self.env_spec = spec
        self.masked_action = masked_action
        self.possible_agents = list(spec.agents)
        self.agents: list[str] = []
        self.render_mode = None
        self._masks: dict[str, np.ndarray] = {}
        self._was_reset = False

    # --- spaces (cached objects: PettingZoo requires `space(a) is space(a)`) ---
    def observation_space(self, agent: str) -> gym.spaces.Box:
        """The flat observation space of ``agent``."""
        return self.env_spec.observation_spaces[agent]

    def action_space(self, agent: str) -> gym.Space:
        """The action space of ``agent``."""
        return self.env_spec.action_spaces[agent]

    @property
    def state_space(self) -> gym.spaces.Box:
        """The global state space (what `state()` returns)."""
        return self.env_spec.state_space

    @property
    def max_num_agents(self) -> int:
        """N, the number of agent slots."""
        return self.env_spec.n_agents

    # --- API ---
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode; ``infos[agent]["action_mask"]`` holds the mask where the env has one."""
        obs, infos = self._reset(seed=seed, options=options)
        self._remember_masks(infos)
        self._was_reset = True
        return obs, infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Validate ``actions`` (one per live agent) and advance the env one step. After the episode ended, an empty
        ``actions`` returns five empty dicts (PettingZoo's envs do; SuperSuit's ``black_death_v3`` relies on it)."""
        if not isinstance(actions, dict):
            raise TypeError(f"actions: expected a dict agent -> action, got {type(actions).__name__}")
        if not self.agents:
            if not actions and self._was_reset:  # after the episode's end, as PettingZoo's envs
                return {}, {}, {}, {}, {}  # answer it (SuperSuit's black_death_v3 steps once more with no agents)
            raise RuntimeError(f"step() called with no live agents: call reset() first (got actions for {sorted(actions)})")
        if self.masked_action == "raise":
            check_actions(self.env_spec, actions, self.agents, self._masks)
        else:
            check_actions(self.env_spec, actions, self.agents, None)
            actions = {
                a: (act if a not in self._masks or self._masks[a][int(act)] else self.noop_action(a))
                for a, act in actions.items()
            }
        out = self._step(actions)
        self._remember_masks(out[4])
        return out

    def episode_metrics(self) -> dict[str, float]:
        """Scalar facts about the current episode beyond its return (e.g. Flatland's ``arrived_fraction``).

        `VecEnv` reports them for every finished episode (`VecStep.episode_metrics`) and the evaluations
        average them; none by default.
        """
        return {}

    def noop_action(self, agent: str) -> Any:
        """The action substituted for a masked one when ``masked_action="noop"`` (default: the first allowed)."""
        allowed = np.flatnonzero(self._masks[agent])
        return int(allowed[0]) if allowed.size else 0

    def action_mask(self, agent: str) -> np.ndarray | None:
        """The current (A,) bool mask of a live agent, or ``None`` if the env has no masks."""
        return self._masks.get(agent)

    def _remember_masks(self, infos: dict) -> None:
        self._masks = {
            a: np.asarray(info["action_mask"], dtype=bool)
            for a, info in infos.items()
            if isinstance(info, dict) and "action_mask" in info
        }

    # --- implemented by each adapter ---
    @abstractmethod
    def _reset(self, seed: int | None, options: dict | None) -> tuple[dict, dict]:
        """Reset the wrapped env; sets ``self.agents``; returns (obs, infos)."""

    @abstractmethod
    def _step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Step the wrapped env with valid actions; removes finished agents from ``self.agents``."""

    @abstractmethod
    def state(self) -> np.ndarray:
        """The global state, shape (S,) float32."""
