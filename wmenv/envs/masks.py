"""`MasksInObservations`: action masks where PettingZoo's own masked envs put them, in dict observations.

Glossary: A an agent's own actions.

Every wmenv env (real adapters and `wmenv.DreamEnv`) reports masks in ``infos[agent]["action_mask"]`` and, by
default, refuses a masked action (``masked_action="raise"``). Tools written for PettingZoo's classic envs look for
the mask in the observation instead: ``{"observation": obs, "action_mask": (A,) int8}`` — `pettingzoo.test`'s
``parallel_api_test`` samples with it, so a masked env such as ``flatland:5`` passes that test only when wrapped::

    env = MasksInObservations(make("flatland:5")[0])
    parallel_api_test(env)

The wrapper changes nothing else: actions, rewards, terminations, infos (the masks stay there too) and ``state()``
pass through, and an env without masks gets all-ones masks.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv


class MasksInObservations(ParallelEnv):
    """Wraps a `ParallelEnv` with discrete actions so each observation is ``{"observation", "action_mask"}``.

    Args:
        env: any PettingZoo parallel env whose infos carry ``action_mask`` where actions are masked.

    Raises:
        TypeError: ``env`` is not a `ParallelEnv`, or an agent's action space is not ``Discrete``.
    """

    def __init__(self, env: ParallelEnv) -> None:
        if not isinstance(env, ParallelEnv):
            raise TypeError(f"env: expected a PettingZoo ParallelEnv, got {type(env).__name__}")
        self.env = env
        self.possible_agents = list(env.possible_agents)
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)
        self._spaces: dict[str, gym.spaces.Dict] = {}
        for a in self.possible_agents:
            act = env.action_space(a)
            if not isinstance(act, gym.spaces.Discrete):
                raise TypeError(f"env: agent {a!r} has {type(act).__name__} actions; masks are for Discrete ones")
            mask = gym.spaces.Box(0, 1, (int(act.n),), np.int8)
            self._spaces[a] = gym.spaces.Dict({"observation": env.observation_space(a), "action_mask": mask})

    @property
    def agents(self) -> list[str]:
        """The live agents of the wrapped env."""
        return self.env.agents

    def observation_space(self, agent: str) -> gym.spaces.Dict:
        """``Dict(observation=<the env's space>, action_mask=Box(0, 1, (A,), int8))`` (cached)."""
        return self._spaces[agent]

    def action_space(self, agent: str) -> gym.Space:
        """The wrapped env's action space."""
        return self.env.action_space(agent)

    def _wrap(self, obs: dict[str, Any], infos: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for a, o in obs.items():
            n = self._spaces[a]["action_mask"].shape[0]
            info = infos.get(a) if isinstance(infos.get(a), dict) else {}
            mask = info.get("action_mask")
            mask = np.ones(n, np.int8) if mask is None else np.asarray(mask).astype(np.int8)[:n]
            out[a] = {"observation": o, "action_mask": mask}
        return out

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Reset the wrapped env; observations carry the masks."""
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._wrap(obs, infos), infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Step the wrapped env; observations carry the masks."""
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        return self._wrap(obs, infos), rewards, terms, truncs, infos

    def state(self) -> np.ndarray:
        """The wrapped env's global state."""
        return self.env.state()

    @property
    def state_space(self) -> gym.Space:
        """The wrapped env's state space."""
        return self.env.state_space

    def close(self) -> None:
        """Close the wrapped env."""
        self.env.close()
