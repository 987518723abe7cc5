"""The single-agent Gymnasium view of a dream: `DreamGymEnv` (the stable-baselines3 view is `wmenv.dream.sb3`).

Glossary: A actions.

`DreamGymEnv` is a `gymnasium.Env` over one world of a one-agent model (e.g. fitted on ``"gym:CartPole-v1"``).
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from wmenv.dream.vec import DreamVecEnv
from wmenv.envs.spec import own_space
from wmenv.models.world_model import WorldModel


class DreamGymEnv(gym.Env):
    """One imagined world of a one-agent world model as a Gymnasium env.

    Args:
        model: a fitted `WorldModel` whose spec has one agent.
        start, obs, horizon, context, planner: as for `DreamVecEnv`.
        masked_action: "raise" refuses actions the model predicts unavailable; "noop" replaces them.
        out_of_bounds: continuous actions outside the bounds are "clip"ped (default) or "raise" (`DreamVecEnv`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: WorldModel,
        start: Any = None,
        obs: Literal["latent", "decoded"] = "latent",
        horizon: int = 15,
        context: int = 8,
        masked_action: Literal["raise", "noop"] = "noop",
        planner: Any = None,
        out_of_bounds: Literal["clip", "raise"] = "clip",
    ) -> None:
        if model.spec.n_agents != 1:
            raise ValueError(f"model: DreamGymEnv needs a one-agent model, {model.spec.id} has {model.spec.n_agents} agents")
        self.vec = DreamVecEnv(model, 1, horizon, start, context, obs, 0, planner=planner, out_of_bounds=out_of_bounds)
        self.masked_action = masked_action
        with torch.no_grad():
            width = self.vec._view(model.initial(1, generator=torch.Generator(device=self.vec.device).manual_seed(0)))[
                0
            ].shape[-1]
        self.observation_space = spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self.action_space = own_space(model.spec.action_spaces[model.spec.agents[0]])
        self._mask: np.ndarray | None = None

    def _out(self, obs: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, dict]:
        self._mask = mask[0, 0].cpu().numpy()
        info = {"action_mask": self._mask.astype(np.int8)} if self.vec.spec.discrete else {}
        return obs[0, 0].cpu().numpy().astype(np.float32), info

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an imagined episode (``seed`` re-seeds every draw)."""
        super().reset(seed=seed)
        if seed is not None:
            self.vec.seed(seed)
        s = self.vec.reset()
        return self._out(s.obs, s.action_mask)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One imagined step."""
        if self._mask is None:
            raise RuntimeError("step() before reset()")
        if not self.vec.spec.discrete:
            a = np.asarray(action)
            if a.shape != self.action_space.shape or not np.issubdtype(a.dtype, np.number):
                raise ValueError(f"action: expected a float array of shape {self.action_space.shape}, got {action!r}")
            return self._step(torch.as_tensor(a, dtype=torch.float32).view(1, 1, -1))
        if not self.action_space.contains(action if np.isscalar(action) else np.asarray(action).item()):
            raise ValueError(f"action: expected an integer in [0, {self.action_space.n}), got {action!r}")
        action = int(action)
        if not self._mask[action]:
            if self.masked_action == "raise":
                raise ValueError(
                    f"action: {action} is predicted unavailable; available: {np.flatnonzero(self._mask).tolist()}"
                )
            action = int(np.flatnonzero(self._mask)[0])
        return self._step(torch.tensor([[action]]))

    def _step(self, row: torch.Tensor) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step the dream with the checked (1, 1) or (1, 1, A) action row."""
        s = self.vec.step(row)
        done = bool(s.done[0])
        obs, info = self._out(s.final_obs if done else s.obs, s.action_mask)
        return obs, float(s.reward[0, 0]), bool(s.terminated[0, 0]), bool(s.truncated[0, 0]), info
