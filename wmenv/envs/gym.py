"""A single-agent Gymnasium env as a one-agent parallel env (agent id ``"agent_0"``).

``make("gym:CartPole-v1")``: observations flattened to 1-D float32, ``state()`` is the current
flattened observation, ``Discrete`` (shifted to start at 0) or ``Box`` (flattened) actions, and the
env's own termination / truncation passed through. ``spec.episode_limit`` is the registered
``max_episode_steps`` (Gymnasium's ``TimeLimit``), if any.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from wmenv.envs.base import MaskedAction, MultiAgentEnv
from wmenv.envs.pettingzoo import flat_action_space, flat_box, to_env_action
from wmenv.envs.spec import EnvSpec

AGENT = "agent_0"
_NOT_FOUND = (
    gym.error.NameNotFound,
    gym.error.VersionNotFound,
    gym.error.NamespaceNotFound,
    gym.error.DeprecatedEnv,
    gym.error.UnregisteredEnv,
)


class GymAdapter(MultiAgentEnv):
    """Wrap a ``gymnasium.Env`` as a one-agent `MultiAgentEnv`.

    Args:
        env: the env to wrap (owned: `close` closes it).
        id: the id recorded in the spec, e.g. ``"gym:CartPole-v1"``.
        masked_action: see `MultiAgentEnv`.
        action_masked: whether ``info["action_mask"]`` (e.g. Taxi-v3) is passed on as the agent's mask.
            With ``False`` (default) such a mask is dropped, so that spec and env agree.
        extra: more facts for ``spec.extra`` (e.g. an Atari frame's shape).
    """

    def __init__(
        self,
        env: gym.Env,
        id: str,
        masked_action: MaskedAction = "raise",
        action_masked: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(env, gym.Env):
            raise TypeError(f"env: expected a gymnasium.Env, got {type(env).__name__}")
        self.env = env
        obs_space = flat_box(env.observation_space, "observation_space")
        act_space = flat_action_space(env.action_space, "action_space")
        if action_masked and not isinstance(act_space, gym.spaces.Discrete):
            raise ValueError(f"action_masked: masks need a Discrete action space, got {env.action_space}")
        limit = env.spec.max_episode_steps if env.spec is not None else None
        spec = EnvSpec(
            id=id,
            agents=(AGENT,),
            observation_spaces={AGENT: obs_space},
            action_spaces={AGENT: act_space},
            state_space=obs_space,
            action_masked=bool(action_masked),
            episode_limit=limit,
            extra={"gym_id": env.spec.id if env.spec is not None else None, **(extra or {})},
        )
        super().__init__(spec, masked_action=masked_action)
        self.render_mode = env.render_mode
        self._obs = np.zeros(obs_space.shape, dtype=obs_space.dtype)

    def _info(self, info: dict, live: bool) -> dict:
        info = dict(info)
        mask = info.pop("action_mask", None)
        if self.env_spec.action_masked and live and mask is not None:
            info["action_mask"] = np.asarray(mask, dtype=bool).reshape(-1)
        return info

    def _flat(self, obs: Any) -> np.ndarray:
        self._obs = gym.spaces.flatten(self.env.observation_space, obs).astype(self.env_spec.obs_dtype)
        return self._obs.copy()

    def _reset(self, seed: int | None, options: dict | None) -> tuple[dict, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.agents = [AGENT]
        return {AGENT: self._flat(obs)}, {AGENT: self._info(info, True)}

    def _step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        obs, rew, term, trunc, info = self.env.step(to_env_action(self.env.action_space, actions[AGENT]))
        done = bool(term) or bool(trunc)
        self.agents = [] if done else [AGENT]
        return (
            {AGENT: self._flat(obs)},
            {AGENT: float(rew)},
            {AGENT: bool(term)},
            {AGENT: bool(trunc)},
            {AGENT: self._info(info, not done)},
        )

    def state(self) -> np.ndarray:
        """The current flattened observation (a single agent sees the whole state it is given)."""
        return self._obs.copy()

    def render(self) -> Any:
        """The wrapped env's ``render()``."""
        return self.env.render()

    def close(self) -> None:
        """Close the wrapped env."""
        self.env.close()


def make_gym(name: str, **kwargs: Any) -> GymAdapter:
    """``gymnasium.make(name, **kwargs)`` as a one-agent parallel env.

    Args:
        name: a registered Gymnasium id, e.g. ``"CartPole-v1"``.
        **kwargs: ``masked_action`` / ``action_masked`` go to `GymAdapter`; the rest to ``gymnasium.make``.

    Raises:
        ValueError: ``name`` is not registered.
    """
    own = {k: kwargs.pop(k) for k in ("masked_action", "action_masked") if k in kwargs}
    try:
        env = gym.make(name, **kwargs)
    except _NOT_FOUND as e:
        raise ValueError(f"name: {name!r} is not an available Gymnasium env: {e}") from e
    return GymAdapter(env, id=f"gym:{name}", **own)
